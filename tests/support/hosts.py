"""Temporary /etc/hosts entries for tests (provider hostnames → 127.0.0.x / ::1).

Lines are tagged with a per-test marker and removed afterwards; an exclusive flock on a side
file serialises concurrent test runs editing the same /etc/hosts.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOSTS = Path("/etc/hosts")
LOCK = Path("/run/obs-tests-hosts.lock")


@contextmanager
def _locked() -> Iterator[None]:
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rewrite(keep: list[str]) -> None:
    # /etc/hosts may be a bind mount: rewrite in place rather than replace the inode.
    with open(HOSTS, "r+") as f:
        f.seek(0)
        f.write("".join(keep))
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def mapped(entries: dict[str, str]) -> Iterator[None]:
    """{hostname: address} present in /etc/hosts for the duration of the block."""
    tag = f"# obs-test-{uuid.uuid4().hex[:12]}"
    lines = [f"{addr} {host} {tag}\n" for host, addr in entries.items()]
    with _locked():
        current = HOSTS.read_text()
        if current and not current.endswith("\n"):
            current += "\n"
        _rewrite([current, *lines])
    try:
        yield
    finally:
        with _locked():
            keep = [ln for ln in HOSTS.read_text().splitlines(keepends=True) if tag not in ln]
            _rewrite(keep)
