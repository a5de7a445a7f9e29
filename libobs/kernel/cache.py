"""Start-up work kept between runs under /var/cache/obs, used only when only root can write it.

What is cached steers what runs in the kernel (struct offsets become -D constants), so a cache
file is read only when it and every directory above it are owned by root and writable by no one
else; otherwise it is ignored, and said so once on stderr. Entries are named by a hash of
everything they were computed from: any change to the inputs is a miss, never a stale hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("OBS_CACHE_DIR", "/var/cache/obs"))
_warned: set[str] = set()


def _warn(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"obs: {msg}", file=sys.stderr, flush=True)


def root_only(path: Path) -> str | None:
    """Why `path` (and every directory above it) could be written by someone other than root,
    or None when only root can write it."""
    p = path
    while True:
        try:
            st = os.lstat(p)
        except OSError as e:
            return f"{p}: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != 0:
            return f"{p} is not owned by root"
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (sticky_dir and p != path):
            return f"{p} is writable by group or others"
        if p.parent == p:
            return None
        p = p.parent


def key(*parts: Any) -> str:
    """A cache entry's name: the hash of everything it depends on."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def load_json(kind: str, name: str) -> Any | None:
    """A cached value, or None (absent, unreadable, or not root-only: then said on stderr)."""
    path = ROOT / kind / f"{name}.json"
    if not path.exists():
        return None
    why = root_only(path)
    if why:
        _warn(f"ignoring the start-up cache: {why}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _warn(f"ignoring a bad start-up cache entry {path}: {e}")
        return None


def store_json(kind: str, name: str, value: Any, keep: int | None = None) -> None:
    """Write an entry (root only, atomically); a cache that cannot be written is no error.
    With `keep`, only the `keep` newest entries of this kind stay (keys that change with
    options, a --pid for example, would otherwise pile up)."""
    if os.geteuid() != 0:
        return
    d = ROOT / kind
    tmp = d / f".{name}.{os.getpid()}.tmp"
    try:
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        if root_only(d):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, d / f"{name}.json")
        if keep is not None:
            _prune(d, keep)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _warn(f"cannot write the start-up cache under {d}: {e.strerror}")


def _prune(d: Path, keep: int) -> None:
    entries = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def touch(kind: str, name: str) -> None:
    """Mark an entry as just used (pruning drops the least recently used first)."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.utime(ROOT / kind / f"{name}.json")


def warn(msg: str) -> None:
    """One line on stderr about the cache, said once per process."""
    _warn(msg)


def cached_json(kind: str, name: str, compute: Callable[[], Any]) -> Any:
    hit = load_json(kind, name)
    if hit is not None:
        return hit
    value = compute()
    store_json(kind, name, value)
    return value
