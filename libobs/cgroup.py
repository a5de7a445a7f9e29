"""cgroup v2, in one place: a user's cgroup argument, /proc/<pid>/cgroup, and cgroup id → path.

- ``resolve_dir`` turns a ``--cgroup``/CGROUP argument into a v2 directory. The v2 root means
  "every process on the host": an unset shell variable (``""``), ``.`` or ``/`` must not quietly
  select it, so the root is refused unless the caller passes ``root_ok`` (a tool's explicit flag).
- ``v2_path``/``best_path`` parse /proc/<pid>/cgroup text (pure, total).
- ``CgroupPaths`` maps the kernel's cgroup id (``bpf_get_current_cgroup_id``, the record
  header's ``cgroup_id``) to its path by walking the cgroup-v2 filesystem: on cgroup v2 the id is
  the inode number of the cgroup's directory. Unlike /proc/<pid>/cgroup this still works after
  the process has exited, which most of an agent's tools have by the time their exec is decoded.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

# Arguments that almost always mean "a variable was empty" rather than "the whole host".
_ROOT_SPELLINGS = ("", ".", "/", "./")


class CgroupError(ValueError):
    """A cgroup argument that cannot be used; the message is one line for the user."""


def resolve_dir(arg: str | os.PathLike[str], root: Path | None, *, root_ok: bool = False,
                what: str = "--cgroup", root_hint: str = "") -> Path:
    """A cgroup-v2 directory from a user's argument (absolute, or relative to the v2 mount).

    Refuses: no v2 mount; paths outside it; directories without cgroup.procs; and the v2 root
    itself unless ``root_ok`` (``root_hint`` says how to ask for it, e.g. "pass --whole-host")."""
    text = os.fspath(arg)
    if root is None:
        raise CgroupError("no cgroup-v2 hierarchy is mounted")
    root = root.resolve()
    # Quoted when it could be misread: empty, ".", blanks, control characters.
    plain = text.isprintable() and text.strip() == text and text not in _ROOT_SPELLINGS
    shown = text if plain else repr(text)
    if "\0" in text:
        raise CgroupError(f"{what} {shown}: not a cgroup-v2 directory")
    full = (root / text).resolve()  # an absolute text replaces root
    if full != root and not full.is_relative_to(root):
        raise CgroupError(f"{what} {shown}: not under the cgroup-v2 mount {root}")
    if not (full / "cgroup.procs").is_file():
        raise CgroupError(f"{what} {shown}: not a cgroup-v2 directory (under {root})")
    if full == root and not root_ok:
        hint = f"; {root_hint}" if root_hint else ""
        raise CgroupError(f"{what} {shown} is the cgroup-v2 root, i.e. every process on "
                          f"this host{hint}")
    return full


def relative(directory: Path, root: Path) -> str:
    """A directory under the v2 mount as /proc/<pid>/cgroup writes it ("/a/b", root is "/")."""
    rel = str(directory.resolve().relative_to(root.resolve()))
    return "/" if rel == "." else "/" + rel


def in_subtree(path: str, scope: str) -> bool:
    """Is cgroup ``path`` the cgroup ``scope`` or beneath it (component-wise)?"""
    return scope == "/" or path == scope or path.startswith(scope.rstrip("/") + "/")


# ---- /proc/<pid>/cgroup ---------------------------------------------------------------------
def _entries(text: str) -> list[tuple[str, str]]:
    """(hierarchy id, path) of each well-formed "id:controllers:path" line."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[2]))
    return out


def v2_path(text: str) -> str | None:
    """The cgroup-v2 path (the "0::" line) from /proc/<pid>/cgroup text, else None."""
    for hid, path in _entries(text):
        if hid == "0":
            return path if path.startswith("/") else None
    return None


def best_path(text: str) -> str:
    """The most specific path for identity: the v2 line, else the longest v1 path, else ""."""
    v2 = v2_path(text)
    if v2 is not None:
        return v2
    return max((p for _, p in _entries(text)), key=len, default="")


