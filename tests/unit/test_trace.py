"""obs-merge --trace: the recorded agent run as a Chrome/Perfetto trace, checked against the
Trace Event Format's rules (JSON object form, required keys, ph values, ts/dur in µs, sorted,
complete slices that nest per track, named tracks) and for what a person must see in it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libobs.events import envelope
from libobs.export.trace import Timeline
from libobs.merge.sessions import Proc
from tests.support.tools import tool_cmd
from tests.unit.test_summary import RUN, merged

FIXTURES = Path(__file__).parents[1] / "fixtures"
SESSION = "4100@8123456"
START_NS = 1764100000100000000  # the run's first event
META = {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}


def check_trace_format(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The format's rules; returns the non-metadata events."""
    assert set(doc) >= {"traceEvents"} and doc.get("displayTimeUnit") in (None, "ms", "ns")
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    named_procs, named_threads, body = set(), set(), []
    for e in events:
        assert isinstance(e["name"], str) and e["name"], e
        assert e["ph"] in ("X", "i", "M"), e
        assert type(e["pid"]) is int and type(e["tid"]) is int, e
        if e["ph"] == "M":
            assert e["name"] in META and "args" in e, e
            if e["name"] == "process_name":
                named_procs.add(e["pid"])
            elif e["name"] == "thread_name":
                named_threads.add((e["pid"], e["tid"]))
            continue
        assert isinstance(e["ts"], int | float) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0, e
        else:
            assert e["s"] in ("g", "p", "t"), e
        assert isinstance(e.get("args", {}), dict)
        body.append(e)
    assert [e["ts"] for e in body] == sorted(e["ts"] for e in body), "ts not monotonic"
    for e in body:
        assert e["pid"] in named_procs and (e["pid"], e["tid"]) in named_threads, e
    # Complete slices on one track nest: each starts after the enclosing one and ends inside.
    stacks: dict[tuple[int, int], list[float]] = {}
    for e in (e for e in body if e["ph"] == "X"):
        ends = stacks.setdefault((e["pid"], e["tid"]), [])
        while ends and ends[-1] <= e["ts"]:
            ends.pop()
        end = e["ts"] + e["dur"]
        assert not ends or end <= ends[-1] + 1e-3, f"{e} overlaps its enclosing slice"
        ends.append(end)
    return body


def timeline(names: list[str]) -> Timeline:
    t = Timeline()
    for e, root in merged(names):
        t.add(e, root)
    return t


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(json.dumps(timeline(RUN).document()))  # plain JSON


def _names(doc: dict[str, Any], meta: str) -> dict[Any, str]:
    return {(e["pid"], e["tid"]) if meta == "thread_name" else e["pid"]: e["args"]["name"]
            for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == meta}


def test_the_run_follows_the_format(doc: dict[str, Any]) -> None:
    check_trace_format(doc)
    assert doc["otherData"]["start_ns"] == START_NS


def test_one_track_per_agent_session_and_per_process(doc: dict[str, Any]) -> None:
    procs = _names(doc, "process_name")
    assert sorted(procs.values()) == ["(not attributed)", f"agent python3 session {SESSION}"]
    agent = next(p for p, n in procs.items() if SESSION in n)
    threads = {n for (p, _), n in _names(doc, "thread_name").items() if p == agent}
    assert threads == {"python3 [4100]", "LLM calls [4100]", "git [4120]",
                       "git-remote-http [4121]", "python3 [4130]", "curl [4140]",
                       "curl [4150]", "rm [4160]"}


def test_llm_calls_and_tools_are_slices_in_microseconds(doc: dict[str, Any]) -> None:
    body = check_trace_format(doc)
    calls = [e for e in body if e["ph"] == "X" and e["name"].startswith("chat ")]
    assert len(calls) == 3
    first = calls[0]
    assert first["ts"] == (1764100000321000000 - START_NS) / 1000 and first["dur"] == 2_580_000
    assert first["args"]["tokens"] == {"prompt": 1834, "completion": 212, "cache_read": 0}
    assert first["args"]["cost_usd"] > 0
    ttft = [e for e in body if e["name"] == "TTFT"]
    assert [t["dur"] for t in ttft] == [610_000, 540_000, 720_000]
    assert all(t["tid"] == c["tid"] and t["ts"] == c["ts"] for t, c in zip(ttft, calls, strict=True))
    git = next(e for e in body if e["ph"] == "X" and e["name"] == "git")
    assert git["dur"] == 1_150_000 and git["args"]["argv"][:2] == ["git", "clone"]
    failed = [e for e in body if e["ph"] == "X" and e["name"] == "curl"]
    assert sorted(e["args"]["exit_code"] for e in failed) == [0, 7]


def test_writes_egress_and_denials_are_instants(doc: dict[str, Any]) -> None:
    body = check_trace_format(doc)
    instants = {e["name"] for e in body if e["ph"] == "i"}
    assert {"write README.md", "connect api.anthropic.com:443", "connect github.com:443",
            "DENIED egress 203.0.113.5:443", "delete req.html", "bind listen 127.0.0.1:8765 = 0"} <= instants


def test_overlapping_calls_get_lanes_so_slices_nest() -> None:
    t = Timeline()
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    for start in (0, 100, 200):  # three calls of 1 s each, 100 ms apart
        t.add(envelope("LlmCall", {"pid": 1, "latency": {"secs": 1, "nanos": 0},
                                   "ttft": {"secs": 0, "nanos": 50_000_000}},
                       ts=10**9 + start * 10**6, host="h"), root)
    doc = t.document()
    check_trace_format(doc)
    assert sorted(_names(doc, "thread_name").values()) == [
        "LLM calls [1]", "LLM calls [1] lane 2", "LLM calls [1] lane 3"]


def test_processes_without_exit_end_at_the_last_event_and_are_marked() -> None:
    t = Timeline()
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    t.add(envelope("ToolExec", {"pid": 2, "ppid": 1, "comm": "sleep", "argv": ["sleep"]},
                   ts=10**9, host="h"), root)
    t.add(envelope("FileDelete", {"pid": 2, "path": "/x"}, ts=3 * 10**9, host="h"), root)
    body = check_trace_format(t.document())
    (sleep,) = [e for e in body if e["ph"] == "X"]
    assert sleep["dur"] == 2_000_000 and sleep["args"]["no_exit_seen"] is True


def test_events_beyond_the_cap_are_counted() -> None:
    t = Timeline(max_events=6)  # 4 names (session, process) and 2 events
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    for i in range(5):
        t.add(envelope("FileDelete", {"pid": 1, "path": f"/{i}"}, ts=i, host="h"), root)
    doc = t.document()
    assert len(check_trace_format(doc)) == 2 and doc["otherData"]["dropped"] == {
        "trace_events": 3}


def test_obs_merge_writes_the_trace(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    p = subprocess.run(tool_cmd("obs-merge", "--trace", str(out), "--format", "json",
                                *[str(FIXTURES / f"{n}.ndjson") for n in RUN]),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 43  # the stream still flows
    doc = json.loads(out.read_bytes())
    assert len(check_trace_format(doc)) == len(check_trace_format(timeline(RUN).document()))
