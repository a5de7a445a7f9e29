"""Latency from the kernel event to its line on stdout (p50/p99): obs-exec reading execs and
obs-net reading connects, each line timed by a reader on a pipe against the event's own `ts`
(kernel time converted to wall clock). Baseline in the same run: the same reader fed by a bare
pipe writer, to show what obs adds over moving a line through a pipe at all."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import suppress

import orjson
from harness import percentile, save, table, tool_cmd

N = int(os.environ.get("OBS_BENCH_LATENCY_N", 500))


def measure(cmd: list[str], trigger, kind: str) -> list[float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    lat: list[float] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time_ns()
            ev = orjson.loads(line)
            if "CollectorHeartbeat" in ev["event"]:
                ready.set()
            elif kind in ev["event"] and ready.is_set():
                lat.append((now - ev["ts"]) / 1e6)
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    ready.wait(60)
    for _ in range(N):
        trigger()
        time.sleep(0.01)
    time.sleep(1)
    proc.terminate()
    proc.wait(timeout=30)
    th.join(timeout=5)
    return lat


def pipe_baseline() -> list[float]:
    r, w = os.pipe()
    lat: list[float] = []
    with os.fdopen(r, "rb") as rf, os.fdopen(w, "wb", buffering=0) as wf:
        def reader() -> None:
            for line in rf:
                lat.append((time.time_ns() - orjson.loads(line)["ts"]) / 1e6)
                if len(lat) == N:
                    return
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        for _ in range(N):
            wf.write(orjson.dumps({"ts": time.time_ns()}) + b"\n")
            time.sleep(0.01)
        th.join(timeout=10)
    return lat


def connect() -> None:
    with socket.socket() as s, suppress(OSError):
        s.settimeout(0.1)
        s.connect(("127.0.0.1", 9))


def main() -> None:
    hb = ["--format", "json", "--heartbeat-interval", "0.2"]
    runs = {"pipe (baseline)": pipe_baseline(),
            "obs-exec ToolExec": measure(tool_cmd("obs-exec", *hb),
                                         lambda: subprocess.run(["/bin/true"]), "ToolExec")}
    runs["obs-net Egress"] = measure(tool_cmd("obs-net", *hb), connect, "Egress")
    rows, result = [], {}
    for name, lat in runs.items():
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        result[name] = {"n": len(lat), "p50_ms": p50, "p99_ms": p99}
        rows.append([name, len(lat), f"{p50:.2f}", f"{p99:.2f}"])
    print(table(rows, ["source", "n", "p50 ms", "p99 ms"]))
    save("latency", result)


if __name__ == "__main__":
    main()
