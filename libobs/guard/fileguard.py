"""obs-fileguard: whether an open is denied, whether the opener is in scope (``--cgroup``),
and the event a denial becomes; the marks a deny-list needs are libobs/guard/marks.py's.

Marks (libobs/guard/fanotify.py records what was measured on this kernel):

- A listed **file** gets an inode mark for ``FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM``: only opens
  of that inode cost an event, through any name, hard link or bind mount. It is decided by
  inode (device, inode number), so every other name of the file is denied too. Plain opens
  are marked as well as execs, so ``ld.so ./prog`` cannot run a listed binary either.
- A listed **directory** gets a filesystem mark on the filesystem holding it (and on every
  filesystem mounted beneath it), with ``FAN_ONDIR`` so listing it is denied too. Every open
  on those filesystems, by every process, is then a round trip to the guard, decided by the
  resolved path fanotify reports (``Rules.match``: ``PathIndex`` semantics, one dict lookup
  per path component). Directories whose files no rule can match are then remembered in the
  kernel, so that those files cost no event again (libobs/guard/cache.py).
- ``plan()`` turns the rules and what is on disk now into the marks wanted; ``Marks.apply``
  adds what is missing and removes (``FAN_MARK_REMOVE``) what no rule needs any more. It runs
  on every housekeeping tick, so a reload never leaves an unguarded window, and a listed file
  that is replaced (an editor's rename, rm + create) or created later is marked within a tick.
  A listed file stays guarded while its line stays and it has a name anywhere (renamed away,
  another hard link): renames are no opens, fanotify would not see the escape.

Two fanotify groups: *files* for the inode marks of listed files, *dirs* for the filesystem
marks of listed directories and the kernel cache of allowed inodes (libobs/guard/cache.py,
which argues why that cache is safe). An open refused by the first group asked is ended there,
so it is one Denied event whichever groups watch it.

Answering (``Guard.answer``, the one thread that answers -- libobs/guard/loop.py): the guard's
own events are allowed first; every other event is decided by inode, then by name, then by
cgroup (only when a rule matched, so the cgroup lookup is off the common path). Allowed events
of a batch are answered at once; denied ones are enriched from /proc *before* their answer,
while the opener is still blocked and its /proc entry therefore still there (a denied ``cat``
would otherwise exit before it could be looked up). Only denials pay for enrichment.
Everything that path opens is under /proc, which cannot be marked (this kernel refuses
permission-event marks on procfs, inode and filesystem alike).
"""

from __future__ import annotations

import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from libobs import cgroup as cg
from libobs.events import envelope
from libobs.guard import fanotify
from libobs.guard.cache import Cache
from libobs.guard.denyfile import DenyFileWatcher, PathRule, line_errors_text
from libobs.guard.fanotify import Event
from libobs.guard.marks import Key, Marks, Rules, observe, plan, read_mounts
from libobs.identity import Identities, parse_stat
from libobs.kernel.records import Hdr

GUARD = "obs-fileguard"
# O_NONBLOCK: the kernel opens each event's file for us; on a FIFO a blocking open would wait
# for a writer that is itself waiting for our answer (6.18 sends no permission events for
# special files; older kernels may).
EVENT_F_FLAGS = fanotify.EVENT_F_FLAGS | os.O_NONBLOCK
# An unbounded queue: each pending permission event is a blocked thread, so the queue is bounded
# by threads anyway, and an overflowing queue would let opens through unanswered.
INIT_FLAGS = (fanotify.FAN_CLASS_CONTENT | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK
              | fanotify.FAN_UNLIMITED_QUEUE | fanotify.FAN_UNLIMITED_MARKS)

Action = Literal["open", "exec"]


def action_of(mask: int) -> Action:
    return "exec" if mask & fanotify.FAN_OPEN_EXEC_PERM else "open"


def _read(path: str, size: int = 8192) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


