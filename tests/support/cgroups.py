"""Throwaway cgroup-v2 directories for tests, and a way to start a process inside one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from libobs.kernel.host import cgroup2_root


@contextmanager
def cgroup(prefix: str = "obs-test") -> Iterator[Path]:
    root = cgroup2_root()
    if root is None:
        raise AssertionError("no cgroup v2 hierarchy mounted")
    path = root / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        # Move stragglers out, then remove (rmdir fails while processes remain).
        for _ in range(50):
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    with suppress(OSError):
                        (root / "cgroup.procs").write_text(pid)
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run_in(cg: Path, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run argv inside cgroup cg: the child joins it before exec."""
    def join() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
    return subprocess.run(argv, preexec_fn=join, **kw)


def python_in(cg: Path, code: str, **kw) -> subprocess.CompletedProcess:
    return run_in(cg, [sys.executable, "-c", code], **kw)
