"""JSON that is not a well-formed obs event is reported and skipped where it is decoded
(libobs.merge.shape): it never stops the stream and never costs a good line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libobs.merge.input import decode
from libobs.merge.run import Config, Control, run

FIXTURES = Path(__file__).parents[1] / "fixtures"
NAMES = ["agent_exec", "agent_net", "agent_llm", "agent_ssl", "agent_enforce"]
EVENTS = {n: [orjson.loads(x) for x in (FIXTURES / f"{n}.ndjson").read_bytes().splitlines()]
          for n in NAMES}
DNS = {"ts": 1, "host": "h", "identity": {"agent": None, "task": None, "session": None},
       "event": {"Dns": {"query": "a.com", "answers": ["1.2.3.4"]}}}


def with_value(ev: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(ev))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize(("path", "value"), [
    (("host",), [1]),  # the example: TypeError unhashable type, nothing written
    (("event", "Dns", "query"), {"a": 1}),
    (("event", "Dns", "answers"), [1, [2]]),
    (("process",), "x"),
    (("identity",), "x"),
    (("identity", "session"), ["1@2"]),
    (("provider",), 5),
    (("ts",), -1),
    (("ts",), 1 << 63),
    (("event",), {"Future": 5}),  # an unknown kind, but not an object
    (("event", "Dns", "pid"), 1.5),
    (("event", "Dns", "pid"), True),
    (("event", "Dns", "extra"), nested(300)),  # deeper than orjson writes back
])
def test_json_that_is_not_a_well_formed_event_is_refused_with_a_reason(path, value) -> None:
    ev, problem = decode(json.dumps(with_value(DNS, path, value)).encode())
    assert ev is None and problem is not None
    assert problem[0] in ("bad_shape", "not_event", "missing_ts"), problem


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("Egress", "sni", ["api.openai.com"]),
    ("Egress", "hostname", ["api.openai.com"]),
    ("ToolExec", "comm", ["git"]),
    ("ToolExec", "comm", 5),  # int/str mixes broke --summary's sorting
    ("LlmCall", "latency", {"secs": 1e308}),
    ("LlmCall", "latency", {"secs": 1e308, "nanos": 0}),
    ("LlmCall", "ttft", {"secs": -1, "nanos": 0}),
    ("LlmCall", "req_bytes", 18446744073709551616),  # beyond 64 bits: orjson gives a float
    ("ProcessExit", "exit_code", "0"),
])
def test_fields_the_merge_relies_on_are_checked(kind: str, field: str, value: Any) -> None:
    ev = {"ts": 1, "event": {kind: {"pid": 1, field: value}}}
    got, problem = decode(json.dumps(ev).encode())
    assert got is None and problem is not None and problem[0] == "bad_shape"
    assert f"{kind}.{field}" in problem[1]


def test_well_formed_events_pass_untouched() -> None:
    """Nulls (what a producer cannot know) and fields the contract does not name pass."""
    for events in EVENTS.values():
        for ev in events:
            assert decode(orjson.dumps(ev)) == (ev, None)
    ev = with_value(DNS, ("event", "Dns", "answers"), None) | {"process": None, "extra": [[{}]]}
    assert decode(orjson.dumps(ev)) == (ev, None)


def merged(tmp_path: Path, files: dict[str, bytes], fmt: str = "json",
           summary: bool = False) -> tuple[int, bytes, list[str]]:
    """The whole obs-merge run (reader, merge, sessions, summary, sink) on these files."""
    paths = []
    for name, data in files.items():
        paths.append(str(tmp_path / name))
        Path(paths[-1]).write_bytes(data)
    said: list[str] = []
    out = tmp_path / f"out.{fmt}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        cfg = Config(paths, fmt=fmt, summary=summary, no_proc=True)
        status = run(cfg, Control(), out_fd=fd, stdin_fd=None, say=said.append)
    finally:
        os.close(fd)
    return status, out.read_bytes(), said


def test_one_bad_line_in_1100_costs_only_itself(tmp_path: Path) -> None:
    """The issue's file: 1,100 lines, line 1001 JSON with a list for `host`: 1,099 out."""
    lines = [orjson.dumps(with_value(DNS, ("ts",), i + 1)) for i in range(1100)]
    lines[1000] = orjson.dumps(with_value(DNS, ("host",), [1]) | {"ts": 1001})
    status, out, said = merged(tmp_path, {"big.ndjson": b"\n".join(lines) + b"\n"})
    assert status == 0
    stamps = [orjson.loads(x)["ts"] for x in out.splitlines()]
    assert stamps == [i + 1 for i in range(1100) if i != 1000]
    assert said == [f"obs-merge: {tmp_path}/big.ndjson:1001: host is a list, not a string\n"]


