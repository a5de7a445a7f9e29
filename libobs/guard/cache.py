"""obs-fileguard's kernel cache of allowed inodes: fanotify ignore masks.

A listed directory puts a filesystem mark on its filesystem, so every open there, by anyone,
waits for the guard's answer (fstat + readlink + a rule lookup + the response, ~37 µs here).
When the guard allows such an open because the file matches no rule, it adds an ignore mask
for ``FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM`` on that inode (``fanotify.ignore`` on the event
fd); later opens and execs of the inode then cost no event at all. What was measured on this
kernel is in libobs/guard/fanotify.py (ignore masks are per group, a directory's ignore mask
does not cover the files in it, the first group's denial ends an open); why it is safe:

1. **Only decisions that hold for everyone.** An entry means "neither this inode nor its path
   matches any rule": a fact about the rules and the file's name, the same whichever process
   opens it. Never cached: an open that matched a rule (denied, or allowed because the opener
   is outside ``--cgroup`` or was gone), the guard's own opens (not checked), an open allowed
   after an error (failing open), and events of the files group (listed files).

2. **Rule changes never leave a listed file unguarded.** The guard has two fanotify groups:
   *files* holds the inode marks of listed files and never an ignore mask; *dirs* holds the
   filesystem marks of listed directories and this cache. An ignore mask silences only its
   own group's marks, so a cached inode that becomes a listed file is denied through its
   inode mark in *files* (and, until that lands, through the emptied *dirs* group). Every
   change of the rules or of the filesystem marks empties the cache (``FAN_MARK_FLUSH`` of
   the *dirs* inode marks, which keeps its filesystem marks) before the new marks are placed.
   Emptying and adding hold one lock, and an entry is added only if the rules it was decided
   with are still the current ones: no decision taken under old rules lands after the flush.
   So throughout a reload every listed file keeps its inode mark and every guarded
   filesystem its filesystem mark; the cost of a reload is one round trip per hot inode.

3. **Renames and links into a listed directory** are not opens: fanotify does not see them,
   and a cached inode moved, hard-linked or bind-mounted beneath a listed directory stays
   cached until the cache is next emptied. What that does and does not open up:
   - a hard link or bind mount leaves the unlisted name in place, through which anyone may
     open the inode anyway (a directory rule is a check on names, with or without the
     cache): nothing is readable that was not already;
   - a rename (``mv`` into the listed directory) removes the unlisted name. The content up to
     then was readable by everyone under that name, and a process that opened it before keeps
     its fd with or without the cache (fanotify checks opens only). What the cache adds is
     that new opens through the listed name, of data written after the move too, succeed
     until the cache is emptied; a cached directory moved in can be listed (the files in it
     are still checked one by one). This is bounded: the cache is emptied every ``TTL``
     seconds (2 s, the bound a deny-file change already has), so a file moved into a listed
     directory is denied within 2 s. ``--cache-size 0`` keeps the immediate check.
   ``FAN_MARK_IGNORED_SURV_MODIFY`` is set: without it the kernel adds no ignore mask to an
   inode that is open for writing -- the answered ``O_WRONLY`` opener included -- and clears
   it at the next write, so files being written would never be cached; what is cached is a
   fact about names, which writes do not change (the rename case above is bounded by ``TTL``).

4. **Bounded.** Each ignore mark pins its inode in kernel memory, and the group has
   ``FAN_UNLIMITED_MARKS``, so ``max_entries`` is the only limit: when it is reached the cache
   is emptied and fills again with what is opened next. ``entries`` counts additions since the
   last flush, an upper bound (the kernel drops a mark unasked when its inode is deleted or its
   filesystem unmounted). The heartbeat carries ``cached``, ``cache_entries`` and
   ``cache_flushes`` next to ``answered`` (every open the cache did not serve).

Honest limits: only repeated opens of the same inode get cheaper. The first open of every
inode, and every open after a flush, is still a round trip, so a workload that opens many
different files once each (a fresh checkout, ``find | xargs cat``) gains nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

TTL = 2.0  # seconds an entry may live: the bound on the rename case (docstring, point 3)
DEFAULT_MAX_ENTRIES = 8192  # ~1 KiB of pinned inode and mark each


class IgnoreTarget(Protocol):
    """The *dirs* group as the cache uses it (libobs.guard.loop.Group)."""

    fd: int

    def ignore(self, event_fd: int, mask: int) -> None: ...

    def flush_inode_marks(self) -> None: ...


class Cache:
    """Allowed inodes, remembered by the kernel as ignore marks in the *dirs* group.

    ``add`` runs on the answering thread, ``reset`` and ``expire`` on the housekeeper."""

    def __init__(self, group: IgnoreTarget, mask: int, max_entries: int = DEFAULT_MAX_ENTRIES,
                 *, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.group = group
        self.fd = group.fd
        self.mask = mask
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.entries = 0  # added since the last flush: an upper bound on marks in place
        self.added = 0
        self.flushes = 0
        self.failed = 0
        self._valid_for: object = None  # the rules whose decisions may be cached
        self._since = clock()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def add(self, event_fd: int, rules: object) -> bool:
        """Remember the inode behind ``event_fd`` as allowed, if ``rules`` (what it was decided
        with) are still current. False if not added; OSError from the kernel propagates."""
        if not self.enabled:
            return False
        with self._lock:
            if rules is not self._valid_for:
                return False
            if self.entries >= self.max_entries:
                self._flush()
            try:
                self.group.ignore(event_fd, self.mask)
            except OSError:
                self.failed += 1
                raise
            self.entries += 1
            self.added += 1
            return True

    def reset(self, rules: object) -> None:
        """The rules or marks changed: empty the cache; only ``rules``' decisions from now."""
        with self._lock:
            self._valid_for = rules
            if self.entries:
                self._flush()

    def expire(self, now: float) -> None:
        """Empty the cache once it is ``ttl`` old (housekeeping tick)."""
        if now - self._since < self.ttl:
            return
        with self._lock:
            if self.entries:
                self._flush()
            self._since = now

    def _flush(self) -> None:
        self.group.flush_inode_marks()
        self.entries = 0
        self.flushes += 1
        self._since = self.clock()

    def stats(self) -> dict[str, int]:
        return {"cached": self.added, "cache_entries": self.entries,
                "cache_flushes": self.flushes}
