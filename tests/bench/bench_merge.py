"""Throughput of obs-merge on one core: a generated agent run of N events (default 200k).

Not part of the test run (pytest collects test_*.py only). Run:
    .venv/bin/python tests/bench/bench_merge.py [--events N] [--keep DIR]
Prints one JSON line: events in/out, wall and CPU seconds, events per second (per wall second
and per CPU second: on a shared machine the second is the steadier), obs-merge's peak RSS, and
the baseline measured in the same run: `jq -c .` (parse and re-serialise each line, nothing
else) over the same files, its events per CPU second and obs-merge's ratio to it.

The input imitates four tools: obs-exec (ToolExec, FileAccess, ProcessExit), obs-net (Dns,
Egress), obs-llm (LlmCall) and obs-ssl (LlmApi), one agent starting tools all the time, pids
reused, each stream delivered up to 100 ms late so the reorder window has work to do.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.support.tools import tool_cmd

REPO = Path(__file__).parents[2]
NS = 1_000_000_000
T0 = 1_764_100_000 * NS
AGENT = 4100


def _ev(ts: int, kind: str, fields: dict[str, Any], pid: int, provider: str | None = None
        ) -> dict[str, Any]:
    return {"ts": ts, "host": "bench", "identity": {"agent": None, "task": str(pid),
                                                    "session": None},
            "provider": provider, "process": {"pid": pid, "ppid": AGENT, "comm": "tool",
                                              "uid": 1000, "cgroup_id": 1, "container_id": None,
                                              "pod_uid": None},
            "event": {kind: fields}}


def generate(n: int, seed: int = 1) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    streams: dict[str, list[dict[str, Any]]] = {"exec": [], "net": [], "llm": [], "ssl": []}
    streams["exec"].append(_ev(T0, "ToolExec", {"pid": AGENT, "ppid": 1, "uid": 1000,
                                                "comm": "python3", "filename": "/usr/bin/python3",
                                                "argv": ["python3", "agent.py"],
                                                "argv_truncated": False, "cwd": "/w"}, AGENT))
    ts, total, run = T0 + NS // 100, 1, 0
    while total < n:
        run += 1
        pid = 10_000 + run % 30_000
        streams["exec"].append(_ev(ts, "ToolExec", {
            "pid": pid, "ppid": AGENT, "uid": 1000, "comm": "git", "filename": "/usr/bin/git",
            "argv": ["git", "status", "--short"], "argv_truncated": False, "cwd": "/w"}, pid))
        for k in range(3):
            streams["exec"].append(_ev(ts + (k + 1) * 100_000, "FileAccess", {
                "pid": pid, "path": f"/w/src/file{run % 500}_{k}.py", "write": True,
                "flags": "O_WRONLY|O_CREAT|O_TRUNC"}, pid))
        ip = f"140.82.{run % 250}.{run % 7 + 1}"
        streams["net"].append(_ev(ts + 400_000, "Dns", {
            "pid": pid, "query": f"host{run % 250}.example.com", "qtype": "A",
            "server": "127.0.0.53", "answers": [ip]}, pid))
        streams["net"].append(_ev(ts + 500_000, "Egress", {
            "pid": pid, "peer": ip, "port": 443, "family": "ipv4", "sni": None}, pid))
        streams["exec"].append(_ev(ts + 900_000, "ProcessExit", {
            "pid": pid, "ppid": AGENT, "comm": "git", "exit_code": int(run % 3 == 0),
            "signal": None, "core_dumped": False, "duration": {"secs": 0, "nanos": 800_000}},
            pid))
        total += 7
        if run % 5 == 0:
            streams["ssl"].append(_ev(ts + 100_000, "LlmApi", {
                "pid": AGENT, "is_request": True, "model": "claude-x", "stream": True,
                "path": "/v1/messages"}, AGENT, "Anthropic"))
            streams["ssl"].append(_ev(ts + 800_000, "LlmApi", {
                "pid": AGENT, "is_request": False, "model": "claude-x",
                "prompt_tokens": rng.randrange(100, 5000), "completion_tokens": 200,
                "stream": True, "path": "/v1/messages"}, AGENT, "Anthropic"))
            streams["llm"].append(_ev(ts + 810_000, "LlmCall", {
                "pid": AGENT, "sni": "api.anthropic.com", "peer": "160.79.104.10", "port": 443,
                "req_bytes": 5000, "resp_bytes": 3000, "latency": {"secs": 0, "nanos": 700_000},
                "ttft": {"secs": 0, "nanos": 300_000}}, AGENT, "Anthropic"))
            total += 3
        ts += NS // 1000
    for evs in streams.values():  # delivered up to 100 ms late, as tools do
        evs.sort(key=lambda e: e["ts"] + rng.randrange(0, NS // 10))
    return streams


def write_inputs(work: Path, events: int) -> list[str]:
    files = []
    for name, evs in generate(events).items():
        path = work / f"{name}.ndjson"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in evs))
        files.append(str(path))
    return files


def _jq(pin: list[str], files: list[str]) -> float | None:
    """CPU seconds of `jq -c .` over the files (None without jq): the baseline."""
    if shutil.which("jq") is None:
        return None
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen([*pin, "jq", "-c", ".", *files], stdout=null)
        _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime if os.waitstatus_to_exitcode(status) == 0 else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, help="write the inputs and output here and keep them")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_merge."))
    work.mkdir(parents=True, exist_ok=True)
    if args.generate_only:
        write_inputs(work, args.events)
        return
    try:
        # Generated in a child, so this process stays small: a forked child's peak RSS
        # (what getrusage reports for children) would otherwise include the parent's.
        subprocess.run([sys.executable, __file__, "--generate-only", "--events",
                        str(args.events), "--keep", str(work)], check=True)
        files = sorted(str(p) for p in work.glob("*.ndjson"))
        n_in = sum(Path(f).read_bytes().count(b"\n") for f in files)
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        cmd = [*pin, *tool_cmd("obs-merge"), "--format", "json",
               "--summary", "--no-proc", *files]
        out_path = work / "merged.out"
        err_path = work / "merged.err"
        start = time.perf_counter()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and peak RSS
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        jq = _jq(pin, files)
        lines = out_path.read_bytes().splitlines()
        summary = orjson.loads(lines[-1])["summary"]
        stamps = [orjson.loads(line)["ts"] for line in lines[:-1]]
        cpu = usage.ru_utime + usage.ru_stime
        print(orjson.dumps({
            "events_in": n_in, "events_out": len(stamps), "status": proc.returncode,
            "stderr": err_path.read_text(errors="replace")[:200],
            "ordered": stamps == sorted(stamps), "late": summary["stream"].get("late", 0),
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "events_per_s": round(n_in / wall), "events_per_cpu_s": round(n_in / cpu),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "jq_events_per_cpu_s": jq and round(n_in / jq),
            "vs_jq": jq and round(jq / cpu, 2), "pinned_to_one_core": bool(pin),
            "cpu_count": os.cpu_count(),
        }).decode())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
