"""Run obs-* tools as real subprocesses in tests: start, wait until every probe is attached
(the tool writes its --heartbeat-file once attached), stop with a signal, parse NDJSON."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support import contract

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"


def tool_module(name: str) -> str:
    """obs-exec → tools.obs_exec"""
    return "tools." + name.replace("-", "_")


def tool_cmd(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", tool_module(name), *args]


def unmeasured_env() -> dict[str, str]:
    """os.environ without coverage's subprocess hook (`nox -s tests` measures every Python
    child): for a watched workload whose every file write a test checks, since a measured one
    would also write its coverage data file."""
    return {k: v for k, v in os.environ.items()
            if k not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")}


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    stopped: bool = False
    status: int | None = None
    # of_kind/wait_events see only events from this wall-clock ns on (see fresh_events)
    since_ns: int = 0
    _events: list[dict[str, Any]] = field(default_factory=list)  # parsed so far
    _parsed: int = 0                                                # bytes of out_path parsed

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if not self.stopped:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            self.status = self.proc.wait(timeout=timeout)
            self.stopped = True
        assert self.status is not None
        return self.status

    def stdout_lines(self) -> list[bytes]:
        """Whole lines only: the tool may be mid-write of the last one."""
        data = self.out_path.read_bytes()
        data = data[:data.rfind(b"\n") + 1]
        return [ln for ln in data.splitlines() if ln.strip()]

    def events(self) -> list[dict[str, Any]]:
        """Every NDJSON line; each must parse and match docs/events.md. Parsed once: a tool
        watching the whole host of a shared machine can write millions of lines while a test
        polls, and reparsing them all on every poll outran the test's timeout."""
        with open(self.out_path, "rb") as f:
            f.seek(self._parsed)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]  # whole lines only: the tool may be mid-write
        for ln in data.splitlines():
            if ln.strip():
                ev = orjson.loads(ln)
                contract.load().check_event(ev)
                if ev["ts"] >= self.since_ns:
                    self._events.append(ev)
        self._parsed += len(data)
        return list(self._events)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e["event"][kind] | {"_env": e} for e in self.events() if kind in e["event"]]

    def fresh_events(self) -> None:
        """From now on, events, of_kind and wait_events leave out earlier events (and memory
        stops holding them). A tool watching the whole host for a module's tests sees pids
        come round again (pid_max is 32768 on a small machine, and a shared one cycles through
        them in minutes): an earlier test's, or another program's, process with the same pid
        must not pass for this test's."""
        self.since_ns = time.time_ns()
        self.events()  # parse what is there, and keep only what can still match
        self._events = [e for e in self._events if e["ts"] >= self.since_ns]

    def wait_events(self, kind: str, pred: Any = lambda f: True, count: int = 1,
                    timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until `count` events of `kind` satisfy pred(fields); return all matches.
        Fields carry the envelope under "_env"."""
        def found() -> list[dict[str, Any]] | None:
            hits = [f for f in self.of_kind(kind) if pred(f)]
            return hits if len(hits) >= count else None
        try:
            return wait_for(found, timeout, f"{count} {kind} event(s)")  # type: ignore[no-any-return]
        except contract.ContractError:
            raise  # a bad event is not a missing one
        except AssertionError:
            raise AssertionError(f"no {kind} matching; stderr: {self.stderr()[-2000:]}") from None


def wait_for(pred: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running(name: str, *args: str, ready_timeout: float = 60,
            env: dict[str, str] | None = None) -> Iterator[Running]:
    """Start tools/<name> with --format json and a heartbeat file; yield once attached."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    hb = tmp / "heartbeat.json"
    out, errf = tmp / "out.ndjson", tmp / "err.txt"
    with open(out, "wb") as o, open(errf, "wb") as e:
        proc = subprocess.Popen(
            tool_cmd(name, "--format", "json", "--heartbeat-file", str(hb), *args),
            stdout=o, stderr=e, env={**os.environ, **(env or {})})
    r = Running(proc, out, errf)
    try:
        deadline = time.monotonic() + ready_timeout
        while not hb.exists():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode} before attaching: "
                                     f"{r.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not attach within {ready_timeout}s: {r.stderr()}")
            time.sleep(0.02)
        yield r
    finally:
        if proc.poll() is None:
            r.stop()