class Scope:
    """Is a process in the ``--cgroup`` subtree? Answered from /proc, cached per pid (bounded
    LRU). An entry is tied to the inode of /proc/<pid>, which a reused pid does not share, and
    lives at most ``ttl`` seconds, so a process moved between cgroups is seen within that."""

    def __init__(self, cgroup: str, *, max_entries: int = 4096, ttl: float = 1.0,
                 proc: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup = cgroup
        self.max = max_entries
        self.ttl = ttl
        self.proc = proc
        self.clock = clock
        self._cache: OrderedDict[int, tuple[int, float, bool, str]] = OrderedDict()

    def lookup(self, pid: int) -> tuple[bool, str] | None:
        """(inside, cgroup path) of a live process; None when it is gone."""
        try:
            ino = os.stat(f"{self.proc}/{pid}").st_ino
        except OSError:
            return None
        now = self.clock()
        hit = self._cache.get(pid)
        if hit is not None and hit[0] == ino and now - hit[1] < self.ttl:
            self._cache.move_to_end(pid)
            return hit[2], hit[3]
        data = _read(f"{self.proc}/{pid}/cgroup")
        path = cg.v2_path(data.decode("utf-8", "replace")) if data is not None else None
        if path is None:
            self._cache.pop(pid, None)
            return None
        inside = cg.in_subtree(path, self.cgroup)
        self._cache[pid] = (ino, now, inside, path)
        self._cache.move_to_end(pid)
        if len(self._cache) > self.max:
            self._cache.popitem(last=False)
        return inside, path


# --- the Denied event -----------------------------------------------------------------------


def parse_status_uid(data: bytes) -> int | None:
    """The real uid from /proc/<pid>/status, or None."""
    for line in data.split(b"\n"):
        if line.startswith(b"Uid:"):
            try:
                return int(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


class Enricher:
    """Builds the Denied event, with identity and process facts read from /proc."""

    def __init__(self, host: str, cgroup_root: str | None, *, proc: str = "/proc",
                 identities: Identities | None = None) -> None:
        self.host = host
        self.cgroup_root = cgroup_root
        self.proc = proc
        self.identities = identities or Identities()
        self._ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def denied(self, pid: int, action: Action, target: bytes, rule: PathRule, ts: int,
               cgroup_path: str | None = None) -> dict[str, Any]:
        fields = {"pid": pid, "action": action, "target": target.decode("utf-8", "replace"),
                  "rule": rule.line, "guard": GUARD}
        identity, process = self.facts(pid, cgroup_path)
        return envelope("Denied", fields, ts=ts, host=self.host, identity=identity,
                        process=process)

    def facts(self, pid: int, cgroup_path: str | None = None
              ) -> tuple[dict[str, str | None], dict[str, Any]]:
        """(identity, process) of a live pid; unknown fields null."""
        st = _read(f"{self.proc}/{pid}/stat", 1024)
        parsed = parse_stat(st) if st is not None else None
        status = _read(f"{self.proc}/{pid}/status")
        uid = parse_status_uid(status) if status is not None else None
        if cgroup_path is None:
            data = _read(f"{self.proc}/{pid}/cgroup")
            cgroup_path = cg.v2_path(data.decode("utf-8", "replace")) if data else None
        cgroup_id = (cg.cgroup_id(self.cgroup_root, cgroup_path)
                     if cgroup_path is not None and self.cgroup_root is not None else None)
        if parsed is None or uid is None or cgroup_id is None:
            comm = parsed[0] if parsed else None
            identity = {"agent": comm, "task": str(pid), "session": None}
            return identity, {"pid": pid, "ppid": parsed[1] if parsed else None, "comm": comm,
                              "uid": uid, "cgroup_id": cgroup_id, "container_id": None,
                              "pod_uid": None}
        comm, ppid, pgid, ticks = parsed
        hdr = Hdr(kind=0, pid=pid, tid=pid, ppid=ppid, uid=uid, len=0, pgid=pgid, pad=0, ts=0,
                  cgroup_id=cgroup_id, start_bt=ticks * self._ns_per_tick,
                  comm=comm.encode("utf-8", "replace")[:15])
        return self.identities.of(hdr)


# --- answering ------------------------------------------------------------------------------


class Outbox(Protocol):
    def event(self, ev: dict[str, Any]) -> None: ...

    def error(self, msg: str) -> None: ...


@dataclass
class Counters:
    answered: int = 0
    denied: int = 0
    fail_open: int = 0  # allowed because of an error, a vanished pid or a queue overflow
    vanished: int = 0  # of which: the opener was gone before its cgroup could be read
    cached: int = 0  # allowed, and its directory added to the kernel cache


Pass = Literal["pass"]
PASS: Pass = "pass"  # a rule matched, but the opener is out of scope or gone: allow, never cache


@dataclass(frozen=True)
class Hit:
    rule: PathRule
    path: bytes
    action: Action
    cgroup: str | None


class Guard:
    """Decides and answers batches of permission events (on the answering thread only).

    ``rules`` is replaced whole by the housekeeping thread (``set_rules``); a batch uses one
    snapshot. Events of the ``cache``'s group that match no rule are cached.
    """

    MAX_REPORTED_ERRORS = 20

    def __init__(self, fan: int, outbox: Outbox, enricher: Enricher, scope: Scope | None = None,
                 *, me: int | None = None, cache: Cache | None = None) -> None:
        self.fan = fan
        self.cache = cache
        self.outbox = outbox
        self.enricher = enricher
        self.scope = scope
        self.me = os.getpid() if me is None else me
        self.rules = Rules()
        self._basis: object = None
        self.counters = Counters()
        self._errors = 0
        # readlinkat() on this beats readlink("/proc/self/fd/N"): no walk through /proc/self.
        self._fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd_dir)

    def set_rules(self, rules: Rules, basis: object = None) -> None:
        """New rules from the housekeeper. When they, or ``basis`` (what else cached answers
        depend on: the filesystem marks), differ from the current ones, the cache is emptied
        before anything new is marked."""
        if rules == self.rules and basis == self._basis:
            return
        self.rules, self._basis = rules, basis
        if self.cache is not None:
            self.cache.reset(rules)

    def answer(self, events: list[Event], fan: int | None = None) -> None:
        """Answer a batch read from group ``fan`` (default: ``self.fan``)."""
        fan = self.fan if fan is None else fan
        rules = self.rules
        cache = self.cache if self.cache is not None and fan == self.cache.fd else None
        ts = time.time_ns()
        denied: list[tuple[Event, Hit]] = []
        for ev in events:
            if ev.fd < 0 or not ev.is_perm:
                if ev.mask & fanotify.FAN_Q_OVERFLOW:
                    self.counters.fail_open += 1  # the kernel let those through unasked
                self._respond(fan, ev, True)
                continue
            try:
                hit = PASS if ev.pid == self.me else self.check(ev, rules)
            except Exception as e:  # a bug here must not leave the opener blocked
                self._failed(f"allowed an open after an error: {e!r}")
                hit = PASS
            if isinstance(hit, Hit):
                denied.append((ev, hit))
                continue
            if isinstance(hit, bytes) and cache is not None and not ev.mask & fanotify.FAN_ONDIR:
                self._cache(cache, hit, rules)
            self._respond(fan, ev, True)
        # Allowed openers are already running; the denied ones are still blocked, so their
        # /proc entries are there to read.
        for ev, hit in denied:
            try:
                out: dict[str, Any] | None = self.enricher.denied(
                    ev.pid, hit.action, hit.path, hit.rule, ts, hit.cgroup)
            except Exception as e:
                self._failed(f"could not describe a denial: {e!r}", fail_open=False)
                out = None
            self.counters.denied += 1
            self._respond(fan, ev, False)
            if out is not None:
                self.outbox.event(out)

    def check(self, ev: Event, rules: Rules) -> Hit | Pass | bytes:
        """The rule this event breaks, if the opener is in scope; ``PASS`` when one matched
        but the opener is out of scope or gone; the path when no rule matches (the only
        answer that may be cached)."""
        st = os.fstat(ev.fd)
        path = os.readlink(b"%d" % ev.fd, dir_fd=self._fd_dir)
        rule = rules.match((st.st_dev, st.st_ino), path)
        if rule is None:
            return path
        cgroup = None
        if self.scope is not None:
            found = self.scope.lookup(ev.pid)
            if found is None:  # gone before we could tell: nothing left to protect from
                self.counters.vanished += 1
                self.counters.fail_open += 1
                return PASS
            inside, cgroup = found
            if not inside:
                return PASS
        return Hit(rule, path, action_of(ev.mask), cgroup)

    def _cache(self, cache: Cache, path: bytes, rules: Rules) -> None:
        try:
            self.counters.cached += cache.add(path, rules)
        except OSError as e:  # costs speed, not safety: those files stay round trips
            if e.errno == errno.EINVAL:  # no FAN_MARK_IGNORE before Linux 6.0: stop trying
                cache.max_entries = 0
                self.outbox.error("this kernel cannot cache allowed directories (fanotify "
                                  "FAN_MARK_IGNORE, Linux 6.0): every open is checked")
            elif cache.failed == 1:
                self.outbox.error(f"cannot cache an allowed directory: {e.strerror}; "
                                  "counted in the heartbeat's cache_failed")

    def stats(self) -> dict[str, int]:
        """The heartbeat's obs-fileguard fields."""
        out = {"answered": self.counters.answered, "cached": self.counters.cached}
        if self.cache is not None:
            out |= self.cache.stats()
        return out

    def _respond(self, fan: int, ev: Event, allow: bool) -> None:
        self.counters.answered += ev.fd >= 0
        try:
            fanotify.answer_and_close(fan, ev, allow)
        except OSError as e:
            # ENOENT: the opener was killed while waiting and the kernel forgot the event.
            if e.errno != errno.ENOENT:
                self._failed(str(e), fail_open=False)

    def _failed(self, msg: str, *, fail_open: bool = True) -> None:
        self.counters.fail_open += fail_open
        self._errors += 1
        if self._errors <= self.MAX_REPORTED_ERRORS:
            self.outbox.error(msg)


# --- housekeeping ---------------------------------------------------------------------------


class Reloader:
    """The housekeeping tick: re-read the deny-file when it changed, look at the disk, hand the
    answering thread new rules, then bring the marks in step (rules first: a new mark's first
    event already finds its rule; a removed rule stops denying before its mark goes). New
    rules or filesystem marks empty the kernel cache before any mark changes; the cache also
    expires here (libobs/guard/cache.py).

    Looking at the disk is skipped until ``BUDGET`` times its last cost has passed, so a long
    list cannot keep the housekeeper (and the GIL) busy; a changed deny-file is applied at once.
    """

    BUDGET = 10

    def __init__(self, watcher: DenyFileWatcher[PathRule], rules: list[PathRule], marks: Marks,
                 guard: Guard, report: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watcher = watcher
        self.rules = rules
        self.marks = marks
        self.guard = guard
        self.report = report
        self.clock = clock
        self._resolved: dict[tuple[bytes, Key], bytes] = {}
        self._due = float("-inf")

    def tick(self, now: float) -> None:
        if self.guard.cache is not None:
            self.guard.cache.expire(now)
        update = self.watcher.poll()
        changed = False
        if update is not None:
            if update.error:
                self.report(f"{update.error}; keeping the previous list")
            else:
                for line in line_errors_text(self.watcher.path, update.errors):
                    self.report(line)
                self.rules = update.rules
                self._resolved.clear()
                changed = True
                self.report(f"{self.watcher.path}: {len(self.rules)} rule(s)")
        if not changed and now < self._due:
            return
        start = self.clock()
        seen = observe((r.path for r in self.rules), self._resolved)
        dirs = any(s is not None and s.is_dir for s in seen.values())
        mounts = read_mounts() if dirs or self.marks.filesystems else []
        wanted = plan(self.rules, seen, mounts, self.marks.kept())
        self.guard.set_rules(wanted.rules, wanted.fs_marks)
        for msg in self.marks.apply(wanted, mounts):
            self.report(msg)
        if len(self._resolved) > 4 * len(self.rules) + 64:
            self._resolved.clear()  # entries of replaced files
        self._due = now + self.BUDGET * (self.clock() - start)
