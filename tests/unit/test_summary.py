"""The per-session summary (libobs.merge.summary) over the recorded agent run in tests/fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from libobs.events import envelope
from libobs.merge.input import decode
from libobs.merge.merger import Merge
from libobs.merge.sessions import Proc, Sessions
from libobs.merge.summary import Capped, Samples, Summary, align

FIXTURES = Path(__file__).parents[1] / "fixtures"
RUN = ["agent_exec", "agent_net", "agent_llm", "agent_ssl", "agent_enforce"]
SESSION = "4100@8123456"


def merged(names: list[str]) -> Iterator[tuple[dict[str, Any], Proc | None]]:
    """The fixtures `names` through obs-merge's Merge, as (event, agent root) pairs."""
    m = Merge(Sessions(), range(len(names)))
    for sid, name in enumerate(names):
        for line in (FIXTURES / f"{name}.ndjson").read_bytes().splitlines():
            ev, problem = decode(line)
            assert problem is None and ev is not None
            yield from m.push(ev, sid, 0)
        m.close(sid)
    yield from m.drain()


def replay(names: list[str]) -> Summary:
    summary = Summary()
    for e, root in merged(names):
        summary.add(e, root)
    return summary


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    out = replay(RUN).to_json({"events_in": 43})
    assert set(out) == {"summary"}
    return orjson.loads(orjson.dumps(out))["summary"]  # it must be plain JSON


def test_one_agent_session(report: dict[str, Any]) -> None:
    (s,) = report["sessions"]
    assert (s["session"], s["agent"], s["pid"], s["evidence"]) == (
        SESSION, "python3", 4100, "Egress")
    assert report["unattributed"] == {"ProcessExit": 1, "ToolExec": 1}  # logrotate
    assert report["stream"] == {"events_in": 43}


def test_tools_with_exit_codes(report: dict[str, Any]) -> None:
    tools = {t["comm"]: (t["runs"], t["exit_codes"]) for t in report["sessions"][0]["tools"]}
    assert tools == {"curl": (2, {"0": 1, "7": 1}), "git": (1, {"0": 1}),
                     "git-remote-http": (1, {"0": 1}), "python3": (1, {"1": 1}),
                     "rm": (1, {"0": 1})}  # the agent itself (python3, pid 4100) is no tool


def test_llm_calls_tokens_bytes_and_latency(report: dict[str, Any]) -> None:
    s = report["sessions"][0]
    (row,) = s["llm"]
    assert (row["provider"], row["model"], row["calls"], row["api_responses"]) == (
        "Anthropic", "claude-sonnet-4-5-20250929", 3, 3)
    # Each request once, though both the joined LlmCall and its LlmApi response carry tokens.
    assert row["tokens"] == {"cache_read": 4096, "completion": 695, "prompt": 7721}
    assert s["tokens"] == row["tokens"]
    assert (row["req_bytes"], row["resp_bytes"]) == (28420, 14333)
    assert s["bytes"] == {"req": 28420, "resp": 14333}
    assert row["latency_ms"] == {"p50": 2760.0, "p95": 2900.0, "max": 2900.0}
    assert row["ttft_ms"] == {"p50": 610.0, "p95": 720.0, "max": 720.0}


def test_endpoints_files_security_and_denials(report: dict[str, Any]) -> None:
    s = report["sessions"][0]
    assert [i["endpoint"] for i in s["endpoints"]["items"]] == [
        "api.anthropic.com:443", "github.com:443", "pypi.org:443"]
    assert {i["path"] for i in s["files_written"]["items"]} == {
        "/home/dev/proj/.agent/log.txt", "/home/dev/proj/widgets/README.md",
        "/home/dev/proj/widgets/src/widgets/core.py", "/tmp/req.html",
        "/home/dev/proj/widgets/.pytest_cache/v/cache/lastfailed"}
    assert s["files_deleted"]["items"] == [{"path": "/tmp/req.html", "count": 1}]
    assert s["security_actions"]["items"] == [
        {"kind": "bind", "detail": "listen 127.0.0.1:8765 = 0", "count": 1}]
    assert s["denials"]["items"] == [{"action": "egress", "target": "203.0.113.5:443",
                                      "rule": "203.0.113.5", "count": 1}]