# -- the property: any JSON value in any field of real events ----------------------------------

def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out += paths_of(child, (*prefix, key))
    return out


# Every place a value sits in the fixtures, grouped by (event kind, path): each field of each
# kind is as likely to be picked as any other, however many events have it.
SPOTS: dict[tuple[str, tuple[Any, ...]], list[tuple[str, int, tuple[Any, ...]]]] = {}
for _name, _events in EVENTS.items():
    for _i, _ev in enumerate(_events):
        for _path in paths_of(_ev):
            SPOTS.setdefault((next(iter(_ev["event"])), _path), []).append((_name, _i, _path))
SPOT = st.sampled_from(sorted(SPOTS, key=repr)).flatmap(lambda k: st.sampled_from(SPOTS[k]))
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 2, 2**64 + 2)
           | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "1" * 5000 + "@1", "4100@8123456", "api.openai.com",
                              "\x1b[2J", "1.2.3.4", "devbox"]))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.sampled_from(["secs", "nanos", "pid", "x", ""]) | st.text(
                        max_size=5), c, max_size=3), max_leaves=8) | st.integers(60, 300).map(nested)


def same_event(ev: dict[str, Any], where: tuple[str, int]) -> Any:
    """What makes two lines one event to obs-merge's Dedup (all but identity, canonically); a
    line orjson cannot write canonically (a huge int) is never a duplicate."""
    try:
        return orjson.dumps({k: v for k, v in ev.items() if k != "identity"},
                            option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return where


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(SPOT, JSON), min_size=1, max_size=12))
def test_any_json_in_any_field_never_breaks_the_merge(tmp_path: Path, changes) -> None:
    events = {name: [dict(ev) for ev in evs] for name, evs in EVENTS.items()}
    touched: dict[tuple[str, int], bool] = {}
    for (name, i, path), value in changes:
        try:
            events[name][i] = with_value(events[name][i], path, value)
        except (KeyError, IndexError, TypeError):  # an earlier change removed the spot
            continue
        touched[(name, i)] = True
    files = {f"{n}.ndjson": b"".join(json.dumps(e).encode() + b"\n" for e in evs)
             for n, evs in events.items()}
    accepted = {(n, i): decode(json.dumps(e).encode())[0] is not None
                for n, evs in events.items() for i, e in enumerate(evs)}
    for fmt in ("json", "human"):
        status, out, said = merged(tmp_path, files, fmt=fmt, summary=True)
        assert status == 0, said
        refused = [(n, i) for (n, i), ok in accepted.items() if not ok]
        for n, i in refused:  # each refused line is reported with its source and line
            assert any(f"{n}.ndjson:{i + 1}: " in s for s in said), (n, i, said)
        assert all(key in touched for key in refused)  # only what we broke is refused
        if fmt == "json":
            lines = out.splitlines()
            stream, summary = lines[:-1], orjson.loads(lines[-1])
            assert set(summary) == {"summary"}
            stamps = sorted(orjson.loads(x)["ts"] for x in stream)
            # every good line out, once; two lines a change made identical (but for identity)
            # are one event to obs-merge, a duplicate it drops by design
            good = {same_event(e, (n, i)): e["ts"]
                    for n, evs in events.items() for i, e in enumerate(evs) if accepted[(n, i)]}
            want = sorted(good.values())
            assert stamps == want
        else:
            assert b"obs-merge summary:" in out
            assert out.count(b"\n") > sum(accepted.values())
