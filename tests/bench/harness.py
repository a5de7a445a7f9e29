"""Shared pieces of the bench scripts: starting tools, load generators, results.

Every bench prints a ratio against a baseline measured in the same invocation and appends its
result to bench-results/<name>.json; timings are reported, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench-results"
PY = sys.executable


from tests.support.tools import tool_cmd  # noqa: E402  (after the sys.path line above)


def build(source: str) -> Path:
    """Compile tests/bench/<source>.c once per run."""
    out = Path(tempfile.gettempdir()) / "obs-bench" / source  # comm == source name
    out.parent.mkdir(exist_ok=True)
    src = REPO / "tests" / "bench" / f"{source}.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return out


class Tool:
    """A running obs tool writing NDJSON to a file, ready once its heartbeat file exists."""

    def __init__(self, name: str, *args: str, cpu: int | None = None, hb_interval: float = 1.0):
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.out = self.dir / "out.ndjson"
        self.hb = self.dir / "hb.json"
        cmd = tool_cmd(name, "--format", "json", "--heartbeat-file", str(self.hb),
                       "--heartbeat-interval", str(hb_interval), *args)
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.t0 = time.monotonic()
        with open(self.out, "wb") as o, open(self.dir / "err", "wb") as e:
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e)
        while not self.hb.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} failed: {(self.dir / 'err').read_text()}")
            time.sleep(0.005)
        self.ready_s = time.monotonic() - self.t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=60)

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for ln in self.out.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(ln))
        return out

    def count(self, kind: str) -> int:
        """Lines of this kind, streaming: a 30 s storm is several GB of NDJSON."""
        needle = b'"event":{"' + kind.encode() + b'"'
        n, tail = 0, b""
        with open(self.out, "rb") as f:
            while chunk := f.read(8 << 20):
                data = tail + chunk
                n += data.count(needle)
                tail = data[-(len(needle) - 1):]  # a needle split across chunks
                n -= tail.count(needle)          # (never counted twice)
        return n

    def opens(self) -> int:
        """Opens the FileAccess lines stand for: the sum of their `count` (folded events)."""
        n = 0
        with open(self.out, "rb") as f:
            for ln in f:
                if b'"event":{"FileAccess"' in ln:
                    with contextlib.suppress(ValueError, KeyError):
                        n += json.loads(ln)["event"]["FileAccess"].get("count", 1)
        return n

    def last_heartbeat(self) -> dict[str, Any]:
        """The last heartbeat line, read from the end of the file."""
        size = self.out.stat().st_size
        with open(self.out, "rb") as f:
            f.seek(max(0, size - (4 << 20)))
            lines = f.read().splitlines()
        for ln in reversed(lines):
            if b'"CollectorHeartbeat"' in ln:
                with contextlib.suppress(ValueError):
                    return json.loads(ln)["event"]["CollectorHeartbeat"]
        return {}

    def rss_kib(self) -> dict[str, int]:
        return rss_kib(self.proc.pid)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def rss_kib(pid: int) -> dict[str, int]:
    """RssAnon (private) and RssFile (shared file pages, mostly bcc's LLVM) of a process."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def save(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{name}] results in {path.relative_to(REPO)}")


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# `nox -s bench` stays under 10 minutes; OBS_BENCH_LONG=1 runs the long form (30 s steps, every
# rate, 10 min of RSS) that the figures were taken with.
LONG = os.environ.get("OBS_BENCH_LONG") == "1"


def env_seconds(default: float, long: float | None = None) -> float:
    """OBS_BENCH_SECONDS, else `long` under OBS_BENCH_LONG=1, else `default`."""
    return float(os.environ.get("OBS_BENCH_SECONDS", long if LONG and long else default))
