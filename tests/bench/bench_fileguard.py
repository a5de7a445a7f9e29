"""Added cost per open() of *unlisted* files while obs-fileguard runs, against no guard,
measured in the same run, each on its own private tmpfs (so the host never waits on these
guards):

- "no guard": a tmpfs no guard marks;
- "inode rules only": a tmpfs with a listed file on it: unlisted opens cause no event;
- "dir rule, no cache": a tmpfs with a listed directory, guard run with ``--cache-size 0``:
  every open on it is a permission event, answered by the guard (fstat + readlink + a name
  lookup + the response write) -- what every directory rule cost before the cache;
- "dir rule": the same with the default cache (libobs/guard/cache.py): the first open in a
  directory is a round trip, later opens of any file in it cost no event.

Hot rows open one file again and again. Cold rows open a different file each time, each file
once per round: "one dir" FILES files in one directory (the cache serves all but the first
two), "many dirs" FILES directories of one file each, so that every open is the first in its
directory for longer than the cache remembers one (2 s): the cache cannot help, and costs a
set lookup per open.

The guards run for the whole bench and the scenarios are interleaved round by round, so a
noisy machine shifts all of them alike; each keeps its best round. The generator is
tests/bench/openloop.c (open + close as fast as it goes), one process and then one per CPU
(cold rows: one process). Ratios are printed, never asserted. OBS_BENCH_SECONDS sets the
seconds per round (default 1).
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
FILES = 20_000  # cold rows; more than libobs.guard.cache.DEFAULT_MAX_ENTRIES


def build_openloop(workdir: Path) -> Path:
    out = workdir / "openloop"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(REPO / "tests" / "bench" / "openloop.c")],
                   check=True)
    return out


def opens_per_sec(gen: Path, target: str, seconds: float, procs: int = 1,
                  nfiles: int = 0) -> float:
    """Total open+close rate of ``procs`` generators running at once (``nfiles``: ``target``
    is a pattern with %d, a different file each open)."""
    count = str(nfiles)  # a different file each open: one pass over them
    runs = [subprocess.Popen([str(gen), target, "0", str(60 if nfiles else seconds),
                              count if nfiles else "0", str(nfiles)],
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
def guard(workdir: Path, rules: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    conf = Path(tempfile.mkdtemp(dir=workdir))  # 0700, root-owned
    deny, hb = conf / "deny", conf / "hb"
    deny.write_text(rules)
    with open(conf / "out", "wb") as out, open(conf / "err", "wb") as err:
        proc = subprocess.Popen(tool_cmd("obs-fileguard", str(deny), "--format", "json",
                                         "--heartbeat-file", str(hb), *args), stdout=out, stderr=err)
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


def ratio_lines(best: dict[tuple[str, int], float], names: tuple[str, ...], counts: list[int],
                base: str) -> list[str]:
    out = []
    for name in names:
        if name == base:
            continue
        cols = []
        for procs in counts:
            b, r = best[base, procs], best[name, procs]
            extra = f" (+{1e9 / r - 1e9 / b:.0f} ns/open)" if procs == 1 else ""
            cols.append(f"x{b / r:5.2f} with {procs} opener(s){extra}")
        out.append(f"  {name:<26} " + "   ".join(cols))
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("bench_fileguard: needs root (fanotify permission events, mount)", file=sys.stderr)
        return 1
    seconds = float(os.environ.get("OBS_BENCH_SECONDS", "1"))
    ncpu = os.cpu_count() or 1
    hot = ("no guard", "inode rules only", "dir rule, no cache", "dir rule")
    cold = tuple(f"{kind}: {g}" for kind in ("one dir", "many dirs")
                 for g in ("no guard", "dir rule, no cache", "dir rule"))
    best: dict[tuple[str, int], float] = {}
    plans: list[tuple[str, str, int, list[int]]] = []  # name, target, nfiles, opener counts
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fg-")))
        gen = build_openloop(workdir)
        fss = {}
        for i, guarded in enumerate(("no guard", "inode rules only", "dir rule, no cache",
                                     "dir rule")):
            fs = stack.enter_context(tmpfs(workdir / f"fs{i}"))
            (fs / "secret").mkdir()
            (fs / "listed").write_text("x")
            (fs / "target").write_text("x")
            one, many = fs / "one", fs / "many"
            one.mkdir()
            many.mkdir()
            for k in range(FILES):  # empty files: no pages
                (one / f"f{k}").touch()
                (many / f"d{k}").mkdir()
                (many / f"d{k}" / "f").touch()
            fss[guarded] = fs
        stack.enter_context(guard(workdir, f"{fss['inode rules only']}/listed\n"))
        stack.enter_context(guard(workdir, f"{fss['dir rule, no cache']}/secret\n",
                                  "--cache-size", "0"))
        stack.enter_context(guard(workdir, f"{fss['dir rule']}/secret\n"))
        for name in hot:
            plans.append((name, str(fss[name] / "target"), 0, [1, ncpu]))
        for name in cold:
            kind, g = name.split(": ")
            pattern = "one/f%d" if kind == "one dir" else "many/d%d/f"
            plans.append((name, f"{fss[g]}/{pattern}", FILES, [1]))  # one pass per round
        print(f"bench_fileguard: open+close of unlisted files on a tmpfs, best of {ROUNDS} "
              f"interleaved rounds of {seconds:g} s")
        for _ in range(ROUNDS):
            for name, target, nfiles, counts in plans:
                for procs in counts:
                    rate = opens_per_sec(gen, target, seconds, procs, nfiles)
                    best[name, procs] = max(best.get((name, procs), 0.0), rate)
        for name, _, _, counts in plans:
            many = (f"   {best[name, ncpu]:9.0f} opens/s ({ncpu} openers)"
                    if ncpu in counts and ncpu != 1 else "")
            print(f"  {name:<26} {1e9 / best[name, 1]:8.0f} ns/open (1 opener){many}")

    print("\ncost per open relative to no guard (1.00 = free), the same file again and again:")
    print("\n".join(ratio_lines(best, hot, sorted({1, ncpu}), "no guard")))
    for kind in ("one dir", "many dirs"):
        what = (f"{FILES} files in one directory" if kind == "one dir"
                else f"{FILES} directories of one file")
        print(f"cold, a different file each open ({what}):")
        names = tuple(f"{kind}: {g}" for g in ("no guard", "dir rule, no cache", "dir rule"))
        print("\n".join(ratio_lines(best, names, [1], names[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
