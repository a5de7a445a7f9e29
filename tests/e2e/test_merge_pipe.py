"""obs-merge as a real process, on real pipes, FIFOs and files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.tools import tool_cmd

REPO = Path(__file__).parents[2]
TOOL = tool_cmd("obs-merge")
FIXTURES = REPO / "tests" / "fixtures"
SESSION = "4100@8123456"


def parse(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines()]


def feed_fifo(path: Path, data: bytes) -> threading.Thread:
    def run() -> None:
        with open(path, "wb") as f:  # blocks until obs-merge opens the FIFO
            f.write(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_two_fifos_two_files_and_stdin_merge_into_one_ordered_stream(tmp_path: Path) -> None:
    fifos = [tmp_path / "exec.fifo", tmp_path / "net.fifo"]
    for f in fifos:
        os.mkfifo(f)
    proc = subprocess.Popen(
        [*TOOL, "--format", "json", str(fifos[0]), str(fifos[1]),
         str(FIXTURES / "agent_ssl.ndjson"), str(FIXTURES / "agent_enforce.ndjson"), "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writers = [feed_fifo(fifos[0], (FIXTURES / "agent_exec.ndjson").read_bytes()),
               feed_fifo(fifos[1], (FIXTURES / "agent_net.ndjson").read_bytes())]
    out, err = proc.communicate((FIXTURES / "agent_llm.ndjson").read_bytes(), timeout=60)
    for w in writers:
        w.join(5)
    assert proc.returncode == 0 and err == b""
    events = parse(out)
    assert len(events) == 43
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_kind.setdefault(next(iter(e["event"])), []).append(e)
    git = [e for e in by_kind["ToolExec"] if e["event"]["ToolExec"]["comm"] == "git"]
    assert git[0]["identity"] == {"agent": "python3", "task": "4120", "session": SESSION}
    first_exec = by_kind["ToolExec"][0]  # the agent's own, 0.2 s before its first LLM egress
    assert first_exec["identity"]["session"] == SESSION
    assert all(e["event"]["LlmCall"]["model"] == "claude-sonnet-4-5-20250929"
               for e in by_kind["LlmCall"])
    assert [e["event"]["Egress"]["hostname"] for e in by_kind["Egress"]] == [
        "api.anthropic.com", "github.com", "pypi.org"]
    logrotate = [e for e in events if e.get("process", {}).get("comm") == "logrotate"]
    assert {e["identity"]["session"] for e in logrotate} == {"5200@8124520"}  # not the agent's


def test_process_substitution_and_overlapping_sources_are_deduplicated() -> None:
    exec_ = FIXTURES / "agent_exec.ndjson"
    script = f'"$@" <(cat {exec_}) <(cat {exec_}) {exec_}'
    res = subprocess.run(["bash", "-c", script, "bash", *TOOL, "--format", "json"],
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr == b""
    assert len(parse(res.stdout)) == 24


def many_events(path: Path, n: int) -> Path:
    ev = orjson.loads((FIXTURES / "agent_exec.ndjson").read_bytes().splitlines()[1])
    with path.open("wb") as f:
        for i in range(n):
            ev["ts"] += 1000
            ev["event"]["FileAccess"]["path"] = f"/tmp/f{i}"
            f.write(orjson.dumps(ev) + b"\n")
    return path


def test_head_closing_the_pipe_exits_quietly_with_status_0(tmp_path: Path) -> None:
    big = many_events(tmp_path / "big.ndjson", 20_000)
    merge = subprocess.Popen([*TOOL, str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=merge.stdout, stdout=subprocess.PIPE)
    assert merge.stdout is not None and merge.stderr is not None
    merge.stdout.close()
    first, _ = head.communicate(timeout=60)
    err = merge.stderr.read()
    assert merge.wait(timeout=60) == 0
    assert err == b""
    assert orjson.loads(first)["event"]["FileAccess"]["path"] == "/tmp/f0"


def test_a_slow_reader_slows_obs_merge_down_and_loses_nothing(tmp_path: Path) -> None:
    # More output than the sink would buffer (16 MiB) while nobody reads it.
    big = many_events(tmp_path / "big.ndjson", 45_000)
    proc = subprocess.Popen([*TOOL, "--format", "json", str(big)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""
    assert out.count(b"\n") == 45_000


def test_bad_lines_are_reported_with_source_and_line_and_skipped() -> None:
    res = subprocess.run([*TOOL, "--format", "json", "-"], capture_output=True, timeout=60,
                         input=(FIXTURES / "bad_lines.ndjson").read_bytes())
    assert res.returncode == 0
    assert res.stderr.decode().splitlines() == [
        "obs-merge: <stdin>:2: not JSON (unexpected end of data)",
        "obs-merge: <stdin>:3: not a JSON object (list)",
        "obs-merge: <stdin>:4: unknown event kind 'GpuKernel' (passed through)",
        "obs-merge: <stdin>:5: missing ts",
    ]
    kinds = [next(iter(e["event"])) for e in parse(res.stdout)]
    assert kinds == ["Dns", "GpuKernel", "FileDelete"]


def test_a_missing_source_does_not_stop_the_others_but_sets_the_status(tmp_path: Path) -> None:
    res = subprocess.run([*TOOL, "--format", "json", str(tmp_path / "absent.ndjson"),
                          str(FIXTURES / "agent_llm.ndjson")], capture_output=True, timeout=60)
    assert res.returncode == 1
    assert len(parse(res.stdout)) == 4
    assert res.stderr.decode() == (
        f"obs-merge: {tmp_path / 'absent.ndjson'}: cannot open: No such file or directory\n")


def test_summary_only_json_is_one_object() -> None:
    names = ["agent_exec", "agent_net", "agent_llm", "agent_ssl", "agent_enforce"]
    res = subprocess.run([*TOOL, "--summary-only", "--format", "json",
                          *(str(FIXTURES / f"{n}.ndjson") for n in names)],
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr == b""
    (obj,) = parse(res.stdout)
    (session,) = obj["summary"]["sessions"]
    assert session["session"] == SESSION
    assert obj["summary"]["stream"]["events_in"] == 43
    assert obj["summary"]["stream"]["joined_llmcall"] == 3


def test_summary_table_follows_the_stream() -> None:
    res = subprocess.run([*TOOL, "--summary", "--format", "human",
                          str(FIXTURES / "agent_exec.ndjson"), str(FIXTURES / "agent_llm.ndjson")],
                         capture_output=True, timeout=60)
    assert res.returncode == 0
    lines = res.stdout.decode().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("obs-merge summary:")))
    assert start == 28  # 28 event lines, then the summary
    assert any(line.startswith(f"session {SESSION}") for line in lines[start:])


def test_sigusr1_writes_the_summary_while_running_and_sigterm_ends_cleanly(
        tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*TOOL, "--summary", "--format", "json", "--window", "0.2",
                             str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    with open(fifo, "wb") as w:
        w.write((FIXTURES / "agent_llm.ndjson").read_bytes())
        w.flush()
        seen = [proc.stdout.readline() for _ in range(4)]  # released after the idle window
        assert all(b'"LlmCall"' in s or b'"CollectorHeartbeat"' in s for s in seen)
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
        summary = orjson.loads(proc.stdout.readline())
        assert summary["summary"]["sessions"][0]["session"] == SESSION
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b""
    assert b'"summary"' in out  # the final summary on the way out


def test_follow_picks_up_appended_events(tmp_path: Path) -> None:
    log = tmp_path / "exec.ndjson"
    lines = (FIXTURES / "agent_exec.ndjson").read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3]))
    proc = subprocess.Popen([*TOOL, "--follow", "--format", "json", "--window", "0.2", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OBS_MERGE_GRACE": "0"})
    assert proc.stdout is not None
    got = [proc.stdout.readline() for _ in range(3)]
    with log.open("ab") as f:
        f.write(b"".join(lines[3:6]))
    got += [proc.stdout.readline() for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == b""
    assert [orjson.loads(g)["ts"] for g in got] == [orjson.loads(x)["ts"] for x in lines[:6]]


def shell(script: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """obs-merge under a shell's redirections; $M is the command."""
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=timeout,
                          env={**os.environ, "M": " ".join(TOOL)}, cwd=REPO)


