"""Fault behaviour of a collector (obs-exec stands for every ring-buffer tool: they share the
loader, loop and sink): restarts, SIGTERM mid-burst, two at once, a reader that stops."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from tests.support.tools import REPO, running, tool_cmd, wait_for

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def openloop() -> Path:
    out = Path(tempfile.mkdtemp(prefix="obs-faults-")) / "openloop"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(REPO / "tests/bench/openloop.c")],
                   check=True)
    return out


def obs_programs() -> int:
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return out.count("tracepoint__sch")


def test_restart_8_times_leaves_nothing_attached():
    before = obs_programs()
    for _ in range(8):
        with running("obs-exec") as r:
            subprocess.run(["/bin/true"])
            r.wait_events("ToolExec", lambda f: f["comm"] == "true")
            assert r.stop() == 0
    wait_for(lambda: obs_programs() == before, 10, "programs to be released")


def test_sigterm_mid_burst_exits_cleanly_with_whole_lines(openloop, tmp_path):
    # --fold-window 0: one line per open, so the burst is a burst of lines
    with running("obs-exec", "--files", "--fold-window", "0", "--comm", "openloop") as r:
        gen = subprocess.Popen([str(openloop), str(tmp_path / "f"), "0", "3"],
                               stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        t0 = time.monotonic()
        assert r.stop(signal.SIGTERM) == 0
        took = time.monotonic() - t0
        gen.wait()
    lines = r.stdout_lines()
    assert len(lines) > 1000
    for ln in lines:
        orjson.loads(ln)  # every line whole and valid
    assert took < 15, f"exit took {took:.1f}s"
    assert "Traceback" not in r.stderr()


def test_two_collectors_at_once_both_see_everything():
    with running("obs-exec") as a, running("obs-exec") as b:
        p = subprocess.run(["/bin/true", "two-collectors"])
        assert p.returncode == 0
        for r in (a, b):
            r.wait_events("ToolExec", lambda f: f["argv"] == ["/bin/true", "two-collectors"])


def test_stalled_reader_never_stalls_the_kernel_side(openloop, tmp_path):
    hb = tmp_path / "hb.json"
    r_fd, w_fd = os.pipe()  # nobody reads r_fd until the end
    proc = subprocess.Popen(
        # --fold-window 0: one line per open, so there are lines enough to stall the reader
        tool_cmd("obs-exec", "--files", "--fold-window", "0", "--comm", "openloop",
                 "--format", "json", "--heartbeat-file", str(hb), "--heartbeat-interval", "0.5"),
        stdout=w_fd, stderr=subprocess.PIPE)
    os.close(w_fd)
    try:
        wait_for(hb.exists, 60, "attach")
        subprocess.run([str(openloop), str(tmp_path / "f"), "50000", "4"], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(1.5)

        def settled():
            ev = orjson.loads(hb.read_bytes())["event"]["CollectorHeartbeat"]
            return ev if ev["output_dropped"] > 0 else None
        beat = wait_for(settled, 10, "output_dropped to be counted")
        # The kernel side kept draining: nothing lost there, only lines the reader refused.
        assert beat["dropped"] == 0
        assert beat["counts"].get("FileAccess", 0) + beat["output_dropped"] >= 200_000
        proc.send_signal(signal.SIGTERM)
        # It exits even though its reader is still stalled.
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(r_fd)


def test_a_full_disk_is_said_once_counted_and_exits_1(tmp_path):
    """`obs-exec >/dev/full`: no traceback; one line on stderr; the kernel side keeps being
    drained, lines not written are counted in output_dropped; exit 1 so systemd restarts."""
    beat = tmp_path / "beat.json"
    with open("/dev/full", "wb") as full:
        p = subprocess.run(tool_cmd("obs-exec", "--duration", "2", "--format", "json",
                                    "--heartbeat-interval", "0.5", "--heartbeat-file", str(beat)),
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    said = [ln for ln in p.stderr.splitlines() if "cannot write output" in ln]
    assert said == ["obs-exec: cannot write output: No space left on device; lines that "
                    "cannot be written are counted (output_dropped), exit status will be 1"]
    last = orjson.loads(beat.read_bytes())
    assert last["event"]["CollectorHeartbeat"]["output_dropped"] >= 2  # heartbeats at least


def test_ring_size_beyond_what_the_kernel_takes_is_a_usage_error():
    for size in ("4096", "3"):
        p = subprocess.run(tool_cmd("obs-exec", "--ring-size", size, "--duration", "1"),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert len(p.stderr.splitlines()) == 1 and "--ring-size" in p.stderr, p.stderr
