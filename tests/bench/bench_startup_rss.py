"""Start-up and memory, per tool: launch → every probe attached with an empty start-up cache
(cold: clang compiles) and with the entry the cold start left (warm: the compiled program is
loaded, checked in the heartbeat), each OBS_BENCH_STARTS times (default 3), launch → first event, and
private/shared RSS right after start and after OBS_BENCH_RSS_MINUTES (default 10) of a light
steady workload (default 1 min; 10 with OBS_BENCH_LONG=1). Baseline: a bare bcc program
(`BPF(text=...)` with one tracepoint) started and measured in the same run, so the ratios show
what obs adds to what bcc itself costs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import LONG, PY, REPO, Tool, median, save, table

TRIGGERS = {
    "obs-exec": lambda: subprocess.run(["/bin/true"]),
    "obs-net": lambda: _connect(),
}
BARE_BCC = r"""
import sys, time
from bcc import BPF
b = BPF(text='TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }', cflags=["-w"])
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _connect() -> None:
    with socket.socket() as s:
        s.settimeout(0.2)
        with contextlib.suppress(OSError):
            s.connect(("127.0.0.1", 9))


def first_event(name: str) -> dict[str, float]:
    t0 = time.monotonic()
    tool = Tool(name)
    trigger = TRIGGERS.get(name)
    first = None
    try:
        deadline = time.monotonic() + 20
        while trigger and first is None and time.monotonic() < deadline:
            trigger()
            if any("CollectorHeartbeat" not in e["event"] for e in tool.lines()):
                first = time.monotonic() - t0
            else:
                time.sleep(0.01)
        return {"attached_s": tool.ready_s, "first_event_s": first or float("nan")}
    finally:
        tool.stop()
        tool.cleanup()


STARTS = int(os.environ.get("OBS_BENCH_STARTS", 3))


@contextlib.contextmanager
def cache_dir(d: Path):
    """The tools started inside use `d` as their start-up cache."""
    old = os.environ.get("OBS_CACHE_DIR")
    os.environ["OBS_CACHE_DIR"] = str(d)
    try:
        yield
    finally:
        if old is None:
            del os.environ["OBS_CACHE_DIR"]
        else:
            os.environ["OBS_CACHE_DIR"] = old


def attached_once(name: str) -> tuple[float, int, float]:
    """Launch → attached, how many programs the heartbeat says came from the cache, and
    SIGTERM → exited (every probe detached)."""
    tool = Tool(name)
    try:
        hb = json.loads(tool.hb.read_text())["event"]["CollectorHeartbeat"]
        t0 = time.monotonic()
        tool.stop()
        return tool.ready_s, int(hb.get("programs_cached", 0)), time.monotonic() - t0
    finally:
        tool.stop()
        tool.cleanup()


def cold_warm(name: str) -> dict[str, list[float]]:
    """Each round: an empty cache (cold), then the same cache again (warm)."""
    cold, warm, stops = [], [], []
    for _ in range(STARTS):
        d = Path(tempfile.mkdtemp(prefix="obs-bench-cache-"))
        d.chmod(0o755)  # the cache is used only when root alone can write it
        with cache_dir(d):
            t, hits, stop = attached_once(name)
            assert hits == 0, f"{name}: a cold start loaded {hits} cached programs"
            cold.append(t)
            stops.append(stop)
            t, hits, stop = attached_once(name)
            assert hits > 0, f"{name}: the warm start compiled"
            warm.append(t)
            stops.append(stop)
        shutil.rmtree(d, ignore_errors=True)
    return {"cold_s": cold, "warm_s": warm, "stop_s": stops}


def bare_bcc_ready() -> float:
    """Launch → attached of the bare bcc program: the baseline of launch→attached."""
    t0 = time.monotonic()
    p = subprocess.Popen([PY, "-c", BARE_BCC, "0"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()
    ready = time.monotonic() - t0
    p.wait()
    return ready


def bare_bcc_rss(seconds: float) -> dict[str, int]:
    from harness import rss_kib
    p = subprocess.Popen([PY, "-c", BARE_BCC, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    p.stdout.readline()
    rss = rss_kib(p.pid)
    p.wait()
    return rss


def workload(stop: threading.Event) -> None:
    """A light steady load: a process, a connect and a file write every 50 ms."""
    while not stop.is_set():
        subprocess.run(["/bin/true"])
        _connect()
        with open("/tmp/obs-bench-rss.txt", "w") as f:
            f.write("x")
        stop.wait(0.05)


def main() -> None:
    tools = [t for t in ("obs-exec", "obs-net", "obs-llm", "obs-ssl")
             if (REPO / "tools" / f"{t.replace('-', '_')}.py").exists()]
    rows, result = [], {"tools": {}}
    bare = []
    for name in tools:  # each tool next to a bare bcc start, so load drift hits both alike
        bare.append(bare_bcc_ready())
        r = first_event(name) | cold_warm(name)
        result["tools"][name] = r
    bare_ready = median(bare)
    for name in tools:
        r = result["tools"][name]
        cold, warm = median(r["cold_s"]), median(r["warm_s"])
        rows.append([name, f"{cold:.2f}", f"{warm:.2f}", f"{warm / bare_ready:.2f}",
                     f"{r['first_event_s']:.2f}", f"{median(r['stop_s']):.2f}"])
    print(table(rows, ["tool", f"launch→attached s, cold (median of {STARTS})",
                       "warm (cached program)", "warm vs bare bcc", "launch→first event s",
                       "SIGTERM→exited s"]))
    print(f"bare bcc program launch→attached: median {bare_ready:.2f} s of {len(bare)}")
    result["bare_bcc_ready_s"] = bare

    minutes = float(os.environ.get("OBS_BENCH_RSS_MINUTES", 10 if LONG else 1))
    base = bare_bcc_rss(1)
    running = {name: Tool(name) for name in tools}
    stop = threading.Event()
    load = threading.Thread(target=workload, args=(stop,), daemon=True)
    load.start()
    start = {n: t.rss_kib() for n, t in running.items()}
    samples: dict[str, list[int]] = {n: [] for n in running}
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        time.sleep(min(30, max(0.1, deadline - time.monotonic())))
        for n, t in running.items():
            samples[n].append(t.rss_kib().get("RssAnon", 0))
    end = {n: t.rss_kib() for n, t in running.items()}
    stop.set()
    for t in running.values():
        t.stop()
        t.cleanup()
    rows = []
    for n in running:
        a0, a1 = start[n].get("RssAnon", 0), end[n].get("RssAnon", 0)
        result["tools"][n] |= {"rss_start_kib": start[n], "rss_end_kib": end[n],
                               "rss_anon_samples_kib": samples[n]}
        rows.append([n, a0 // 1024, a1 // 1024, f"{(a1 - a0) / 1024:+.1f}",
                     end[n].get("RssFile", 0) // 1024,
                     f"{a1 / max(1, base.get('RssAnon', 1)):.2f}"])
    print(f"after {minutes:g} min of steady load; bare bcc program: "
          f"RssAnon {base.get('RssAnon', 0) // 1024} MiB, RssFile {base.get('RssFile', 0) // 1024} MiB")
    print(table(rows, ["tool", "private MiB start", "private MiB end", "growth MiB",
                       "shared file MiB", "private vs bare bcc"]))
    result |= {"minutes": minutes, "bare_bcc_kib": base}
    save("startup_rss", result)


if __name__ == "__main__":
    sys.exit(main())
