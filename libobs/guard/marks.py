"""obs-fileguard's marks: the rules a deny-file gives (by inode, and by path beneath a listed
directory), the mounts beneath a directory, and the fanotify marks that guard them, kept in
step with what is on disk (plan, then Marks.apply)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from libobs.guard import fanotify
from libobs.guard.denyfile import PathRule

Key = tuple[int, int]  # (st_dev, st_ino)
MASK = fanotify.FAN_OPEN_PERM | fanotify.FAN_OPEN_EXEC_PERM
FS_MASK = MASK | fanotify.FAN_ONDIR  # a listed directory cannot be listed either
_DELETED = b" (deleted)"  # what fd_path appends for an unlinked file


# --- rules and marks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a rule's path is on disk right now (symlinks followed)."""

    resolved: bytes
    dev: int
    ino: int
    is_dir: bool


@dataclass(frozen=True)
class Mount:
    dev: int
    root: bytes  # the part of the filesystem this mount shows
    mountpoint: bytes
    fstype: str


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field_: bytes) -> bytes:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field_)


def parse_mountinfo(data: bytes) -> list[Mount]:
    """/proc/<pid>/mountinfo (proc(5)) → mounts, in order; malformed lines are skipped."""
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = (int(x) for x in fields[2].split(b":"))
            dev = os.makedev(major, minor)
            fstype = fields[sep + 1].decode("utf-8", "replace")
        except (ValueError, IndexError, OverflowError):
            continue
        mounts.append(Mount(dev, _unescape(fields[3]), _unescape(fields[4]), fstype))
    return mounts


