"""The real agents under obs: Claude Code (`claude -p`), Codex CLI (`codex exec`) and Gemini
CLI (`gemini -p`), pinned and installed by deploy/agents.sh, each run in a loopback-only
network namespace against a TLS stand-in of its provider (tests/support/agent_server.py)
that waits 250 ms before each answer, asks for one shell command, and logs every request
with its own clock. obs-llm --api, obs-exec and obs-ssl --api-only watch each run.

Every check of issue 13 is asserted for every agent: one LlmCall per request with TTFT and
latency within 10 ms of the server's clock (Nagle or not), model and exact tokens (Claude
Code's static BoringSSL read at located addresses, Codex's from its transcript, Gemini's
from Node's OpenSSL), non-model requests marked, unreadable stacks named."""

from __future__ import annotations

import mmap
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from libobs.kernel import cache
from libobs.tls import boringssl, elf, judgements, libraries
from tests.support import agent_obs
from tests.support.agent_obs import (
    TOKENS,
    Observed,
    compare,
    latency_right,
    observe,
    timing,
    ttft_right,
)
from tests.support.agents import AGENTS, installed
from tests.support.tools import tool_cmd

pytestmark = [pytest.mark.kernel, pytest.mark.agents]

_runs: dict[tuple[str, bool], Observed] = {}


def observed(agent: str, nagle: bool = False) -> Observed:
    """One observed run per agent (and server kind) for the whole module."""
    if (agent, nagle) not in _runs:
        version_exe = installed().get(agent)
        if version_exe is None:
            pytest.fail(f"{agent} is not installed (deploy/setup-host.sh --agents)")
        if agent == "claude":  # as on a host where obs met it before (located and remembered,
            exe = version_exe[1].resolve()  # see test_obs_ssl_stacks): attached at start,
            libraries.file_stack(exe)  # so read from its first request (a first run's early
            judgements.remember(str(exe))  # GETs: the test below)
        _runs[(agent, nagle)] = observe(agent, version_exe[1], nagle=nagle)
    return _runs[(agent, nagle)]


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
        assert ttft_right(r), timing(r)
        assert latency_right(r), timing(r)


# Where the numbers come from: the wire (TLS plaintext) names the model the server served;
# Codex's rollout transcript names the model it was configured with (the request's).
USAGE_SOURCE = {"claude": "wire", "codex": "transcript", "gemini": "wire"}


@pytest.mark.parametrize("agent", AGENTS)
def test_model_and_exact_tokens_on_every_call(agent: str) -> None:
    rows = model_rows(observed(agent))
    assert rows
    for r in rows:
        assert r["obs_usage_source"] == USAGE_SOURCE[agent], r
        want = r["request_model"] if USAGE_SOURCE[agent] == "transcript" else r["model"]
        assert r["obs_model"] == want
        assert {k: r[f"obs_{k}"] for k in TOKENS} == {k: r[k] for k in TOKENS}


@pytest.mark.parametrize("agent", AGENTS)
def test_tls_stack_of_the_agent_is_named_on_stderr(agent: str) -> None:
    """Either obs attached to the agent's TLS library, or it says which binary it cannot read,
    and lists it in the heartbeat."""
    o = observed(agent)
    err = o.stderr["obs-llm"]
    if agent == "codex":
        exe = str(installed()["codex"][1].resolve())
        named = [ln for ln in err.splitlines() if ln.startswith("obs-llm: not read: ")
                 and "/codex: rustls: " in ln]
        assert len(named) == 1 and "are lost" in named[0], err
        listed = [u for u in o.heartbeats["obs-llm"][-1]["unreadable_files"]
                  if u["path"].endswith("/bin/codex")]
        assert [u["stack"] for u in listed] == ["rustls"], exe
    else:
        lib = {"claude": "claude.exe (BoringSSL (static): SSL_read via SSL_read@0x",
               "gemini": "/usr/bin/node"}[agent]
        assert lib in err, err


@pytest.mark.parametrize("agent", AGENTS)
def test_calls_whose_tls_cannot_be_read_are_marked(agent: str) -> None:
    """The wire of a call whose process's TLS stack cannot be read never looks like "no
    model": the call says which stack hides it (its numbers then come from the transcript)."""
    o = observed(agent)
    for r in model_rows(o):
        why = o.calls[r["call"]].get("tls_unreadable")
        if agent == "codex":
            assert why and why.startswith("rustls in /") and why.endswith("/bin/codex"), r
            assert r["obs_usage_source"] in ("transcript", None), r
        else:
            assert r["obs_usage_source"] == "wire" and why is None, r