def read_proc_cgroup(pid: int | str, proc: str = "/proc") -> str | None:
    """The text of /proc/<pid>/cgroup, or None when the process is gone or unreadable."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as f:
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return None


# ---- cgroup id → path -----------------------------------------------------------------------
def cgroup_id(root: Path | str, path: str) -> int | None:
    """The kernel's id of the cgroup at ``path`` (as in /proc/<pid>/cgroup), or None."""
    try:
        return os.stat(f"{root}{path}" if path != "/" else str(root)).st_ino
    except OSError:
        return None


def scan(root: Path | str, limit: int) -> dict[int, str]:
    """{inode: "/relative/path"} of up to ``limit`` cgroup directories under ``root``."""
    found: dict[int, str] = {}
    base = os.fspath(root)
    try:
        found[os.stat(base).st_ino] = "/"
    except OSError:
        return found
    todo = [(base, "")]
    while todo and len(found) < limit:
        path, rel = todo.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    # cgroup directories are real directories; symlinks are never followed.
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    sub = f"{rel}/{entry.name}"
                    try:
                        found[entry.inode()] = sub
                    except OSError:
                        continue
                    todo.append((entry.path, sub))
                    if len(found) >= limit:
                        break
        except OSError:
            continue  # removed while we walked: its processes are gone too
    return found


class CgroupPaths:
    """The cgroup-v2 path behind a kernel cgroup id, read from the cgroup filesystem.

    Known ids are answered from a bounded LRU. The kernel hands out cgroup ids in increasing
    order, so an unknown id above every id of the last scan belongs to a cgroup made since: that
    re-scans the tree (each scan visits at most ``max_scan`` directories), and a cgroup made a
    moment ago is found on its first event. An unknown id below that was absent from the last
    scan: its cgroup was removed (or is not on v2), and it is answered None without a walk. Any id
    still missing after a scan is not looked for again for ``negative_ttl`` seconds, so scans
    stay bounded by the rate at which cgroups are created.
    """

    def __init__(self, root: Path | None, *, max_entries: int = 8192, max_scan: int = 65536,
                 negative_ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.max = max_entries
        self.max_scan = max_scan
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.scans = 0
        self._paths: OrderedDict[int, str] = OrderedDict()
        self._missing: OrderedDict[int, float] = OrderedDict()
        self._newest = -1  # the highest id the last complete scan saw; -1: no scan yet
        self._complete = False

    def path(self, cid: int) -> str | None:
        hit = self._paths.get(cid)
        if hit is not None:
            self._paths.move_to_end(cid)
            return hit
        if self.root is None or cid <= 0:
            return None
        now = self.clock()
        since = self._missing.get(cid)
        if since is not None and now - since < self.negative_ttl:
            return None
        if self._complete and cid <= self._newest and since is None:
            self._remember_missing(cid, now)  # older than the last scan and not in it: gone
            return None
        found = scan(self.root, self.max_scan)
        self.scans += 1
        # "Older than the scan and not in it" proves a removal only if the whole tree was
        # walked and every entry still fits in the cache (else an evicted id would look gone).
        self._complete = len(found) < self.max_scan and len(found) <= self.max
        self._newest = max(found, default=-1)
        hit = found.pop(cid, None)
        for ino, rel in found.items():
            self._put(ino, rel)
        if hit is None:
            self._remember_missing(cid, now)
        else:
            self._put(cid, hit)  # last, so a tree larger than the cache still keeps it
        return hit

    def _put(self, cid: int, rel: str) -> None:
        self._paths[cid] = rel
        self._paths.move_to_end(cid)
        self._missing.pop(cid, None)
        if len(self._paths) > self.max:
            self._paths.popitem(last=False)

    def _remember_missing(self, cid: int, now: float) -> None:
        self._missing[cid] = now
        self._missing.move_to_end(cid)
        if len(self._missing) > self.max:
            self._missing.popitem(last=False)