def _beneath(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def mounts_beneath(directory: bytes, mounts: Iterable[Mount]) -> list[Mount]:
    """Mounts whose mount point is strictly beneath ``directory`` (component-wise)."""
    return [m for m in mounts if m.mountpoint != directory and _beneath(m.mountpoint, directory)]


@dataclass(frozen=True)
class Rules:
    """What the answering thread decides with; replaced whole, never mutated."""

    inodes: Mapping[Key, PathRule] = field(default_factory=dict)
    names: Mapping[bytes, PathRule] = field(default_factory=dict)  # normalised paths
    parents: frozenset[bytes] = frozenset()  # the directory of every name but directories'

    def may_cache_children(self, directory: bytes) -> bool:
        """Whether "no rule matches" holds for every file directly in ``directory`` (a
        canonical path), whatever its name: neither it nor a directory above it is a rule,
        and no rule names a file directly in it, nor a path that does not exist yet.
        A listed directory in it is no obstacle: opens of directories are never cached."""
        return directory not in self.parents and _by_name(self.names, directory) is None

    def match(self, key: Key, path: bytes) -> PathRule | None:
        """The rule an open of ``path`` (inode ``key``) breaks, if any."""
        rule = self.inodes.get(key)
        if rule is not None or not self.names:
            return rule
        rule = _by_name(self.names, path)
        if rule is None and path.endswith(_DELETED):
            rule = _by_name(self.names, path[: -len(_DELETED)])
        return rule


def _by_name(names: Mapping[bytes, PathRule], path: bytes) -> PathRule | None:
    """``PathIndex.match`` for the paths the kernel reports, which are canonical already
    (absolute, no ``//``, ``.`` or ``..``): one dict lookup per component and no normalising,
    five times cheaper -- this runs for every open on a filesystem-marked filesystem."""
    get = names.get
    while True:
        rule = get(path)
        if rule is not None:
            return rule
        cut = path.rfind(b"/")
        if cut <= 0:
            return None  # "/" itself is never a rule
        path = path[:cut]


@dataclass(frozen=True)
class Plan:
    rules: Rules
    inode_marks: dict[Key, bytes]  # inode → the listed path it is guarded for
    fs_marks: dict[int, bytes]  # st_dev → a path on that filesystem


def plan(rules: Iterable[PathRule], seen: Mapping[bytes, Seen | None],
         mounts: Iterable[Mount] = (), kept: Mapping[Key, bytes] | None = None) -> Plan:
    """The rules to decide with and the marks they need, from what is on disk now.

    Names cover the listed path and, for a symlink, its target (fanotify reports resolved
    paths). A path that does not exist yet is matched by name only and marked once it exists.
    ``kept``: inodes already guarded for a listed path that still have a name somewhere
    (``Marks.kept``); they stay denied while their line stays, so renaming a listed file
    away, or keeping another hard link to it, does not escape the rule.
    """
    mounts = list(mounts)
    rules = list(rules)
    names: dict[bytes, PathRule] = {}
    inodes: dict[Key, PathRule] = {}
    inode_marks: dict[Key, bytes] = {}
    fs_marks: dict[int, bytes] = {}
    for rule in rules:
        names.setdefault(rule.path, rule)
        s = seen.get(rule.path)
        if s is None:
            continue
        names.setdefault(s.resolved, rule)
        if s.is_dir:
            fs_marks.setdefault(s.dev, s.resolved)
            for m in mounts_beneath(s.resolved, mounts):
                fs_marks.setdefault(m.dev, m.mountpoint)
        else:
            inodes.setdefault((s.dev, s.ino), rule)
            inode_marks.setdefault((s.dev, s.ino), rule.path)
    listed_rules: dict[bytes, PathRule] = {}
    for rule in rules:
        listed_rules.setdefault(rule.path, rule)
    for key, listed in (kept or {}).items():
        owner = listed_rules.get(listed)
        if owner is not None:
            inodes.setdefault(key, owner)
            inode_marks.setdefault(key, listed)
    dirs = {name for path, s in seen.items() if s is not None and s.is_dir
            for name in (path, s.resolved)}
    parents = frozenset(parent_of(name) for name in names if name not in dirs)
    return Plan(Rules(inodes, names, parents), inode_marks, fs_marks)


def parent_of(path: bytes) -> bytes:
    """The directory of a canonical absolute path ("/" for "/x")."""
    return path.rpartition(b"/")[0] or b"/"


def observe(paths: Iterable[bytes],
            resolved: dict[tuple[bytes, Key], bytes] | None = None) -> dict[bytes, Seen | None]:
    """stat() each path (following symlinks); None where nothing is there (yet).

    ``resolved`` caches realpath() (one lstat per component) per path and inode, so a long
    list costs one stat per path and tick once nothing changes."""
    cache = {} if resolved is None else resolved
    seen: dict[bytes, Seen | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
            key = (path, (st.st_dev, st.st_ino))
            real = cache.get(key)
            if real is None:
                real = cache[key] = os.path.realpath(path)
        except (OSError, ValueError):
            seen[path] = None
            continue
        seen[path] = Seen(real, st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))
    return seen


def read_mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    try:
        with open(path, "rb") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


class MarkTarget(Protocol):
    """The group fd as the housekeeping thread may use it (libobs.guard.loop.Group)."""

    def mark(self, flags: int, mask: int, path: str) -> None: ...


class Marks:
    """The marks in place, kept in step with a Plan.

    Each target is opened O_PATH (which is no open to fanotify), checked to be the inode or
    filesystem the plan saw, and marked through /proc/self/fd/N: what is marked is what was
    checked. For a listed file that O_PATH fd is kept: it removes the mark later whatever
    names the file has by then, and tells whether the file still has any (``kept``). It holds
    no data open, but like any open fd it keeps that filesystem from being unmounted (lazy
    unmounts work). Filesystem marks hold nothing; they are removed through any path on that
    filesystem, and vanish with it when it is unmounted. They go to ``fs_group`` when given
    (obs-fileguard's *dirs* group, the one with the cache), else to ``group``.
    """

    def __init__(self, group: MarkTarget, fs_group: MarkTarget | None = None) -> None:
        self.group = group
        self.fs_group = group if fs_group is None else fs_group
        self.inodes: dict[Key, tuple[int, bytes]] = {}  # → (O_PATH fd, listed path)
        self.filesystems: dict[int, bytes] = {}
        self._reported: set[str] = set()

    def kept(self) -> dict[Key, bytes]:
        """Guarded inodes that still have a name, with the listed path each is guarded for."""
        out = {}
        for key, (fd, listed) in self.inodes.items():
            try:
                if os.fstat(fd).st_nlink > 0:
                    out[key] = listed
            except OSError:
                pass
        return out

    def apply(self, want: Plan, mounts: Iterable[Mount] = ()) -> list[str]:
        """Add missing marks, remove unneeded ones; messages for failures not reported yet."""
        errors: list[str] = []
        add, remove = fanotify.FAN_MARK_ADD, fanotify.FAN_MARK_REMOVE
        inode = fanotify.FAN_MARK_INODE
        for key, listed in want.inode_marks.items():
            if key not in self.inodes:
                fd = self._open(listed, key, False)
                if fd is not None and self._mark(errors, add | inode, fd, listed):
                    self.inodes[key] = (fd, listed)
                elif fd is not None:
                    os.close(fd)
        for key in [k for k in self.inodes if k not in want.inode_marks]:
            fd, listed = self.inodes.pop(key)
            self._mark(errors, remove | inode, fd, listed)
            os.close(fd)
        for dev, path in want.fs_marks.items():
            if dev not in self.filesystems and self._change_fs(errors, add, path, dev):
                self.filesystems[dev] = path
        for dev in [d for d in self.filesystems if d not in want.fs_marks]:
            # Any path on that filesystem will do; none left means it was unmounted, and its
            # marks went with it.
            paths = [self.filesystems.pop(dev)] + [m.mountpoint for m in mounts if m.dev == dev]
            for path in paths:
                if self._change_fs(errors, remove, path, dev):
                    break
        return errors

    def close(self) -> None:
        for fd, _ in self.inodes.values():
            os.close(fd)
        self.inodes.clear()

    @staticmethod
    def _open(path: bytes, want: Key | int, on_fs: bool) -> int | None:
        """An O_PATH fd on ``path`` if it still is the inode (Key) or filesystem (st_dev) the
        plan saw; None if it is gone or was replaced meanwhile (the next plan will see that)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev if on_fs else (st.st_dev, st.st_ino)) == want:
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def _change_fs(self, errors: list[str], op: int, path: bytes, dev: int) -> bool:
        fd = self._open(path, dev, True)
        if fd is None:
            return False
        try:
            return self._mark(errors, op | fanotify.FAN_MARK_FILESYSTEM, fd, path)
        finally:
            os.close(fd)

    def _mark(self, errors: list[str], flags: int, fd: int, path: bytes) -> bool:
        on_fs = bool(flags & fanotify.FAN_MARK_FILESYSTEM)
        try:
            target = self.fs_group if on_fs else self.group
            target.mark(flags, FS_MASK if on_fs else MASK, f"/proc/self/fd/{fd}")
        except OSError as e:
            if flags & fanotify.FAN_MARK_REMOVE:
                return True  # nothing to remove: either way it is not ours any more
            msg = (f"cannot guard {'directory' if on_fs else 'file'} {os.fsdecode(path)}: "
                   f"{e.strerror}")
            if msg not in self._reported:
                self._reported.add(msg)
                errors.append(msg)
            return False
        return True


# --- cgroup scope ---------------------------------------------------------------------------
