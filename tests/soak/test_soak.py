"""Soak (nox -s soak, not the default run): every observer under a steady agent-like load for
OBS_SOAK_MINUTES (default 30): private RSS stays flat, nothing is lost, every line is valid."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import orjson
import pytest

from tests.support.tools import REPO, running

pytestmark = pytest.mark.kernel
MINUTES = float(os.environ.get("OBS_SOAK_MINUTES", 30))
TOOLS = {"obs-exec": ["--files"], "obs-net": [], "obs-llm": [], "obs-ssl": []}


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def load(stop: threading.Event, tmp: Path) -> None:
    """Processes, file writes and deletes, and connections: about 200 actions a second."""
    i = 0
    while not stop.is_set():
        subprocess.run(["/bin/true", f"soak-{i}"])
        f = tmp / f"soak-{i % 50}.txt"
        f.write_text("x" * 100)
        if i % 2:
            f.unlink()
        with socket.socket() as s, suppress(OSError):
            s.settimeout(0.05)
            s.connect(("127.0.0.1", 9))
        i += 1
        stop.wait(0.005)


def test_soak_flat_rss_zero_loss(tmp_path):
    present = {t: a for t, a in TOOLS.items() if (REPO / "tools" / f"{t.replace('-', '_')}.py").exists()}
    with ExitStack() as stack:
        tools = {t: stack.enter_context(running(t, "--heartbeat-interval", "10", *a))
                 for t, a in present.items()}
        stop = threading.Event()
        th = threading.Thread(target=load, args=(stop, tmp_path), daemon=True)
        th.start()
        time.sleep(60)  # warm-up: caches fill, allocator settles
        first = {t: rss_anon_kib(r.proc.pid) for t, r in tools.items()}
        samples = {t: [] for t in tools}
        deadline = time.monotonic() + MINUTES * 60
        while time.monotonic() < deadline:
            time.sleep(30)
            for t, r in tools.items():
                assert r.proc.poll() is None, f"{t} died: {r.stderr()[-2000:]}"
                samples[t].append(rss_anon_kib(r.proc.pid))
        stop.set()
        th.join()
        for t, r in tools.items():
            assert r.stop() == 0
            beats = [orjson.loads(ln)["event"]["CollectorHeartbeat"]
                     for ln in r.stdout_lines() if b"CollectorHeartbeat" in ln]
            assert beats and beats[-1]["dropped"] == 0, (t, beats[-1:])
            growth = samples[t][-1] - first[t]
            print(f"{t}: private RSS {first[t] // 1024} → {samples[t][-1] // 1024} MiB "
                  f"({growth / 1024:+.1f}); max {max(samples[t]) // 1024} MiB")
            assert growth < 4 * 1024, (t, first[t], samples[t])
            assert max(samples[t]) < 40 * 1024 * 1.25, (t, samples[t])
