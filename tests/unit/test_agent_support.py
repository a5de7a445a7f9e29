"""The pure parts of the real-agent harness: which tool the stand-in asks for (on what the agents
really sent), and how server requests are paired with LlmCalls."""

from __future__ import annotations

import json

import pytest

from tests.support.agent_fixtures import FIXTURES
from tests.support.agent_obs import compare, covering, shared_calls
from tests.support.agent_server import tool_call

SHELL = {"claude": ("Bash", "command"), "codex": ("exec_command", "cmd"),
         "gemini": ("run_shell_command", "command")}


@pytest.mark.parametrize("agent", sorted(SHELL))
def test_stand_in_asks_for_the_agents_own_shell_tool_once(agent: str) -> None:
    fx = json.loads((FIXTURES / f"{agent}.json").read_text())
    first, second = [e for e in fx["exchanges"] if e["model_call"]]
    name, key = SHELL[agent]
    call = tool_call(first["api"], first["body"], "echo hi")
    assert call is not None and call[0] == name and call[1][key] == "echo hi"
    assert tool_call(second["api"], second["body"], "echo hi") is None  # it holds the result


def test_array_command_schemas_get_an_argv() -> None:
    body = {"tools": [{"type": "function", "name": "shell", "parameters": {
        "properties": {"command": {"type": "array"}}}}], "input": []}
    assert tool_call("openai-responses", body, "ls") == ("shell", {"command": ["bash", "-lc", "ls"]})


def test_no_shell_tool_means_text() -> None:
    assert tool_call("anthropic", {"tools": [{"name": "Read"}], "messages": []}, "ls") is None


MS = 1_000_000


def call(start_ms: int, latency_ms: int, ttft_ms: int) -> dict:
    return {"_env": {"ts": start_ms * MS}, "latency": {"secs": 0, "nanos": latency_ms * MS},
            "ttft": {"secs": 0, "nanos": ttft_ms * MS}, "req_bytes": 100}


def req(t_req: int, t_first: int, t_last: int, model: bool = True) -> dict:
    r = {"t_req": t_req * MS, "t_first": t_first * MS, "t_last": t_last * MS, "method": "POST",
         "path": "/v1/x", "model_call": model, "req_body": 10}
    return r | ({"model": "m", "prompt_tokens": 1, "completion_tokens": 2,
                 "cache_read_tokens": None, "cache_creation_tokens": None} if model else {})


def test_concurrent_requests_get_their_own_calls() -> None:
    calls = [call(100, 50, 40), call(101, 20, 10)]  # two connections, overlapping
    rows = [req(102, 112, 121), req(105, 140, 150)]
    assert [covering(r, calls, 0) for r in rows] == [1, 0]
    assert not shared_calls(compare(rows, calls, 0))


def test_two_requests_in_one_call_are_seen_as_merged() -> None:
    calls = [call(100, 300, 5)]
    table = compare([req(101, 101, 102, model=False), req(150, 390, 400)], calls, 0)
    assert shared_calls(table) == {0}


def test_a_request_no_call_covers_has_none() -> None:
    assert covering(req(50, 60, 70), [call(100, 10, 5)], 0) is None


def test_a_server_that_reads_its_clock_late_after_its_last_write_is_still_covered() -> None:
    """The stand-in was preempted for 80 ms after its last write (the write woke the client):
    the call still covers the request, and its latency lies in the bracket of that write."""
    r = req(102, 112, 200) | {"t_first_done": 113 * MS, "t_last_start": 120 * MS}
    calls = [call(100, 21, 12)]  # ends at 121, while the last write ran
    assert covering(r, calls, 0) == 0
    [row] = compare([r], calls, 0)
    assert row["server_latency_min_ms"] <= row["obs_latency_ms"] <= row["server_latency_ms"]
    assert row["server_ttft_ms"] <= row["obs_ttft_ms"] <= row["server_ttft_max_ms"]
    assert covering(r | {"t_last_start": 150 * MS}, calls, 0) is None  # it ended too soon