def test_every_source_failing_is_said_not_silent() -> None:
    res = shell("$M /nonexistent")
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"obs-merge: /nonexistent: cannot open: No such file or directory\n"
    res = shell("$M <&-")
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"obs-merge: <stdin>: read error: Bad file descriptor\n"


def test_a_source_that_cannot_be_read_is_said_and_the_others_still_merged() -> None:
    """A directory opens but cannot be read (EISDIR): said with its name, exit 1, and every
    line of the good source still comes out."""
    res = shell("$M --format json tests /dev/fd/3 3<tests/fixtures/agent_exec.ndjson")
    assert res.returncode == 1
    assert res.stderr == b"obs-merge: tests: read error: Is a directory\n"
    fixture = (REPO / "tests/fixtures/agent_exec.ndjson").read_bytes().splitlines()
    assert len(parse(res.stdout)) == len([ln for ln in fixture if ln.strip()])


def test_a_closed_stderr_never_puts_diagnostics_into_the_stream() -> None:
    """fd 2 closed: the first file opened would take its number, and Python prints to stdout
    when sys.stderr is None. Diagnostics are discarded instead; the stream stays NDJSON."""
    res = shell("$M --format json tests/fixtures/bad_lines.ndjson /nonexistent 2>&-")
    assert res.returncode == 1
    assert [next(iter(e["event"])) for e in parse(res.stdout)] == ["Dns", "GpuKernel", "FileDelete"]


