"""Added cost per open() of an *unlisted* file while obs-fileguard runs, against no guard,
measured in the same run, each on its own private tmpfs (so the host never waits on these
guards):

- "no guard": a tmpfs no guard marks;
- "inode rules only": a tmpfs with a listed file on it: unlisted opens cause no event;
- "directory rule": a tmpfs with a listed directory: every open on it is a permission event,
  answered by the guard (fstat + readlink + a name lookup + the response write).

Both guards run for the whole bench and the scenarios are interleaved round by round, so a
noisy machine shifts all of them alike; each keeps its best round. The generator is
tests/bench/openloop.c (open + close as fast as it goes), one process and then one per CPU.
Ratios are printed, never asserted. OBS_BENCH_SECONDS sets the seconds per round (default 1).
Run as root: ``.venv/bin/python tests/bench/bench_fileguard.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.tools import tool_cmd  # noqa: E402

ROUNDS = 5


def build_openloop(workdir: Path) -> Path:
    out = workdir / "openloop"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(REPO / "tests" / "bench" / "openloop.c")],
                   check=True)
    return out


def opens_per_sec(gen: Path, target: Path, seconds: float, procs: int = 1) -> float:
    """Total open+close rate of ``procs`` generators running at once."""
    runs = [subprocess.Popen([str(gen), str(target), "0", str(seconds)],
                             stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    return sum(float(r.communicate()[0].split()[1]) for r in runs)


@contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "obs-bench", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@contextmanager
def guard(workdir: Path, rules: str) -> Iterator[subprocess.Popen[bytes]]:
    conf = Path(tempfile.mkdtemp(dir=workdir))  # 0700, root-owned
    deny, hb = conf / "deny", conf / "hb"
    deny.write_text(rules)
    with open(conf / "out", "wb") as out, open(conf / "err", "wb") as err:
        proc = subprocess.Popen(tool_cmd("obs-fileguard", str(deny), "--format", "json",
                                         "--heartbeat-file", str(hb)), stdout=out, stderr=err)
    try:
        while not hb.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"obs-fileguard failed: {(conf / 'err').read_text()}")
            time.sleep(0.01)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        print(f"  guard: {(conf / 'err').read_text().strip().splitlines()[-1]}")


def main() -> int:
    if os.geteuid() != 0:
        print("bench_fileguard: needs root (fanotify permission events, mount)", file=sys.stderr)
        return 1
    seconds = float(os.environ.get("OBS_BENCH_SECONDS", "1"))
    ncpu = os.cpu_count() or 1
    names = ("no guard", "inode rules only", "directory rule")
    best = {(name, procs): 0.0 for name in names for procs in (1, ncpu)}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fg-")))
        gen = build_openloop(workdir)
        targets = {}
        for i, name in enumerate(names):
            fs = stack.enter_context(tmpfs(workdir / f"fs{i}"))
            (fs / "secret").mkdir()
            (fs / "listed").write_text("x")
            targets[name] = fs / "target"
            targets[name].write_text("x")
        stack.enter_context(guard(workdir, f"{targets['inode rules only'].parent}/listed\n"))
        stack.enter_context(guard(workdir, f"{targets['directory rule'].parent}/secret\n"))
        print(f"bench_fileguard: open+close of an unlisted file on a tmpfs, best of {ROUNDS} "
              f"interleaved rounds of {seconds:g} s")
        for _ in range(ROUNDS):
            for name in names:
                for procs in (1, ncpu):
                    rate = opens_per_sec(gen, targets[name], seconds, procs)
                    best[name, procs] = max(best[name, procs], rate)
        for name in names:
            print(f"  {name:<18} {1e9 / best[name, 1]:8.0f} ns/open (1 opener)   "
                  f"{best[name, ncpu]:9.0f} opens/s ({ncpu} openers)")

    base_one, base_many = best["no guard", 1], best["no guard", ncpu]
    print("\ncost per open relative to no guard (1.00 = free):")
    for name in names[1:]:
        one, many = best[name, 1], best[name, ncpu]
        print(f"  {name:<18} x{base_one / one:5.2f} with 1 opener (+{1e9 / one - 1e9 / base_one:.0f}"
              f" ns/open)   x{base_many / many:5.2f} with {ncpu} openers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
