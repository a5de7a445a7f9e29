"""The real agents under obs: Claude Code (`claude -p`), Codex CLI (`codex exec`) and Gemini
CLI (`gemini -p`), pinned and installed by deploy/agents.sh, each run in a loopback-only
network namespace against a TLS stand-in of its provider (tests/support/agent_server.py)
that waits 250 ms before each answer, asks for one shell command, and logs every request
with its own clock. obs-llm --api, obs-exec and obs-ssl --api-only watch each run.

What works today is asserted; what does not is xfail(strict=True) with its cause, so a fix
shows up as an XPASS to turn into a plain assertion (issue 13)."""

from __future__ import annotations

import subprocess
from typing import Any

import orjson
import pytest

from tests.support import agent_obs
from tests.support.agent_obs import TOKENS, Observed, compare, observe
from tests.support.agents import AGENTS, installed
from tests.support.tools import tool_cmd

pytestmark = [pytest.mark.kernel, pytest.mark.agents]
TOLERANCE_MS = 10.0

NO_PLAINTEXT = {
    "claude": "Claude Code is a Bun executable with BoringSSL linked statically and not "
              "exported: obs-ssl's OpenSSL uprobes find no SSL_read/SSL_write in it",
    "codex": "Codex is a static musl Rust binary whose HTTPS goes through rustls: no "
             "SSL_read/SSL_write to probe",
}
NAGLE = ("a server with Nagle on holds its TLS 1.3 session tickets for the client's delayed "
         "ACK (~40 ms); obs-llm takes them for the first response byte of the connection's "
         "first call")


def xfail_for(agent: str, reasons: dict[str, str]) -> Any:
    return pytest.param(agent, marks=pytest.mark.xfail(strict=True, reason=reasons[agent])
                        if agent in reasons else ())


_runs: dict[tuple[str, bool], Observed] = {}


def observed(agent: str, nagle: bool = False) -> Observed:
    """One observed run per agent (and server kind) for the whole module."""
    if (agent, nagle) not in _runs:
        version_exe = installed().get(agent)
        if version_exe is None:
            pytest.fail(f"{agent} is not installed (deploy/setup-host.sh --agents)")
        _runs[(agent, nagle)] = observe(agent, version_exe[1], nagle=nagle)
    return _runs[(agent, nagle)]


def ttft_right(r: dict[str, Any]) -> bool:
    """obs's TTFT within TOLERANCE_MS (the issue's 10 ms) of the server's bracket (agent_obs):
    on a loaded machine the client's last send returns, and the server reads, late by a few ms;
    the 1 ms accuracy seen on a quiet one is the bench's to measure."""
    return (r["server_ttft_ms"] - TOLERANCE_MS <= r["obs_ttft_ms"]
            <= r["server_ttft_max_ms"] + TOLERANCE_MS)


def latency_right(r: dict[str, Any]) -> bool:
    """obs's latency within TOLERANCE_MS of the server's bracket: the last byte arrived while
    the server's last write ran, however late a loaded server read its clock after it."""
    return (r["server_latency_min_ms"] - TOLERANCE_MS <= r["obs_latency_ms"]
            <= r["server_latency_ms"] + TOLERANCE_MS)


def model_rows(o: Observed) -> list[dict[str, Any]]:
    return [r for r in compare(o.run.log, o.calls, o.offset_ns) if r["model_call"]]


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_runs_the_tool_the_stand_in_asks_for(agent: str) -> None:
    o = observed(agent)
    assert o.run.status == 0, o.run.stderr[-2000:]
    models = o.run.model_calls()
    assert len(models) == 2 and models[0]["tool_call"] and not models[1]["tool_call"]
    tools = [e for e in o.execs if any("obs-agent-tool" in a for a in e["argv"])]
    assert tools, "obs-exec did not see the agent's tool process in its process tree"