def test_calls_a_new_program_made_before_it_was_read_say_so() -> None:
    """Claude Code run as if for the first time on the host (the located BoringSSL functions
    and the programs met before forgotten): obs attaches to it once it has exec'd, and its
    first requests (the settings GETs) can come before that. Every call was read or says why:
    never a null with no reason."""
    for kind in ("boringssl", judgements.PROGRAMS):
        for entry in (cache.ROOT / kind).glob("*.json"):
            entry.unlink()
    o = observe("claude", installed()["claude"][1])
    assert o.calls
    for c in o.calls:
        why = c.get("tls_unreadable") or ""
        assert c.get("model_call") is not None or (
            why.startswith("BoringSSL (static) in /") and "ms after this call began" in why), c


@pytest.mark.parametrize("agent", AGENTS)
def test_requests_that_are_not_model_calls_are_kept_apart(agent: str) -> None:
    """Claude Code's GETs for settings and limits are LlmCalls of their own, marked as no
    model call with their path (and never merged with a neighbour: the test above)."""
    o = observed(agent)
    for r in compare(o.run.log, o.calls, o.offset_ns):
        call = o.calls[r["call"]]
        if agent == "codex":  # no plaintext: nothing to tell them by
            assert call.get("model_call") is None, r
        elif r["model_call"]:
            assert call["model_call"] is True and call["request"] == f"POST {r['path']}" \
                .split("?")[0], (r, call)
        else:
            assert call["model_call"] is False, (r, call)
            assert call["request"] == f"{r['method']} {r['path'].split('?')[0]}", (r, call)


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


@pytest.mark.parametrize("agent", ["gemini", "codex"])
def test_first_call_ttft_with_a_nagle_server(agent: str) -> None:
    """Against a stand-in that leaves Nagle on, a connection's TLS 1.3 session tickets after
    the first come with the client's delayed ACK (~40 ms after the handshake), after the
    request: they are not the first call's first response byte. Gemini CLI's calls are timed
    from the plaintext (obs-llm --api); Codex's (rustls, unreadable) from the socket alone."""
    o = observed(agent, nagle=True)
    rows = model_rows(o)
    assert len(o.calls) == len(o.run.log) and rows
    for r in rows:
        assert ttft_right(r), timing(r)
        assert latency_right(r), timing(r)


# SSL_write / SSL_read file offsets, checked by hand with uprobes at them (every HTTP request
# and response in plaintext): docs/real-agents.md. Two ERR_put_error ABIs among them.
CLAUDE_CODE_OFFSETS = {"2.1.110": (0x4FF6960, 0x4FF5D00), "2.1.200": (0x320D3A0, 0x320D010),
                       "2.1.328": (0x311D660, 0x311D810), "2.1.332": (0x3330300, 0x33304B0)}
PACKS = Path("/var/cache/obs/agents/.packs")  # older releases' executables (deploy/agents.sh)


def file_offset(data: Any, va: int | None) -> int | None:
    text = elf.section(data, ".text")
    return None if va is None or text is None else va - text.addr + text.offset


@pytest.mark.parametrize("version", sorted(CLAUDE_CODE_OFFSETS))
def test_boringssl_functions_are_located_in_claude_code(version: str) -> None:
    """libobs.tls.boringssl finds SSL_read/SSL_write in Claude Code by the errors BoringSSL's
    ssl_lib.cc reports (no symbols needed): the installed release, and older ones whose
    executables the project's setup fetches (deploy/agents.sh CLAUDE_PACKS)."""
    exe = installed()["claude"][1].resolve()
    if installed()["claude"][0] != version:
        exe = PACKS / version / "package" / "claude"
        assert exe.exists(), f"no Claude Code {version} under {PACKS}: run deploy/agents.sh"
    with open(exe, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        found = boringssl.locate(m)
        assert found.error is None
        assert (file_offset(m, found.ssl_write), file_offset(m, found.ssl_read)) \
            == CLAUDE_CODE_OFFSETS[version]
