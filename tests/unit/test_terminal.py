"""Terminal-safe text: nothing a watched process writes can act on the operator's terminal in
human output or diagnostics, while NDJSON stays exact."""

from __future__ import annotations

import unicodedata

import orjson
from hypothesis import given
from hypothesis import strategies as st

from libobs.events import envelope
from libobs.terminal import quote, safe
from libobs.tool.sink import dumps, human

ATTACK = "esc\x1b[1A\x1b[2Kfake"


def active(ch: str) -> bool:
    """A code point a terminal may act on instead of showing."""
    cp = ord(ch)
    return (cp < 0x20 or 0x7F <= cp < 0xA0 or unicodedata.bidirectional(ch) in
            ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
            or cp in (0x200E, 0x200F, 0x061C, 0x2028, 0x2029))


def test_escapes_are_visible():
    assert safe(ATTACK) == "esc\\x1b[1A\\x1b[2Kfake"
    assert safe("a\nb\tc\rd\x7f\x9b\u202eexe.txt") == "a\\nb\\tc\\rd\\x7f\\x9b\\u202eexe.txt"
    assert safe("plain /päth ✓ 日本") == "plain /päth ✓ 日本"


@given(st.text())
def test_safe_leaves_nothing_active_and_is_idempotent(text):
    out = safe(text)
    assert not any(active(ch) for ch in out)
    assert safe(out) == out
    assert out == text or any(active(ch) for ch in text)


def test_quote_caps():
    assert quote("x" * 10, limit=4) == "xxxx...(6 more)"
    assert quote("\x1b", limit=4) == "\\x1b"


def every_string_field(value: str) -> dict:
    fields = {"filename": value, "argv": [value, "-c"], "cwd": value, "sni": value,
              "query": value, "answers": [value], "model": value, "path": value,
              "nested": {value: value}, "comm": value}
    ev = envelope("ToolExec", fields, ts=1, host=value, provider=value,
                  identity={"agent": value, "task": "1", "session": value},
                  process={"pid": 1, "comm": value})
    return ev


@given(st.text())
def test_human_lines_are_safe_whatever_the_strings(value):
    line = human(every_string_field(value)).decode()
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert not any(active(ch) for ch in line[:-1])


def test_human_escapes_a_file_name_and_json_stays_exact():
    ev = envelope("FileAccess", {"pid": 7, "comm": "touch", "path": f"/tmp/{ATTACK}"},
                  ts=1, host="h")
    assert "path=/tmp/esc\\x1b[1A\\x1b[2Kfake" in human(ev).decode()
    assert orjson.loads(dumps(ev))["event"]["FileAccess"]["path"] == f"/tmp/{ATTACK}"


@given(st.text())
def test_json_output_round_trips_exactly(value):
    ev = every_string_field(value)
    try:
        value.encode()
    except UnicodeEncodeError:
        return  # lone surrogates cannot be JSON; sink sanitises them (test_sink)
    assert orjson.loads(dumps(ev)) == ev
