"""JSON that is not a well-formed obs event is reported and skipped where it is decoded
(libobs.merge.shape): it never stops the stream and never costs a good line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from libobs.merge.input import decode

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
