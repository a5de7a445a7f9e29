"""Sources obs-merge starts itself (`--run CMD`).

`sudo obs-merge <(obs-net)` cannot work: the process substitution runs as the invoking user,
and sudo closes the descriptors it would be read from. `sudo obs-merge --run obs-net` runs the
observer as obs-merge's own child, with obs-merge's privileges. A command is split into words
as a shell would (shlex) and executed without a shell; its stdout is a pipe obs-merge reads,
its stderr is obs-merge's. When obs-merge stops, children are asked to stop (SIGTERM: obs tools
detach and write what they hold), killed if they do not within `grace` seconds, and always
reaped. If obs-merge itself is killed (SIGKILL), the kernel sends them SIGTERM
(PR_SET_PDEATHSIG): no observer outlives it unseen.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass

STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls it


def _die_with_parent() -> None:
    """Runs in the child between fork and exec (obs-merge has no threads, so this is safe)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(eq=False)
class Child:
    name: str  # the command as given: how its lines and problems are named
    popen: subprocess.Popen[bytes]
    asked: float | None = None  # when we asked it to stop (monotonic): its exit is no failure


def parse_command(text: str) -> list[str]:
    """Shell-like words; ValueError with a one-line reason."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def start(commands: list[str]) -> tuple[list[tuple[Child, int]], list[str]]:
    """Start each command with its stdout on a new pipe: ([(child, read fd)], errors)."""
    started: list[tuple[Child, int]] = []
    errors: list[str] = []
    for text in commands:
        argv = parse_command(text)
        rfd, wfd = os.pipe()
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=wfd,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509
        except OSError as e:
            os.close(rfd)
            errors.append(f"{text}: cannot run: {e.strerror or e}")
            continue
        finally:
            os.close(wfd)
        started.append((Child(text, popen), rfd))
    return started, errors


def ask_to_stop(children: list[Child]) -> None:
    for child in children:
        if child.popen.poll() is None and child.asked is None:
            child.asked = time.monotonic()
            with contextlib.suppress(OSError):
                child.popen.send_signal(signal.SIGTERM)


def reap(children: list[Child], grace: float = STOP_GRACE) -> list[str]:
    """Stop and reap every child, killing those still running `grace` seconds after they
    were asked to stop; the failures to report (exit status, or killed)."""
    ask_to_stop(children)
    problems = []
    for child in children:
        deadline = (child.asked or time.monotonic()) + grace
        try:
            code = child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
            problems.append(f"{child.name}: killed, it did not stop within {grace:g} s")
            continue
        if code != 0 and not (child.asked is not None and code == -signal.SIGTERM):
            how = f"signal {-code}" if code < 0 else f"status {code}"
            problems.append(f"{child.name}: exited with {how}")
    return problems
