"""Fault behaviour of a collector (obs-exec stands for every ring-buffer tool: they share the
loader, loop and sink): restarts, SIGTERM mid-burst, two at once, a reader that stops."""

from __future__ import annotations

import contextlib
import functools
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


# The tools under test filter on this comm: unique per test run, so that another run of this
# suite on the same machine (shared CI hosts, other worktrees) cannot add to their counts.
COMM = f"ol-{os.getpid()}"


@pytest.fixture(scope="module")
def openloop() -> Path:
    out = Path(tempfile.mkdtemp(prefix="obs-faults-")) / COMM
    subprocess.run(["gcc", "-O2", "-o", str(out), str(REPO / "tests/bench/openloop.c")],
                   check=True)
    return out


def programs_of(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds (its fds' /proc fdinfo). Counting programs by
    name machine-wide would count every other obs-exec on a shared machine too."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                ids.update(int(ln.split()[1]) for ln in info.splitlines()
                           if ln.startswith("prog_id:"))
    return ids


def loaded_programs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"] for p in orjson.loads(out)}


def test_restart_8_times_leaves_nothing_attached():
    ours: set[int] = set()
    for _ in range(8):
        with running("obs-exec") as r:
            ours |= programs_of(r.proc.pid)
            subprocess.run(["/bin/true"])
            r.wait_events("ToolExec", lambda f: f["comm"] == "true")
            assert r.stop() == 0
    assert len(ours) >= 8 * 2  # exec and exit, at least, per run
    wait_for(lambda: not ours & loaded_programs(), 10, "programs to be released")


@pytest.mark.parametrize("multi", ["1", "0"], ids=["uprobe_multi", "perf_events"])
def test_obs_ssl_stopped_leaves_no_uprobe_program_loaded(multi):
    """Whether its uprobes went on as links or as perf events, obs-ssl's programs are gone
    once it stops (a link or event kept open would keep its program loaded)."""
    ours: set[int] = set()
    for _ in range(2):
        with running("obs-ssl", env={"OBS_UPROBE_MULTI": multi}) as r:
            ours |= programs_of(r.proc.pid)
            assert r.stop() == 0
    assert ours
    wait_for(lambda: not ours & loaded_programs(), 10, "programs to be released")


def test_sigterm_mid_burst_exits_cleanly_with_whole_lines(openloop, tmp_path):
    # --fold-window 0: one line per open, so the burst is a burst of lines
    with running("obs-exec", "--files", "--fold-window", "0", "--comm", COMM) as r:
        # The burst lasts until the tool is stopped: SIGTERM lands mid-burst on any machine.
        gen = subprocess.Popen([str(openloop), str(tmp_path / "f"), "0", "60"],
                               stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(r.stdout_lines()) > 1000, 60, "a burst under way")
            t0 = time.monotonic()
            assert r.stop(signal.SIGTERM) == 0
            took = time.monotonic() - t0
        finally:
            gen.kill()
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
    target = tmp_path / "f"
    r_fd, w_fd = os.pipe()  # nobody reads r_fd until the end
    proc = subprocess.Popen(
        # --fold-window 0: one line per open, so there are lines enough to stall the reader
        tool_cmd("obs-exec", "--files", "--fold-window", "0", "--comm", COMM, "--format", "json",
                 "--heartbeat-file", str(hb), "--heartbeat-interval", "0.2"),
        stdout=w_fd, stderr=subprocess.PIPE)
    os.close(w_fd)
    try:
        wait_for(hb.exists, 60, "attach")

        def beat():
            return orjson.loads(hb.read_bytes())["event"]["CollectorHeartbeat"]

        def taken(n):  # has the tool taken n records out of the kernel (written or refused)?
            b = beat()
            return b["counts"].get("FileAccess", 0) + b["output_dropped"] >= n

        # A closed loop, so that the result does not depend on how fast this machine is: each
        # chunk fills at most half the default 64 MiB ring (a FileAccess record: a 104-byte head
        # and a 256-byte slot per path component, one more for a mount), and the next one starts
        # once the tool has taken it — which it can only do if the stalled stdout holds nothing
        # up. How fast it drains is a rate: bench_throughput's business.
        chunk = (32 << 20) // (104 + 256 * (len(target.parts) + 1))
        total = 0
        while total < 200_000:
            subprocess.run([str(openloop), str(target), "0", "600", str(chunk)], check=True,
                           stdout=subprocess.DEVNULL)
            total += chunk
            wait_for(functools.partial(taken, total), 60, f"the tool to take {total} records")
        beat_ = wait_for(lambda: (b := beat())["output_dropped"] > 0 and b, 10,
                         "output_dropped to be counted")
        # The kernel side kept draining: nothing lost there, only lines the reader refused.
        assert beat_["dropped"] == 0
        assert beat_["counts"].get("FileAccess", 0) + beat_["output_dropped"] >= total
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


def test_a_closed_stdout_is_said_once_counted_and_exits_1(tmp_path):
    """`obs-net >&-`: stdout is no file at all (std_fds puts a read-only /dev/null there, so it
    cannot be taken by the next file opened): said once, counted, exit 1, as for a full disk."""
    beat = tmp_path / "beat.json"
    p = subprocess.run(["bash", "-c", 'exec "$@" >&-', "-",
                        *tool_cmd("obs-net", "--duration", "2", "--format", "json",
                                  "--heartbeat-interval", "0.5", "--heartbeat-file", str(beat))],
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr == ("obs-net: cannot write output: Bad file descriptor; lines that cannot "
                        "be written are counted (output_dropped), exit status will be 1\n")
    last = orjson.loads(beat.read_bytes())
    assert last["event"]["CollectorHeartbeat"]["output_dropped"] >= 2  # heartbeats at least


def test_a_heartbeat_file_that_cannot_be_written_is_said_and_observing_goes_on(tmp_path):
    beat = tmp_path / "no-such-dir" / "beat.json"
    p = subprocess.run(tool_cmd("obs-exec", "--duration", "1.5", "--format", "json",
                                "--heartbeat-interval", "0.5", "--heartbeat-file", str(beat)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    # Once (not at every heartbeat), naming the user's file (not its temporary).
    assert p.stderr == (f"obs-exec: cannot write heartbeat file {beat}: No such file or "
                        "directory\n"), p.stderr
    beats = [ln for ln in p.stdout.splitlines() if "CollectorHeartbeat" in ln]
    assert len(beats) >= 2  # the heartbeat events themselves still go out


def test_ring_size_beyond_what_the_kernel_takes_is_a_usage_error():
    for size in ("4096", "3"):
        p = subprocess.run(tool_cmd("obs-exec", "--ring-size", size, "--duration", "1"),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert len(p.stderr.splitlines()) == 1 and "--ring-size" in p.stderr, p.stderr
