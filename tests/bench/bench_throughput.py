"""Throughput: the highest open() rate delivered to stdout with zero loss, obs-exec --files vs
bpftrace on the same tracepoints, same machine, same run.

The generator (tests/bench/openloop.c) runs on CPU 1 at a fixed rate; the observer on CPU 0.
Loss = opens generated - lines delivered (the tool's own `dropped` counter is shown too).
OBS_BENCH_SECONDS sets the time per step (default 30, as the target asks).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from harness import Tool, build, env_seconds, save, table

RATES = [int(r) for r in os.environ.get(
    "OBS_BENCH_RATES", "50000,100000,150000,200000,250000,0").split(",")]  # 0: as fast as the generator goes
BPFTRACE = r"""
tracepoint:syscalls:sys_enter_openat /comm == "openloop" && (args->flags & 0x243)/ {
  @fn[tid] = args->filename;
}
tracepoint:syscalls:sys_exit_openat /@fn[tid]/ {
  printf("%d %d %s\n", pid, args->ret, str(@fn[tid]));
  delete(@fn[tid]);
}
"""


def generate(gen: Path, target: Path, rate: int, seconds: float) -> tuple[int, float]:
    out = subprocess.run(["taskset", "-c", "1", str(gen), str(target), str(rate), str(seconds)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def run_obs(gen: Path, target: Path, rate: int, seconds: float) -> dict[str, float]:
    tool = Tool("obs-exec", "--files", "--comm", "openloop", cpu=0)
    try:
        n, achieved = generate(gen, target, rate, seconds)
        time.sleep(1.5)  # let the consumer finish the backlog
        tool.stop()
        delivered = tool.count("FileAccess")
        dropped = tool.last_heartbeat().get("dropped", -1)
    finally:
        tool.stop()
        tool.cleanup()
    return {"generated": n, "rate": achieved, "delivered": delivered, "lost": n - delivered,
            "tool_dropped": dropped}


def run_bpftrace(gen: Path, target: Path, rate: int, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bpftrace-"))
    out = tmp / "out.txt"
    proc = subprocess.Popen(["taskset", "-c", "0", "bpftrace", "-o", str(out), "-e", BPFTRACE],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)  # bpftrace prints "Attaching N probes..." once ready
    n, achieved = generate(gen, target, rate, seconds)
    time.sleep(1.5)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    lines = out.read_text(errors="replace").splitlines()
    delivered = sum(1 for ln in lines if ln[:1].isdigit())
    reported = sum(int(w) for ln in (lines + err.splitlines()) if "Lost" in ln
                   for w in ln.split() if w.isdigit())
    return {"generated": n, "rate": achieved, "delivered": delivered, "lost": n - delivered,
            "tool_dropped": reported}


def main() -> None:
    seconds = env_seconds(30)
    gen = build("openloop")
    target = Path(tempfile.mkdtemp(prefix="bench-open-")) / "f"
    rows, result = [], {"seconds_per_step": seconds, "steps": []}
    best = {"obs-exec": 0.0, "bpftrace": 0.0}
    for rate in RATES:
        for name, fn in (("obs-exec", run_obs), ("bpftrace", run_bpftrace)):
            r = fn(gen, target, rate, seconds)
            r |= {"tool": name, "target_rate": rate}
            result["steps"].append(r)
            if r["lost"] <= 0:
                best[name] = max(best[name], r["rate"])
            rows.append([name, rate or "max", f"{r['rate']:.0f}", r["generated"], r["delivered"],
                         r["lost"], r["tool_dropped"]])
            print(rows[-1], flush=True)
    print(table(rows, ["tool", "target/s", "achieved/s", "generated", "delivered", "lost",
                       "reported"]))
    ratio = best["obs-exec"] / best["bpftrace"] if best["bpftrace"] else float("inf")
    result |= {"zero_loss_rate": best, "ratio_obs_vs_bpftrace": ratio}
    print(f"highest zero-loss rate: obs-exec {best['obs-exec']:.0f}/s, "
          f"bpftrace {best['bpftrace']:.0f}/s, ratio {ratio:.2f}")
    save("throughput", result)


if __name__ == "__main__":
    main()