@pytest.mark.parametrize("agent", AGENTS)
def test_one_llmcall_per_request_with_true_ttft_and_latency(agent: str) -> None:
    o = observed(agent)
    rows = compare(o.run.log, o.calls, o.offset_ns)
    assert len(o.calls) == len(o.run.log), "LlmCalls vs requests the server answered"
    assert all(r["call"] is not None for r in rows)
    assert not agent_obs.shared_calls(rows), "two requests merged into one LlmCall"
    for r in model_rows(o):
        assert ttft_right(r), r
        assert latency_right(r), r


@pytest.mark.parametrize("agent", [xfail_for(a, NO_PLAINTEXT) for a in AGENTS])
def test_model_and_exact_tokens_on_every_call(agent: str) -> None:
    rows = model_rows(observed(agent))
    assert rows
    for r in rows:
        assert r["obs_model"] == r["model"]
        assert {k: r[f"obs_{k}"] for k in TOKENS} == {k: r[k] for k in TOKENS}


@pytest.mark.parametrize("agent", [xfail_for(a, {"codex": (
    NO_PLAINTEXT["codex"] + "; and obs-llm --api does not name it: the static binary is not "
    "among the files its scans look at while Codex runs (Claude Code's BoringSSL is named)")})
    for a in AGENTS])
def test_tls_stack_of_the_agent_is_named_on_stderr(agent: str) -> None:
    """Either obs attached to the agent's TLS library, or it says which binary it cannot read."""
    o = observed(agent)
    binaries = {"claude": "claude", "codex": "codex", "gemini": "/usr/bin/node"}
    assert binaries[agent] in o.stderr["obs-llm"], o.stderr["obs-llm"]


@pytest.mark.parametrize("agent", [xfail_for(a, {"claude": (
    "the GETs for /api/claude_code/settings and /policy_limits are reported as LlmCalls like "
    "the model calls, with nothing to tell them apart")}) for a in AGENTS])
def test_requests_that_are_not_model_calls_are_kept_apart(agent: str) -> None:
    o = observed(agent)
    others = [r for r in compare(o.run.log, o.calls, o.offset_ns) if not r["model_call"]]
    assert not [r for r in others if r["call"] is not None]


@pytest.mark.parametrize("agent", AGENTS)
def test_tool_process_is_in_the_agent_session_after_obs_merge(agent: str) -> None:
    o = observed(agent)
    out = subprocess.run(tool_cmd("obs-merge", "--format", "json", "--window", "1",
                                  *map(str, o.outputs.values())),
                         capture_output=True, timeout=120, check=True).stdout
    events = [orjson.loads(ln) for ln in out.splitlines() if ln.strip()]
    pids = agent_obs.tree(o.run.pid, o.execs)
    calls = [e for e in events if "LlmCall" in e["event"] and e["process"]["pid"] in pids]
    tools = [e for e in events if "ToolExec" in e["event"] and e["process"]["pid"] in pids
             and any("obs-agent-tool" in a for a in e["event"]["ToolExec"]["argv"])]
    assert calls and tools
    assert {e["identity"]["session"] for e in tools} == {calls[0]["identity"]["session"]}


@pytest.mark.xfail(strict=True, reason=NAGLE)
def test_first_call_ttft_with_a_nagle_server() -> None:
    """Gemini CLI (everything else right) against a stand-in that leaves Nagle on."""
    first = model_rows(observed("gemini", nagle=True))[0]
    assert ttft_right(first), first


def test_boringssl_functions_are_located_in_claude_code() -> None:
    """The prototype locator (tests/support/boringssl_locate.py) finds SSL_read/SSL_write in
    the pinned Claude Code by the errors BoringSSL's ssl_lib.cc reports (no symbols needed).
    Checked by hand with uprobes at these offsets on 2.1.110 (Bun 1.3.13), 2.1.200 (1.4.0),
    2.1.328 (1.4.4) and 2.1.332 (1.4.6): every HTTP request and response in plaintext."""
    from tests.support.boringssl_locate import locate

    exe = installed()["claude"][1].resolve()
    found = locate(exe)
    assert found.error is None and set(found.file_offsets) == {"SSL_read", "SSL_write"}
