"""What obs reports about a real agent's run, set against the stand-in's own log.

`observe()` runs obs-llm --api, obs-exec and obs-ssl --api-only around one agent run;
`compare()` (pure) pairs each request the server logged with the LlmCall that covers it and
gives, per request, obs's TTFT and latency next to the server's clock, and the model and
tokens obs read next to those served.

The server's own TTFT (first write - end of its read) leaves out the time the server took to
read a request the client had already sent: a Python server on a loaded 2-core machine was
seen to read a new connection's first request 10-18 ms late. And a server clock read around
a write can be late by however long the server was preempted (a write that wakes the client
invites just that). The client-side truth obs measures therefore lies in brackets that hold
however loaded the machine is: the first response byte arrives between the start and the
return of the server's first write, the last between those of its last write; so TTFT lies
between (first write's start - end of the server's read) and (first write's return - the
call's start), and latency between (last write's start - the call's start) and (last write's
return - the call's start). Tests check obs against these brackets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libobs.events import Clock
from tests.support.agents import Run, run_agent
from tests.support.cgroups import cgroup
from tests.support.tools import running

TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")


@dataclass
class Observed:
    run: Run
    calls: list[dict[str, Any]]     # the agent's LlmCall fields (+ "_env")
    api: list[dict[str, Any]]       # the agent's LlmApi fields from obs-ssl
    execs: list[dict[str, Any]]     # ToolExec fields in the agent's process tree
    offset_ns: int                  # wall - monotonic, to put LlmCall.ts on the server's clock
    stderr: dict[str, str]
    outputs: dict[str, Path]        # each tool's NDJSON (for obs-merge)
    heartbeats: dict[str, list[dict[str, Any]]]  # each tool's CollectorHeartbeat fields


def _ns(d: dict[str, int] | None) -> int | None:
    return None if d is None else d["secs"] * 1_000_000_000 + d["nanos"]


def tree(root: int, execs: list[dict[str, Any]]) -> set[int]:
    """root and every pid whose exec chain (ToolExec pid/ppid) leads to it."""
    pids, grew = {root}, True
    while grew:
        new = {e["pid"] for e in execs if e["ppid"] in pids} - pids
        grew, pids = bool(new), pids | new
    return pids


def _mine(events: list[dict[str, Any]], pids: set[int], root: int) -> list[dict[str, Any]]:
    sess = f"{root}@"
    return [e for e in events if e["_env"]["process"]["pid"] in pids
            or (e["_env"]["identity"].get("session") or "").startswith(sess)]


def observe(agent: str, exe: Path, **kw: Any) -> Observed:
    """The agent runs in its own cgroup and the tools watch only that cgroup (as deployed):
    the stand-in's own SSL calls (system libssl) are neither reported nor slowed by capture,
    so its clock stays the truth. The agent's executable is not named (no --lib): the tools
    find it as it starts, as they would for a user."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    lib: list[str] = []
    with cgroup("obs-agent") as cg, \
            running("obs-exec", "--cgroup", str(cg), env=env) as ex, \
            running("obs-llm", "--api", "--rescan", "0.2", "--heartbeat-interval", "0.2",
                    *lib, "--cgroup", str(cg), env=env) as llm, \
            running("obs-ssl", "--api-only", *lib, "--cgroup", str(cg), env=env) as ssl_:
        clock = Clock.now()
        run = run_agent(agent, exe, cgroup=cg, **kw)
        time.sleep(0.5)  # let the tools drain what the agent's exit produced
        for t in (ex, llm, ssl_):
            t.stop()
    execs = ex.of_kind("ToolExec")
    pids = tree(run.pid, execs)
    return Observed(run, _mine(llm.of_kind("LlmCall"), pids, run.pid),
                    _mine(ssl_.of_kind("LlmApi"), pids, run.pid),
                    [e for e in execs if e["pid"] in pids], clock.offset_ns,
                    {"obs-llm": llm.stderr(), "obs-exec": ex.stderr(), "obs-ssl": ssl_.stderr()},
                    {"obs-llm": llm.out_path, "obs-exec": ex.out_path, "obs-ssl": ssl_.out_path},
                    {name: t.of_kind("CollectorHeartbeat")
                     for name, t in (("obs-llm", llm), ("obs-exec", ex), ("obs-ssl", ssl_))})


def last_write_start(r: dict[str, Any]) -> int:
    """When the server's last write began (logs from before it was recorded: its return)."""
    return int(r.get("t_last_start") or r["t_last"])