def test_a_full_disk_on_stdout_is_said_once_and_exits_1() -> None:
    res = shell("$M --format json tests/fixtures/agent_exec.ndjson >/dev/full")
    assert res.returncode == 1 and b"Traceback" not in res.stderr
    assert res.stderr.decode().splitlines() == [
        "obs-merge: cannot write output: No space left on device; stopping"]
    res = shell("$M --format json tests/fixtures/agent_exec.ndjson >&-")
    assert res.returncode == 1
    assert res.stderr == b"obs-merge: cannot write output: Bad file descriptor; stopping\n"


def test_run_starts_sources_merges_them_and_reports_failures(tmp_path: Path) -> None:
    """`--run CMD`: obs-merge's own children (under sudo: with its privileges), split like shell
    words, no shell; their stdout merged in order; a failing one reported, status 1."""
    res = subprocess.run([*TOOL, "--format", "json",
                          "--run", f"cat '{FIXTURES / 'agent_exec.ndjson'}'",
                          "--run", f"cat {FIXTURES / 'agent_net.ndjson'}",
                          "--run", "sh -c 'echo oops >&2; exit 3'",
                          "--run", "/nonexistent/obs-x --flag",
                          "--run", "echo 'not; a | shell' > x"],
                         capture_output=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    stamps = [e["ts"] for e in parse(res.stdout)]
    assert len(stamps) == 24 + 7 and stamps == sorted(stamps)
    assert not (tmp_path / "x").exists()  # no shell: ">" was an argument of echo
    err = res.stderr.decode().splitlines()
    assert sorted(err) == sorted([
        "oops",
        "obs-merge: /nonexistent/obs-x --flag: cannot run: No such file or directory",
        "obs-merge: echo 'not; a | shell' > x:1: not JSON (invalid literal, expected 'null')",
        "obs-merge: sh -c 'echo oops >&2; exit 3': exited with status 3"]), err


def test_run_children_are_stopped_and_reaped_at_duration(tmp_path: Path) -> None:
    """--duration stops obs-merge like SIGTERM: a child that ignores SIGTERM is killed after the
    grace, one that honours it is reaped; what they wrote first is merged; status 0."""
    pids, event = tmp_path / "pids", tmp_path / "event.ndjson"
    event.write_bytes(orjson.dumps({"ts": 5, "event": {"FileDelete": {"pid": 1, "path": "/x"}}}))
    polite = f"sh -c 'echo $$ >> {pids}; cat {event}; echo; exec sleep 1000'"
    stubborn = f"sh -c 'trap \"\" TERM; echo $$ >> {pids}; while :; do sleep 0.1; done'"
    t0 = time.monotonic()
    res = subprocess.run([*TOOL, "--format", "json", "--duration", "1",
                          "--run", polite, "--run", stubborn],
                         capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert [e["ts"] for e in parse(res.stdout)] == [5]
    assert res.returncode == 1 and took < 15, (res.stderr, took)
    assert res.stderr.decode().splitlines() == [
        f"obs-merge: {stubborn}: killed, it did not stop within 5 s"]
    for pid in pids.read_text().split():
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} left behind"


def test_run_children_die_with_a_killed_obs_merge(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    proc = subprocess.Popen([*TOOL, "--run", f"sh -c 'echo $$ > {pids}; exec sleep 1000'"],
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pids.read_text())
    alive = False
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Reaped by init once gone; a zombie would still have /proc/<pid>, so check its state.
    stat = Path(f"/proc/{child}/stat")
    with contextlib.suppress(OSError):
        alive = stat.exists() and stat.read_text().split(") ")[1][0] != "Z"
        if alive:
            os.kill(child, signal.SIGKILL)  # ours, still running: not left behind by a failure
    assert not alive, "the child outlived obs-merge"


def test_duration_stops_a_source_that_never_ends() -> None:
    proc = subprocess.Popen([*TOOL, "--format", "json", "--duration", "1", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write((FIXTURES / "agent_llm.ndjson").read_bytes())
    proc.stdin.flush()  # and never closed: only --duration ends this run
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        proc.stdin.close()
    assert proc.stdout is not None and proc.stderr is not None
    assert len(parse(proc.stdout.read())) == 4 and proc.stderr.read() == b""


@pytest.mark.parametrize("args", [["--bogus"], ["--window", "-1"], ["--agent", "user:root"],
                                  ["-", "-"], ["--format", "xml"], ["--run", "'unbalanced"],
                                  ["--run", ""]])
def test_bad_usage_is_one_line_and_status_2(args: list[str]) -> None:
    res = subprocess.run([*TOOL, *args], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and res.stdout == b""
    err = res.stderr.decode()
    assert err.startswith("obs-merge: ") and "error:" not in err and err.count("\n") == 1


def test_env_var_sets_the_window() -> None:
    res = subprocess.run([*TOOL, "-"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**os.environ, "OBS_MERGE_WINDOW": "-3"})
    assert res.returncode == 2 and b"OBS_MERGE_WINDOW" in res.stderr


def test_run_a_real_observer_and_stop_it_with_obs_merge(tmp_path: Path) -> None:
    """`obs-merge --run 'obs-exec ...'`: the observer is obs-merge's child (so `sudo obs-merge`
    runs it as root); SIGTERM to obs-merge stops it, what it wrote is merged, nothing is left."""
    beat = tmp_path / "beat.json"
    observer = " ".join([*tool_cmd("obs-exec"), "--comm", "obsmergemark",
                         "--heartbeat-file", str(beat)])
    proc = subprocess.Popen([*TOOL, "--format", "json", "--window", "0.2", "--run", observer],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not beat.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert beat.exists(), "obs-exec never attached"
        mark = tmp_path / "obsmergemark"
        mark.symlink_to("/bin/true")
        subprocess.run([str(mark)], check=True)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    execs = [e for e in parse(out) if "ToolExec" in e["event"]]
    assert [e["event"]["ToolExec"]["comm"] for e in execs] == ["obsmergemark"]
    left = subprocess.run(["pgrep", "-f", str(beat)], capture_output=True, text=True).stdout
    assert left == "", f"obs-exec left running: {left}"
