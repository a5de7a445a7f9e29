"""The transcript parsers (libobs.net.transcript) on real captures and on anything at all.

Fixtures (tests/fixtures/transcripts/): a Codex 0.171.0 rollout and a Claude Code 2.1.332
project transcript, written by the real agents against tests/support/agent_server.py (Codex's
session_meta cut to a few keys, Claude's lines over 4 KB left out); the stand-in served
`served(api, stream, n)` to the n-th model call."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from libobs.net.transcript import (
    CLAUDE,
    CODEX,
    Bad,
    ClaudeState,
    CodexState,
    Usage,
    claude_line,
    codex_line,
    new_state,
    parse_line,
    wall_ns,
)
from tests.support.agent_server import served

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "transcripts"
CODEX_ROLLOUT = FIXTURES / "codex-0.171.0-rollout.jsonl"
CLAUDE_PROJECT = FIXTURES / "claude-2.1.332-project.jsonl"
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")


def usages(kind: str, lines: list[bytes]) -> list[Usage]:
    state = new_state(kind)
    got = [parse_line(kind, line, state) for line in lines]
    assert not [g for g in got if isinstance(g, Bad)]
    return [g for g in got if isinstance(g, Usage)]


def expected(api: str, n: int) -> dict[str, int | None]:
    return {k: served(api, True, n)[k] for k in TOKENS}


def test_codex_rollout_gives_each_model_call_once_with_the_configured_model() -> None:
    got = usages(CODEX, CODEX_ROLLOUT.read_bytes().splitlines())
    assert [{k: u.fields[k] for k in TOKENS} for u in got] == \
        [expected("openai-responses", 0), expected("openai-responses", 1)]
    assert {u.fields["model"] for u in got} == {"gpt-5-codex"}  # config.toml's, not served
    assert got[0].ts == wall_ns("2026-12-02T06:34:41.535Z")  # the token_usage_record's stamp


def test_codex_without_token_usage_records_reads_token_count() -> None:
    """Releases before token_usage_record: each response's token_count, once."""
    lines = [ln for ln in CODEX_ROLLOUT.read_bytes().splitlines()
             if b'"type":"token_usage_record"' not in ln]
    got = usages(CODEX, lines)
    assert [{k: u.fields[k] for k in TOKENS} for u in got] == \
        [expected("openai-responses", 0), expected("openai-responses", 1)]
    assert got[0].ts == wall_ns("2026-12-02T06:34:41.677Z")


def token_count(total: int, last: int, write: int = 0, info: bool = True) -> bytes:
    usage = {"input_tokens": last, "cached_input_tokens": 1, "cache_write_input_tokens": write,
             "output_tokens": 2}
    return orjson.dumps({"timestamp": "2026-12-02T06:34:41.677Z", "type": "event_msg",
                         "payload": {"type": "token_count", "info": {
                             "total_token_usage": dict(usage, input_tokens=total),
                             "last_token_usage": usage} if info else None}})


def test_codex_token_count_repeats_and_rate_limit_news_are_not_calls() -> None:
    state = CodexState(model="m")
    assert isinstance(codex_line(token_count(10, 10), state), Usage)
    assert codex_line(token_count(10, 10), state) is None        # same running total
    assert codex_line(token_count(10, 10, info=False), state) is None
    u = codex_line(token_count(25, 15, write=7), state)
    assert isinstance(u, Usage)
    assert u.fields == {"model": "m", "prompt_tokens": 15, "completion_tokens": 2,
                        "cache_read_tokens": 1, "cache_creation_tokens": 7}


def test_codex_zero_cache_writes_are_unknown_not_zero() -> None:
    u = codex_line(token_count(10, 10, write=0), CodexState())
    assert isinstance(u, Usage) and u.fields["cache_creation_tokens"] is None
    assert u.fields["model"] is None  # no turn_context seen: the model is not invented


def test_codex_usage_lines_it_cannot_read_are_bad() -> None:
    assert isinstance(codex_line(b'{"type":"token_usage_record", "payload": {"usage": 1}}',
                                 CodexState()), Bad)
    assert isinstance(codex_line(b'{"type": "token_count" garbage', CodexState()), Bad)
    assert codex_line(b'{"type":"response_item","payload":{"text":"token_count"}}',
                      CodexState()) is None  # a message quoting the word


def test_claude_project_gives_each_message_once() -> None:
    lines = CLAUDE_PROJECT.read_bytes().splitlines()
    got = usages(CLAUDE, lines)
    assert [{k: u.fields[k] for k in TOKENS} for u in got] == \
        [expected("anthropic", 0), expected("anthropic", 1)]
    assert {u.fields["model"] for u in got} == {served("anthropic", True, 0)["model"]}
    # a message's second content block repeats its id, request id and usage: not a new call
    first = next(ln for ln in lines if b'"type":"assistant"' in ln)
    block = orjson.loads(first)
    block["requestId"] = "req_1"
    state = ClaudeState()
    assert isinstance(claude_line(orjson.dumps(block), state), Usage)
    assert claude_line(orjson.dumps(block), state) is None


def test_claude_synthetic_messages_are_not_model_calls() -> None:
    line = {"type": "assistant", "timestamp": "2026-12-02T06:40:28.306Z",
            "message": {"id": "x", "model": "<synthetic>", "usage": {"input_tokens": 0}}}
    assert claude_line(orjson.dumps(line), ClaudeState()) is None


def test_wall_ns() -> None:
    assert wall_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert wall_ns("1970-01-01T01:00:01+01:00") == 1_000_000_000
    for bad in ("1970-01-01T00:00:01", "yesterday", "", None, 5, "9" * 100):
        assert wall_ns(bad) is None


KEYS = st.sampled_from(["type", "payload", "timestamp", "info", "usage", "model", "message",
                        "id", "input_tokens", "last_token_usage", "total_token_usage",
                        "requestId", "output_tokens"])
VALUES = st.sampled_from(["turn_context", "token_usage_record", "event_msg", "token_count",
                          "assistant", "2026-12-02T06:34:41.535Z", "<synthetic>"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text() | VALUES,
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(KEYS | st.text(max_size=5), kids, max_size=6),
                    max_leaves=25)


def _total(line: bytes) -> None:
    for kind in (CODEX, CLAUDE):
        state = new_state(kind)
        for _ in range(2):  # twice: the state a first line leaves must not break a second
            got = parse_line(kind, line, state)
            assert got is None or isinstance(got, (Usage, Bad))
            if isinstance(got, Usage):
                assert isinstance(got.ts, int)
                assert all(v is None or (isinstance(v, int) and v >= 0)
                           for k, v in got.fields.items() if k != "model")


@given(st.binary(max_size=300))
def test_any_bytes_give_a_result(data: bytes) -> None:
    _total(data)
    _total(b'{"type":"token_count",' + data)


@given(JSON)
def test_any_json_gives_a_result(obj: object) -> None:
    _total(json.dumps(obj).encode())  # json: orjson refuses ints beyond 64 bits