def covering(r: dict[str, Any], calls: list[dict[str, Any]], offset_ns: int,
             taken: set[int] = frozenset()) -> int | None:  # type: ignore[assignment]
    """Index of the LlmCall that covers server request r: it started before the request ended
    on the server and ended after the server's last write began (20 ms slack); preferably one
    no earlier request took (concurrent connections), then the one ending nearest."""
    best: tuple[bool, int, int] | None = None
    last = last_write_start(r)
    for i, c in enumerate(calls):
        start = c["_env"]["ts"] - offset_ns
        end = start + (_ns(c["latency"]) or 0)
        if start > r["t_req"] or end < last - 20_000_000:
            continue
        key = (i in taken, abs(end - last), i)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def compare(rows: list[dict[str, Any]], calls: list[dict[str, Any]], offset_ns: int
            ) -> list[dict[str, Any]]:
    """Per server request (in order): the covering LlmCall's numbers next to the server's."""
    out, taken = [], set()
    for r in sorted(rows, key=lambda r: r["t_req"]):
        i = covering(r, calls, offset_ns, taken)
        if i is not None:
            taken.add(i)
        row = {"method": r["method"], "path": r["path"], "model_call": r["model_call"],
               "req_body": r["req_body"], "server_ttft_ms": (r["t_first"] - r["t_req"]) / 1e6,
               "call": i}
        if i is not None:
            c = calls[i]
            start = c["_env"]["ts"] - offset_ns
            row |= {"obs_ttft_ms": (_ns(c["ttft"]) or 0) / 1e6,
                    # the client finished sending between the call's start and the server's
                    # t_req (a busy server reads late), and the first byte arrived during the
                    # server's first write: the true TTFT lies in this bracket
                    "server_ttft_max_ms": (int(r.get("t_first_done") or r["t_first"])
                                           - start) / 1e6,
                    "obs_latency_ms": (_ns(c["latency"]) or 0) / 1e6,
                    # the last byte arrived during the server's last write
                    "server_latency_min_ms": (last_write_start(r) - start) / 1e6,
                    "server_latency_ms": (r["t_last"] - start) / 1e6,
                    "obs_req_bytes": c["req_bytes"], "obs_model": c.get("model"),
                    "obs_usage_source": c.get("usage_source"),
                    **{f"obs_{k}": c.get(k) for k in TOKENS}}
        if r["model_call"]:
            row |= {"model": r["model"], "request_model": r.get("request_model"),
                    **{k: r[k] for k in TOKENS}}
        out.append(row)
    return out


TOLERANCE_MS = 10.0  # issue 13: TTFT and latency within 10 ms of the server's clock


def ttft_right(r: dict[str, Any]) -> bool:
    """obs's TTFT within TOLERANCE_MS of the server's bracket (``compare``): on a loaded
    machine the client's last send returns, and the server reads, late by a few ms; the 1 ms
    accuracy seen on a quiet one is the bench's to measure."""
    return (r.get("obs_ttft_ms") is not None
            and r["server_ttft_ms"] - TOLERANCE_MS <= r["obs_ttft_ms"]
            <= r["server_ttft_max_ms"] + TOLERANCE_MS)


def timing(r: dict[str, Any]) -> str:
    """A row's clocks in one line, for an assertion's message (pytest cuts a long dict)."""
    keys = ("method", "path", "req_body", "call", "server_ttft_ms", "obs_ttft_ms",
            "server_ttft_max_ms", "server_latency_min_ms", "obs_latency_ms",
            "server_latency_ms", "obs_req_bytes")
    return " ".join(f"{k}={r.get(k)!r}" for k in keys)


def latency_right(r: dict[str, Any]) -> bool:
    """obs's latency within TOLERANCE_MS of the server's bracket: the last byte arrived while
    the server's last write ran, however late a loaded server read its clock after it."""
    return (r.get("obs_latency_ms") is not None
            and r["server_latency_min_ms"] - TOLERANCE_MS <= r["obs_latency_ms"]
            <= r["server_latency_ms"] + TOLERANCE_MS)


def usage_exact(r: dict[str, Any]) -> bool:
    """A model call's row (``compare``): obs's model and every token count right. A transcript
    names the model the agent was configured with (the request's); the wire the served one."""
    want = r.get("request_model") if r.get("obs_usage_source") == "transcript" else r["model"]
    return r.get("obs_model") == want and all(r.get(f"obs_{k}") == r[k] for k in TOKENS)


def shared_calls(table: list[dict[str, Any]]) -> set[int]:
    """LlmCalls that more than one server request fell into (merged requests)."""
    seen: dict[int, int] = {}
    for row in table:
        if row["call"] is not None:
            seen[row["call"]] = seen.get(row["call"], 0) + 1
    return {c for c, n in seen.items() if n > 1}
