"""obs-fileguard's kernel cache of allowed directories: fanotify ignore masks.

A listed directory puts a filesystem mark on its filesystem, so every open there, by anyone,
waits for the guard's answer (fstat + readlink + a rule lookup + the response, ~37 µs here).
When the guard allows the open of a file because no rule matches it, and no rule could match
*any* file directly in its directory (``Rules.may_cache_children``: the directory is not
listed nor beneath a listed one, and no listed file, nor listed path that does not exist yet,
is directly in it; a listed directory in it is no obstacle), it adds an ignore mask
for ``FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM`` on the direct children of that directory
(``fanotify.ignore_children``); later opens and execs of any file in it cost no event at all.
Opens of directories are never cached, nor are files in sub-directories (their own directory
is). What was measured on this kernel is in libobs/guard/fanotify.py (ignore masks are per
group; a directory's children-ignore covers its direct children only; the first group's
denial ends an open). Why this is safe:

1. **Only decisions that hold for everyone.** An entry means "no rule matches this directory,
   a directory above it, or any file directly in it": a fact about the rules and names, the
   same whichever process opens. A listed directory directly in it stays guarded: opening it
   is a directory event, never silenced, and the files beneath it are children of the listed
   directory, which is never cached. Should a listed directory be replaced by a file, or a
   listed path that did not exist appear as a file in a cached directory, it is guarded from
   the next housekeeping tick on (the rules change, the cache is emptied), as a listed file
   created later always was. Never cached: an open that matched a rule (denied, or allowed
   because the opener is outside ``--cgroup`` or was gone), the guard's own opens (not
   checked), an open allowed after an error (failing open), an unlinked file, and anything
   the *files* group asked about.

2. **Rule changes never leave a listed file unguarded.** The guard has two fanotify groups:
   *files* holds the inode marks of listed files and never an ignore mask; *dirs* holds the
   filesystem marks of listed directories and this cache. An ignore mask silences only its
   own group's marks, so a listed file linked into a cached directory is still denied through
   its inode mark in *files*. Every change of the rules or of the filesystem marks empties the
   cache (``FAN_MARK_FLUSH`` of the *dirs* inode marks, which keeps its filesystem marks)
   before new marks are placed. Emptying and adding hold one lock, and an entry is added only
   if the rules it was decided with are still the current ones, so no decision taken under
   old rules lands after the flush. Throughout a reload every listed file keeps its inode mark
   and every guarded filesystem its filesystem mark; a reload costs one round trip per hot
   directory.

3. **Renames, links and bind mounts into a listed directory** are not opens; fanotify does
   not see them. Because the cache is on directories, not files:
   - a file renamed or hard-linked from a cached directory into a listed one is no longer a
     child of the cached directory through its new name: its next open there is an event,
     and it is denied at once, as without the cache;
   - a whole cached directory renamed into a listed directory keeps its mark: the files
     directly in it can be opened through the listed path until the cache is next emptied
     (listing the directory itself, and anything deeper, is still denied). The files were
     readable by everyone under the old name until the move, and a process that opened one
     before keeps its fd with or without the cache (fanotify checks opens only); what the
     cache adds is a bounded delay: it is emptied every ``TTL`` seconds (2 s, the bound a
     deny-file change already has), so a directory moved in is fully denied within 2 s;
   - a directory that is also reachable under an unlisted name (bind-mounted beneath a listed
     directory, or the other way round) is cached through that name: while it is cached, its
     files are openable through the listed path too. The same files are open
     to everyone under the unlisted name anyway (a directory rule checks names, with or
     without the cache), so nothing becomes readable that was not.
   ``--cache-size 0`` keeps the immediate check everywhere. The directory is marked through
   an ``O_PATH | O_NOFOLLOW`` fd whose resolved path is checked to be the one decided on, so
   a symlink swapped in between the answer and the mark cannot point the mark at a listed
   directory.

4. **Bounded.** Each ignore mark pins its directory's inode in kernel memory, and the group
   has ``FAN_UNLIMITED_MARKS``, so ``max_entries`` is the only limit: when it is reached the
   cache is emptied and fills again with what is opened next. ``entries`` counts directories
   marked since the last flush, an upper bound (the kernel drops a mark unasked when its
   directory is removed or its filesystem unmounted). The heartbeat carries ``cached``,
   ``cache_entries``, ``cache_flushes`` and ``cache_failed`` next to ``answered`` (every open
   the cache did not serve).

A directory is marked at its second allowed open within ``TTL``, not its first: a mark costs
the answer a few system calls, which a directory whose files are opened once each, or rarely,
would pay for nothing.

Honest limits: the first two opens in every directory, and again after each emptying (every
2 s, or a rule change), and every directory open (``ls``, ``find``) are still round trips;
directories that hold a listed file are never cached; a workload that opens one file each in
many directories gains nothing (measured: tests/bench/bench_fileguard.py, cold rows).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from libobs.guard.marks import Rules, parent_of

TTL = 2.0  # seconds an entry may live: the bound on the directory-rename case (point 3)
DEFAULT_MAX_ENTRIES = 8192  # about 1 KiB of pinned inode and mark each
_DELETED = b" (deleted)"


class IgnoreTarget(Protocol):
    """The *dirs* group as the cache uses it (libobs.guard.loop.Group)."""

    fd: int

    def ignore_children(self, dir_fd: int, mask: int) -> None: ...

    def flush_inode_marks(self) -> None: ...


class Cache:
    """Allowed directories, remembered by the kernel as ignore marks in the *dirs* group.

    ``add`` runs on the answering thread, ``reset`` and ``expire`` on the housekeeper."""

    def __init__(self, group: IgnoreTarget, mask: int, max_entries: int = DEFAULT_MAX_ENTRIES,
                 *, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.group = group
        self.fd = group.fd
        self.mask = mask
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.added = 0
        self.flushes = 0
        self.failed = 0
        self._dirs: set[bytes] = set()  # marked since the last flush
        self._once: set[bytes] = set()  # allowed once this TTL: marked at the second time
        self._once_stale = False  # set by expire(); the answerer, who owns _once, clears it
        self._valid_for: Rules | None = None  # the rules whose decisions may be cached
        self._since = clock()
        self._lock = threading.Lock()

    @property
    def entries(self) -> int:
        return len(self._dirs)

    def add(self, path: bytes, rules: Rules) -> bool:
        """``path`` (as the kernel resolved it) was allowed under ``rules``, no rule matching:
        cache its directory if no rule can match anything in it and ``rules`` are still
        current. False if nothing was added; OSError (counted) when the kernel refuses."""
        directory = parent_of(path)
        if self.max_entries <= 0 or directory in self._dirs:
            return False
        if self._once_stale:
            self._once_stale = False
            self._once.clear()
        if directory not in self._once:  # one file opened once in a directory is common:
            if len(self._once) >= 4 * self.max_entries:  # it would pay for a mark for nothing
                self._once.clear()
            self._once.add(directory)
            return False
        if path.endswith(_DELETED) or not rules.may_cache_children(directory):
            return False
        with self._lock:
            if rules is not self._valid_for or directory in self._dirs:
                return False
            if len(self._dirs) >= self.max_entries:
                self._flush()
            try:
                if not self._mark(directory):
                    return False
            except OSError:
                self.failed += 1
                raise
            self._dirs.add(directory)
            self.added += 1
            return True

    def _mark(self, directory: bytes) -> bool:
        """Mark the directory now at ``directory``, reached without following a symlink at
        the end and checked to resolve to that very path (point 3 of the docstring)."""
        try:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False  # gone or replaced meanwhile: nothing to cache
        try:
            if os.readlink(f"/proc/self/fd/{fd}".encode()) != directory:
                return False  # reached through a symlink swapped in above it
            self.group.ignore_children(fd, self.mask)
            return True
        finally:
            os.close(fd)

    def reset(self, rules: Rules) -> None:
        """The rules or marks changed: empty the cache; only ``rules``' decisions from now."""
        with self._lock:
            self._valid_for = rules
            if self._dirs:
                self._flush()

    def expire(self, now: float) -> None:
        """Empty the cache once it is ``ttl`` old (housekeeping tick)."""
        if now - self._since < self.ttl:
            return
        self._once_stale = True
        with self._lock:
            if self._dirs:
                self._flush()
            self._since = now

    def _flush(self) -> None:
        self.group.flush_inode_marks()
        self._dirs.clear()
        self.flushes += 1
        self._since = self.clock()

    def stats(self) -> dict[str, int]:
        return {"cache_entries": self.entries, "cache_flushes": self.flushes,
                "cache_failed": self.failed}
