"""Throughput under a write-open storm on tmpfs: opens delivered vs generated, and the storm's
speed traced vs untraced, for obs-exec --files and bpftrace on the same tracepoints, with the
untraced storm as the baseline of the same run.

The generator (tests/bench/openloop.c) runs on CPU 1 at a fixed rate (0: as fast as it goes),
the observer on CPU 0, writing to a private tmpfs (ext4's O_TRUNC is journal-bound). Delivered
for obs-exec is the sum of FileAccess `count`s (repeated opens fold into one event); loss =
opens generated - delivered (the tool's own `dropped` counter is shown too).
OBS_BENCH_SECONDS sets the time per step (default 5; 30 with OBS_BENCH_LONG=1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import LONG, Tool, build, env_seconds, save, table

RATES = [int(r) for r in os.environ.get(
    "OBS_BENCH_RATES", "50000,100000,150000,200000,250000,0" if LONG else "100000,0").split(",")]
# The generator runs under a name of its own: other openloop runs on a shared machine would
# otherwise be counted as delivered.
COMM = f"oloop{os.getpid() % 100000}"
BPFTRACE = r"""
tracepoint:syscalls:sys_enter_openat /comm == "COMM" && (args->flags & 0x243)/ {
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
    tool = Tool("obs-exec", "--files", "--comm", COMM, cpu=0)
    try:
        n, achieved = generate(gen, target, rate, seconds)
        time.sleep(1.5)  # let the consumer finish the backlog
        tool.stop()
        delivered = tool.opens()
        dropped = tool.last_heartbeat().get("dropped", -1)
    finally:
        tool.stop()
        tool.cleanup()
    return {"generated": n, "rate": achieved, "delivered": delivered, "lost": n - delivered,
            "tool_dropped": dropped}


def run_bpftrace(gen: Path, target: Path, rate: int, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bpftrace-"))
    out = tmp / "out.txt"
    proc = subprocess.Popen(["taskset", "-c", "0", "bpftrace", "-o", str(out), "-e",
                             BPFTRACE.replace("COMM", COMM)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)  # bpftrace prints "Attaching N probes..." once ready
    n, achieved = generate(gen, target, rate, seconds)
    time.sleep(1.5)
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # seen once at the storm's full rate: kill, count its file
        proc.kill()
        _, err = proc.communicate()
        err += "\nbpftrace did not exit within 60 s of SIGTERM: killed"
        print(f"[throughput] bpftrace at rate {rate}: killed 60 s after SIGTERM", flush=True)
    lines = out.read_text(errors="replace").splitlines()
    delivered = sum(1 for ln in lines if ln[:1].isdigit())
    reported = sum(int(w) for ln in (lines + err.splitlines()) if "Lost" in ln
                   for w in ln.split() if w.isdigit())
    return {"generated": n, "rate": achieved, "delivered": delivered, "lost": n - delivered,
            "tool_dropped": reported}


def run_untraced(gen: Path, target: Path, rate: int, seconds: float) -> dict[str, float]:
    n, achieved = generate(gen, target, rate, seconds)
    return {"generated": n, "rate": achieved, "delivered": n, "lost": 0, "tool_dropped": 0}


@contextlib.contextmanager
def tmpfs() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="bench-open-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "obs-bench", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def main() -> None:
    seconds = env_seconds(5, long=30)
    gen = build("openloop").with_name(COMM)
    shutil.copy2(build("openloop"), gen)
    rows, result = [], {"seconds_per_step": seconds, "steps": []}
    best = {"obs-exec": 0.0, "bpftrace": 0.0}
    speed: dict[str, list[float]] = {"obs-exec": [], "bpftrace": []}
    kept: dict[str, list[float]] = {"obs-exec": [], "bpftrace": []}
    runners = (("untraced", run_untraced), ("obs-exec", run_obs), ("bpftrace", run_bpftrace))
    with tmpfs() as where:
        target = where / "f"
        for rate in RATES:
            base = 0.0
            for name, fn in runners:  # untraced first: each traced step has its baseline
                r = fn(gen, target, rate, seconds)
                r |= {"tool": name, "target_rate": rate}
                result["steps"].append(r)
                if name == "untraced":
                    base = r["rate"]
                else:
                    if r["lost"] <= 0:
                        best[name] = max(best[name], r["rate"])
                    speed[name].append(r["rate"] / base if base else float("nan"))
                    kept[name].append(r["delivered"] / r["generated"] if r["generated"] else 1)
                rows.append([name, rate or "max", f"{r['rate']:.0f}",
                             f"{r['rate'] / base:.2f}" if base else "-", r["generated"],
                             r["delivered"], r["lost"], r["tool_dropped"]])
                print(rows[-1], flush=True)
    print(table(rows, ["tool", "target/s", "achieved/s", "vs untraced", "generated",
                       "delivered", "lost", "reported"]))
    ratio = best["obs-exec"] / best["bpftrace"] if best["bpftrace"] else float("inf")
    result |= {"zero_loss_rate": best, "ratio_obs_vs_bpftrace": ratio,
               "speed_vs_untraced": speed, "delivered_vs_generated": kept}
    for name in ("obs-exec", "bpftrace"):
        print(f"{name}: storm delivered/generated, median over rates "
              f"{statistics.median(kept[name]):.3f}; storm speed traced/untraced "
              f"{statistics.median(speed[name]):.2f}")
    print(f"highest zero-loss rate: obs-exec {best['obs-exec']:.0f}/s, "
          f"bpftrace {best['bpftrace']:.0f}/s, ratio {ratio:.2f}")
    save("throughput", result)
    gen.unlink()


if __name__ == "__main__":
    main()