def test_table_is_aligned_and_complete() -> None:
    text = replay(RUN).table({"events_in": 43, "duplicates": 0})
    lines = text.splitlines()
    assert lines[0] == "obs-merge summary: 1 agent session, events in 43"
    assert any(line.startswith(f"session {SESSION}  agent python3  pid 4100") for line in lines)
    header = next(line for line in lines if "PROVIDER" in line)
    row = next(line for line in lines if line.lstrip().startswith("Anthropic"))
    for column, value in (("CALLS", "3"), ("PROMPT TOK", "7721"), ("COMPL TOK", "695"),
                          ("LATENCY ms p50/p95/max", "2760/2900/2900")):
        assert row[header.index(column):].startswith(value), column
    tool_header = next(line for line in lines if "EXIT CODES" in line)
    curl = next(line for line in lines if line.lstrip().startswith("curl "))
    assert curl[tool_header.index("EXIT CODES"):] == "0x1 7x1"
    assert "egress 203.0.113.5:443 (rule 203.0.113.5)" in text
    assert "not attributed to an agent: ProcessExit 1, ToolExec 1" in text


def test_llmapi_alone_counts_its_responses_as_calls() -> None:
    s = replay(["agent_exec", "agent_ssl"]).to_json()["summary"]["sessions"][0]
    (row,) = s["llm"]
    assert (row["calls"], row["api_responses"], row["latency_ms"]["max"]) == (3, 3, None)


def test_percentiles_are_nearest_rank_and_max_exact() -> None:
    s = Samples()
    for v in range(100, 0, -1):
        s.add(v)
    assert (s.percentile(50), s.percentile(95), s.max) == (50, 95, 100)
    small = Samples(cap=10)
    for v in range(10_000):
        small.add(v)
    assert len(small.values) == 10 and small.max == 9999 and small.n == 10_000
    assert Samples().to_json() == {"p50": None, "p95": None, "max": None}


def test_lists_and_sessions_are_capped() -> None:
    c = Capped(cap=3)
    for key in "abcdea":
        c.add(key)
    assert dict(c.counts) == {"a": 2, "b": 1, "c": 1} and c.more == 2
    summary = Summary(max_sessions=2)
    for pid in (1, 2, 3):
        root = Proc(pid, 0, agent="LlmCall", session=f"{pid}@0")
        summary.add(envelope("FileDelete", {"pid": pid, "path": "/x"}, ts=pid, host="h"), root)
    assert list(summary.sessions) == ["2@0", "3@0"] and summary.dropped_sessions == 1


def test_align_pads_every_column() -> None:
    assert align([["a", "bbb", "c"], ["dddd", "e", "f"]]) == ["a     bbb  c", "dddd  e    f"]


def test_malformed_fields_do_not_break_the_summary() -> None:
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    s = Summary()
    s.add(envelope("LlmCall", {"pid": 1, "latency": "x", "ttft": None, "req_bytes": -5,
                               "resp_bytes": "9"}, ts=1, host="h"), root)
    s.add(envelope("ProcessExit", {"pid": 2, "comm": "sh", "signal": 9, "core_dumped": True},
                   ts=2, host="h"), root)
    out = s.to_json()["summary"]["sessions"][0]
    assert out["llm"][0]["calls"] == 1 and out["bytes"] == {"req": 0, "resp": 0}
    assert out["tools"] == [{"comm": "sh", "runs": 0, "exit_codes": {"sig9+core": 1}}]
    assert s.table()


# -- tokens counted once, and priced -------------------------------------------------------
MODEL = "claude-sonnet-4-5-20250929"


def _call(ts: int, pid: int = 1, **tokens: Any) -> dict[str, Any]:
    fields = {"pid": pid, "sni": "api.anthropic.com", "peer": "160.79.104.10", "port": 443,
              "req_bytes": 100, "resp_bytes": 200, "latency": {"secs": 1, "nanos": 0},
              "ttft": {"secs": 0, "nanos": 300_000_000}, **tokens}
    return envelope("LlmCall", fields, ts=ts, host="h", provider="Anthropic")


def _api(ts: int, pid: int = 1, **tokens: Any) -> dict[str, Any]:
    fields = {"pid": pid, "is_request": False, "stream": False, "path": "/v1/messages", **tokens}
    return envelope("LlmApi", fields, ts=ts, host="h", provider="Anthropic")


def _merged(events: list[tuple[int, dict[str, Any]]], release_each: bool = True
            ) -> dict[str, Any]:
    """Push (source, event) pairs in this arrival order through a merge with a 0 s window,
    releasing after each (or only at the end)."""
    m = Merge(Sessions(), range(2), window_ns=0)
    summary = Summary()
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    for sid, ev in events:
        for e, _ in m.push(ev, sid, 0) + (m.release(0) if release_each else []):
            summary.add(e, root)
    for e, _ in m.drain():
        summary.add(e, root)
    return summary.to_json()["summary"]


def test_tokens_on_the_llmcall_itself_are_counted() -> None:
    """obs-llm --api puts tokens on each LlmCall; there is no LlmApi event at all."""
    out = _merged([(0, _call(10**9, model=MODEL, prompt_tokens=23, completion_tokens=17,
                             cache_read_tokens=None, cache_creation_tokens=None))])
    (s,) = out["sessions"]
    assert s["tokens"] == {"completion": 17, "prompt": 23}
    assert s["llm"][0]["calls"] == 1


def test_requests_that_are_no_model_calls_are_listed_apart() -> None:
    """obs-llm --api marks an agent's settings GETs model_call: false: they are no LLM calls in
    the session's llm rows, calls or bytes, but listed under other_requests."""
    out = _merged([(0, _call(10**9, model=MODEL, prompt_tokens=23, completion_tokens=17,
                             model_call=True, request="POST /v1/messages")),
                   (0, _call(2 * 10**9, model=None, model_call=False,
                             request="GET /api/claude_code/settings")),
                   (0, _call(3 * 10**9, model=None, model_call=False,
                             request="GET /api/claude_code/settings"))])
    (s,) = out["sessions"]
    assert [r["calls"] for r in s["llm"]] == [1]
    assert s["other_requests"]["items"] == [{"request": "GET /api/claude_code/settings",
                                              "count": 2}]


@pytest.mark.parametrize("late_call", [False, True])
def test_a_request_seen_as_llmcall_and_llmapi_counts_once(late_call: bool) -> None:
    """obs-llm --api and obs-ssl both ran: the call carries tokens, its response too. Also when
    the call arrives after its response already left the merge (a call longer than the window)."""
    tokens = {"model": MODEL, "prompt_tokens": 23, "completion_tokens": 17,
              "cache_read_tokens": 5, "cache_creation_tokens": None}
    call, api = _call(10**9, **tokens), _api(10**9 + 900_000_000, **tokens)
    order = [(1, api), (0, call)] if late_call else [(0, call), (1, api)]
    (s,) = _merged(order, release_each=late_call)["sessions"]
    assert s["tokens"] == {"cache_read": 5, "completion": 17, "prompt": 23}
    assert s["cost"]["priced_requests"] == 1 and s["cost"]["unpriced_requests"] == 0


def test_cost_per_session_and_model_from_the_catalogue(report: dict[str, Any]) -> None:
    import genai_prices
    from genai_prices import Usage

    assert report["price_catalogue"] == f"genai-prices {genai_prices.__version__}"
    # The three responses of the fixture; Anthropic's input excludes cache reads.
    expected = sum(float(genai_prices.calc_price(
        Usage(input_tokens=p + r, output_tokens=c, cache_read_tokens=r), MODEL,
        provider_id="anthropic").total_price) for p, c, r in
        [(1834, 212, 0), (2510, 388, 1792), (3377, 95, 2304)])
    (s,) = report["sessions"]
    assert s["cost"]["usd"] == pytest.approx(expected) and s["cost"]["priced_requests"] == 3
    (model,) = report["models"]
    assert (model["model"], model["calls"]) == (MODEL, 3)
    assert model["cost"] == s["cost"]


def test_cache_reads_are_cheaper_than_input() -> None:
    plain = _merged([(0, _call(10**9, model=MODEL, prompt_tokens=10_000, completion_tokens=0))])
    cached = _merged([(0, _call(10**9, model=MODEL, prompt_tokens=0, completion_tokens=0,
                                cache_read_tokens=10_000))])
    written = _merged([(0, _call(10**9, model=MODEL, prompt_tokens=0, completion_tokens=0,
                                 cache_creation_tokens=10_000))])
    usd = [o["sessions"][0]["cost"]["usd"] for o in (plain, cached, written)]
    assert usd[1] == pytest.approx(usd[0] * 0.1) and usd[2] == pytest.approx(usd[0] * 1.25)


def test_unknown_model_is_unpriced_not_free() -> None:
    out = _merged([(0, _call(10**9, model="no-such-model-7", prompt_tokens=5,
                             completion_tokens=5)),
                   (0, _call(3 * 10**9))])  # no tokens at all: nothing to price
    (s,) = out["sessions"]
    assert s["cost"] == {"usd": None, "priced_requests": 0, "unpriced_requests": 1}
    text = Summary().table()
    assert "COST" not in text


def test_folded_file_writes_count_every_open() -> None:
    """obs-exec folds a thread's repeated opens of one file into one FileAccess with a count:
    the summary counts the opens, not the events (a missing or bad count is one open)."""
    root = Proc(1, 0, agent="LlmCall", session="1@0")
    s = Summary()
    for count in (5, 2, None, "x"):
        fields = {"pid": 1, "path": "/w", "write": True, "flags": 577}
        if count is not None:
            fields["count"] = count
        s.add(envelope("FileAccess", fields, ts=1, host="h"), root)
    items = s.to_json()["summary"]["sessions"][0]["files_written"]["items"]
    assert items == [{"path": "/w", "count": 9}]
