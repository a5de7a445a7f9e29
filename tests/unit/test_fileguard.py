"""obs-fileguard's decisions without a kernel: plans, matching, cgroup scope, /proc parsing,
and Guard.answer with a pipe standing in for the fanotify group (responses are 8-byte
records written to it)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.guard import fanotify
from libobs.guard.cache import Cache
from libobs.guard.denyfile import DenyFileWatcher, PathRule, parse_paths
from libobs.guard.fanotify import FAN_ALLOW, FAN_DENY, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM, Event
from libobs.guard.fileguard import (
    Enricher,
    Guard,
    Reloader,
    Scope,
    action_of,
    parse_stat,
    parse_status_uid,
)
from libobs.guard.marks import (
    FS_MASK,
    MASK,
    Marks,
    Mount,
    Rules,
    Seen,
    mounts_beneath,
    observe,
    parse_mountinfo,
    plan,
)

ME = os.getpid()


def rules_of(text: str) -> list[PathRule]:
    rules, errors = parse_paths(text)
    assert errors == []
    return rules


# --- small pure pieces ----------------------------------------------------------------------


def test_action_of_mask():
    assert action_of(FAN_OPEN_EXEC_PERM) == "exec"
    assert action_of(FAN_OPEN_PERM) == "open"


MOUNTINFO = (
    b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"35 22 0:32 / /srv/data rw shared:5 - xfs /dev/vdb rw\n"
    b"36 22 0:33 /sub /mnt/with\\040space rw master:1 shared:9 - tmpfs tmp rw\n"
    b"garbage line\n"
    b"37 22 x:y / /bad rw - ext4 /dev/x rw\n"
    b"\n"
)


def test_parse_mountinfo_fields_escapes_and_bad_lines():
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts == [
        Mount(os.makedev(254, 0), b"/", b"/", "ext4"),
        Mount(os.makedev(0, 32), b"/", b"/srv/data", "xfs"),
        Mount(os.makedev(0, 33), b"/sub", b"/mnt/with space", "tmpfs"),
    ]


def test_parse_mountinfo_reads_this_hosts_table():
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_bytes())
    assert any(m.mountpoint == b"/" for m in mounts)


@given(st.binary(max_size=400))
def test_parse_mountinfo_is_total(data):
    for m in parse_mountinfo(data):
        assert isinstance(m.dev, int) and isinstance(m.mountpoint, bytes)


def test_mounts_beneath_is_component_wise():
    mounts = [Mount(dev, b"/", mp, "ext4") for dev, mp in
              [(1, b"/srv/data"), (2, b"/srv/database"), (3, b"/srv"), (4, b"/srv/data/deeper")]]
    assert [m.dev for m in mounts_beneath(b"/srv/data", mounts)] == [4]
    assert [m.dev for m in mounts_beneath(b"/srv", mounts)] == [1, 2, 4]


# --- plans and matching ---------------------------------------------------------------------


def test_plan_marks_files_by_inode_and_directories_by_filesystem():
    rules = rules_of("/etc/shadow\n/srv\n/not/there\n")
    seen = {b"/etc/shadow": Seen(b"/etc/shadow", 8, 100, False),
            b"/srv": Seen(b"/srv", 8, 200, True), b"/not/there": None}
    mounts = [Mount(9, b"/", b"/srv/data", "xfs"), Mount(10, b"/", b"/srvx", "xfs")]
    p = plan(rules, seen, mounts)
    assert p.inode_marks == {(8, 100): b"/etc/shadow"}
    assert p.fs_marks == {8: b"/srv", 9: b"/srv/data"}  # and what is mounted beneath it
    assert p.rules.match((8, 100), b"/anything/else") == rules[0]  # the inode, any name
    assert p.rules.match((9, 5), b"/srv/data/x") == rules[1]
    assert p.rules.match((8, 7), b"/srvx/y") is None
    assert p.rules.match((8, 7), b"/not/there/now") == rules[2]  # by name until it exists


def test_plan_adds_the_target_of_a_symlink_as_a_name():
    [rule] = rules_of("/var/run/secrets\n")
    p = plan([rule], {b"/var/run/secrets": Seen(b"/run/secrets", 3, 4, True)})
    hit = p.rules.match((3, 99), b"/run/secrets/token")
    assert hit is not None and hit.line == "/var/run/secrets"
    assert p.fs_marks == {3: b"/run/secrets"}


def test_match_sees_through_deleted_suffix():
    rules = Rules(names=plan(rules_of("/d/file\n"), {}).rules.names)
    assert rules.match((1, 1), b"/d/file (deleted)") is not None
    assert rules.match((1, 1), b"/d/files (deleted)") is None


def test_observe_follows_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    seen = observe([bytes(tmp_path / "link"), bytes(tmp_path / "nope")])
    s = seen[bytes(tmp_path / "link")]
    assert s is not None and s.is_dir and s.resolved == os.fsencode(tmp_path / "real")
    assert seen[bytes(tmp_path / "nope")] is None


# --- marks ----------------------------------------------------------------------------------


class FakeGroup:
    def __init__(self, fail: set[int] | None = None) -> None:
        self.calls: list[tuple[int, int, tuple[int, int]]] = []
        self.fail = fail or set()

    def mark(self, flags: int, mask: int, path: str) -> None:
        st = os.stat(path)  # the /proc/self/fd/N the Marks opened
        if flags & fanotify.FAN_MARK_ADD and st.st_ino in self.fail:
            raise OSError(22, "Invalid argument")
        self.calls.append((flags, mask, (st.st_dev, st.st_ino)))


def key(path: Path) -> tuple[int, int]:
    s = path.stat()
    return s.st_dev, s.st_ino


def test_marks_add_then_remove_what_went_away(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    group = FakeGroup()
    marks = Marks(group)
    rules = rules_of(f"{a}\n{b}\n{tmp_path}\n")
    want = plan(rules, observe(r.path for r in rules))
    assert marks.apply(want) == []
    add = fanotify.FAN_MARK_ADD
    fs = fanotify.FAN_MARK_FILESYSTEM
    assert sorted(group.calls) == sorted([(add, MASK, key(a)), (add, MASK, key(b)),
                                          (add | fs, FS_MASK, key(tmp_path))])
    group.calls.clear()
    assert marks.apply(want) == []  # nothing to change
    assert group.calls == []
    fewer = plan(rules[:1], observe([rules[0].path]))
    marks.apply(fewer)
    rm = fanotify.FAN_MARK_REMOVE
    assert sorted(group.calls) == sorted([(rm, MASK, key(b)), (rm | fs, FS_MASK, key(tmp_path))])


def replan(marks: Marks, rules: list[PathRule]) -> None:
    """One housekeeping tick, as Reloader.tick does it."""
    marks.apply(plan(rules, observe(r.path for r in rules), kept=marks.kept()))


def test_marks_follow_a_replaced_file_and_drop_the_old_one(tmp_path):
    a = tmp_path / "a"
    a.write_text("old")
    group = FakeGroup()
    marks = Marks(group)
    rules = rules_of(f"{a}\n")
    old = key(a)
    replan(marks, rules)
    tmp = tmp_path / "a.new"
    tmp.write_text("new")
    tmp.replace(a)  # an editor's save: the old inode has no name left
    group.calls.clear()
    replan(marks, rules)
    assert group.calls == [(fanotify.FAN_MARK_ADD, MASK, key(a)),
                           (fanotify.FAN_MARK_REMOVE, MASK, old)]
    assert list(marks.inodes) == [key(a)]
    marks.close()


def test_a_listed_file_renamed_away_stays_denied_until_its_line_goes(tmp_path):
    a = tmp_path / "a"
    a.write_text("secret")
    group = FakeGroup()
    marks = Marks(group)
    rules = rules_of(f"{a}\n")
    replan(marks, rules)
    moved = tmp_path / "elsewhere"
    a.rename(moved)  # rename is no open: fanotify does not see it
    want = plan(rules, observe([rules[0].path]), kept=marks.kept())
    marks.apply(want)
    assert want.rules.match(key(moved), os.fsencode(moved)) == rules[0]
    group.calls.clear()
    replan(marks, [])  # the line is removed: the mark goes, whatever the file's name now
    assert group.calls == [(fanotify.FAN_MARK_REMOVE, MASK, key(moved))]
    assert marks.inodes == {}


def test_mark_failures_are_reported_once(tmp_path):
    a = tmp_path / "a"
    a.write_text("a")
    marks = Marks(FakeGroup(fail={a.stat().st_ino}))
    want = plan(rules_of(f"{a}\n"), observe([bytes(a)]))
    [msg] = marks.apply(want)
    assert f"cannot guard file {a}: Invalid argument" == msg
    assert marks.apply(want) == []  # retried, not repeated
    assert marks.inodes == {}


# --- cgroup scope ---------------------------------------------------------------------------


def fake_proc(tmp_path: Path, pid: int, cgroup: str) -> Path:
    d = tmp_path / str(pid)
    d.mkdir(exist_ok=True)
    (d / "cgroup").write_text(f"1:cpu:/\n0::{cgroup}\n")
    return d


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_scope_caches_per_pid_and_notices_reuse_and_moves(tmp_path):
    clock = Clock()
    scope = Scope("/agents/a1", proc=str(tmp_path), ttl=1.0, clock=clock)
    d = fake_proc(tmp_path, 10, "/agents/a1/x")
    assert scope.lookup(10) == (True, "/agents/a1/x")
    (d / "cgroup").write_text("0::/elsewhere\n")  # moved out...
    assert scope.lookup(10) == (True, "/agents/a1/x")  # ...cached for up to ttl
    clock.t = 1.5
    assert scope.lookup(10) == (False, "/elsewhere")
    # The pid is reused by a new process: a new /proc/<pid> inode, so no stale answer.
    (d / "cgroup").unlink()
    d.rmdir()
    fake_proc(tmp_path, 99, "/x")  # keep the freed inode number busy
    fake_proc(tmp_path, 10, "/agents/a1")
    assert scope.lookup(10) == (True, "/agents/a1")
    assert scope.lookup(12345) is None  # gone


def test_scope_cache_is_bounded(tmp_path):
    scope = Scope("/a", proc=str(tmp_path), max_entries=3)
    for pid in range(1, 10):
        fake_proc(tmp_path, pid, "/a")
        scope.lookup(pid)
    assert len(scope._cache) == 3


# --- /proc facts ----------------------------------------------------------------------------


def test_parse_stat_and_status():
    stat = b"42 (a b) c) S 1 40 40 0 -1 4194560 " + b"0 " * 12 + b"7777 0 0\n"
    assert parse_stat(stat) == ("a b) c", 1, 40, 7777)
    assert parse_stat(b"42 (x") is None
    assert parse_status_uid(b"Name:\tx\nUid:\t1000\t0\t0\t0\n") == 1000
    assert parse_status_uid(b"Name:\tx\n") is None


@given(st.binary(max_size=300))
def test_proc_parsers_are_total(data):
    parse_stat(data)
    parse_status_uid(data)


def test_enricher_reads_this_process():
    root = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else None
    identity, process = Enricher("h", root).facts(ME)
    assert process["pid"] == ME and process["ppid"] == os.getppid()
    assert process["uid"] == os.getuid() and identity["task"] == str(ME)
    assert process["comm"] == Path(f"/proc/{ME}/comm").read_text().strip()


def test_enricher_nulls_what_it_cannot_know(tmp_path):
    identity, process = Enricher("h", None, proc=str(tmp_path)).facts(4242)
    assert identity == {"agent": None, "task": "4242", "session": None}
    assert process["pid"] == 4242 and process["comm"] is None and process["cgroup_id"] is None


# --- answering ------------------------------------------------------------------------------


class Box:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)

    def error(self, msg: str) -> None:
        self.errors.append(msg)


@pytest.fixture
def answered():
    """A pipe as the group fd: returns (fd, read responses as [(event fd, response)])."""
    r, w = os.pipe()
    os.set_blocking(r, False)

    def responses() -> list[tuple[int, int]]:
        try:
            data = os.read(r, 65536)
        except BlockingIOError:
            return []
        return [struct.unpack_from("=iI", data, i) for i in range(0, len(data), 8)]

    yield w, responses
    os.close(r)
    os.close(w)


def event_for(path: Path, mask: int = FAN_OPEN_PERM, pid: int = 1) -> Event:
    return Event(mask=mask, fd=os.open(path, os.O_RDONLY), pid=pid)


def guard_for(fan: int, text: str, box: Box, scope: Scope | None = None) -> Guard:
    g = Guard(fan, box, Enricher("host", None), scope, me=ME)
    rules = rules_of(text)
    g.rules = plan(rules, observe(r.path for r in rules)).rules
    return g


def test_guard_allows_first_then_denies_with_an_event(tmp_path, answered):
    fan, responses = answered
    (tmp_path / "secret").write_text("s")
    (tmp_path / "fine").write_text("f")
    box = Box()
    g = guard_for(fan, f"{tmp_path}/secret\n", box)
    deny = event_for(tmp_path / "secret", FAN_OPEN_EXEC_PERM, pid=ME + 0)
    deny = Event(deny.mask, deny.fd, pid=os.getppid())  # not the guard itself
    ok = event_for(tmp_path / "fine", pid=os.getppid())
    mine = event_for(tmp_path / "secret", pid=ME)  # the guard's own open: always allowed
    g.answer([deny, ok, mine])
    assert responses() == [(ok.fd, FAN_ALLOW), (mine.fd, FAN_ALLOW), (deny.fd, FAN_DENY)]
    [ev] = box.events
    assert ev["event"]["Denied"] == {"pid": os.getppid(), "action": "exec",
                                     "target": str(tmp_path / "secret"),
                                     "rule": f"{tmp_path}/secret", "guard": "obs-fileguard"}
    assert ev["process"]["pid"] == os.getppid()
    assert g.counters.answered == 3 and g.counters.denied == 1 and g.counters.fail_open == 0
    for e in (deny, ok, mine):
        with pytest.raises(OSError):
            os.fstat(e.fd)  # every event fd is closed


def test_guard_denies_only_inside_the_cgroup(tmp_path, answered):
    fan, responses = answered
    (tmp_path / "secret").write_text("s")
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_proc(proc, 10, "/agent/tool")
    fake_proc(proc, 11, "/host")
    box = Box()
    g = guard_for(fan, f"{tmp_path}/secret\n", box, Scope("/agent", proc=str(proc)))
    inside, outside, gone = (event_for(tmp_path / "secret", pid=p) for p in (10, 11, 12))
    g.answer([inside, outside, gone])
    assert responses() == [(outside.fd, FAN_ALLOW), (gone.fd, FAN_ALLOW), (inside.fd, FAN_DENY)]
    assert g.counters.vanished == 1 and g.counters.fail_open == 1


def test_guard_fails_open_on_an_error(tmp_path, answered):
    fan, responses = answered
    (tmp_path / "secret").write_text("s")
    box = Box()
    g = guard_for(fan, f"{tmp_path}/secret\n", box)
    g.rules = None  # type: ignore[assignment]  # a bug in the decision path
    ev = event_for(tmp_path / "secret", pid=os.getppid())
    g.answer([ev])
    assert responses() == [(ev.fd, FAN_ALLOW)]
    assert g.counters.fail_open == 1 and len(box.errors) == 1


def test_guard_passes_overflow_and_counts_it(answered):
    fan, responses = answered
    g = Guard(fan, Box(), Enricher("h", None), me=ME)
    g.answer([Event(fanotify.FAN_Q_OVERFLOW, fanotify.FAN_NOFD, 0)])
    assert responses() == [] and g.counters.fail_open == 1


# --- reloading ------------------------------------------------------------------------------


def _reload_setup(tmp_path, answered):
    """A root-only deny-file listing tmp_path/a, its watcher's first read, and a guard."""
    fan, _ = answered
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o700)
    deny = conf / "deny"
    deny.write_text(f"{tmp_path}/a\n")
    watcher = DenyFileWatcher(deny, parse_paths, interval=0, trusted_uid=os.geteuid())
    first = watcher.poll()
    assert first is not None
    return deny, watcher, first, Guard(fan, Box(), Enricher("h", None), me=ME)


def test_reloader_reports_bad_lines_and_swaps_rules(tmp_path, answered):
    deny, watcher, first, g = _reload_setup(tmp_path, answered)
    reports: list[str] = []
    reloader = Reloader(watcher, first.rules, Marks(FakeGroup()), g, reports.append)
    reloader.tick(0)
    assert g.rules.match((0, 0), os.fsencode(tmp_path / "a")) is not None
    deny.write_text(f"oops\n{tmp_path}/b\n")
    reloader.tick(1)
    assert reports[0] == f"{deny}:1: not an absolute path, line skipped: 'oops'"
    assert g.rules.match((0, 0), os.fsencode(tmp_path / "a")) is None
    assert g.rules.match((0, 0), os.fsencode(tmp_path / "b")) is not None
    deny.chmod(0o666)  # now refused: the previous list stays
    reloader.tick(2)
    assert "keeping the previous list" in reports[-1]
    assert g.rules.match((0, 0), os.fsencode(tmp_path / "b")) is not None


def test_reloader_backs_off_when_looking_at_the_disk_is_costly(tmp_path, answered):
    deny, watcher, first, g = _reload_setup(tmp_path, answered)
    clock = Clock()
    ticks: list[float] = []

    def slow() -> float:  # every look at the disk "takes" 0.1 s
        ticks.append(clock.t)
        clock.t += 0.1
        return clock.t

    reloader = Reloader(watcher, first.rules, Marks(FakeGroup()), g, lambda m: None, clock=slow)
    for now in (0.0, 0.5, 1.2):
        reloader.tick(now)
    assert len(ticks) == 4  # at 0 and 1.2 (due at 0 + 10 * 0.1 = 1.0), two clock reads each
    deny.write_text(f"{tmp_path}/b\n")
    reloader.tick(1.3)  # a changed list is applied at once
    assert len(ticks) == 6
    assert g.rules.match((0, 0), os.fsencode(tmp_path / "b")) is not None


def test_observe_caches_realpath_per_inode(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    calls: list[bytes] = []
    real = os.path.realpath

    def counting(p: Any) -> Any:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(os.path, "realpath", counting)
    cache: dict[tuple[bytes, tuple[int, int]], bytes] = {}
    path = os.fsencode(tmp_path / "d")
    observe([path], cache)
    observe([path], cache)
    assert len(calls) == 1
    (tmp_path / "d").rename(tmp_path / "old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new").rename(tmp_path / "d")  # another inode under the name: resolved again
    observe([path], cache)
    assert len(calls) == 2


def test_outbox_is_bounded():
    from libobs.guard.loop import Outbox

    box = Outbox(max_items=2)
    for i in range(5):
        box.event({"n": i})
    box.error("still delivered")
    got = [box.get(0) for _ in range(4)]
    assert got == [("event", {"n": 0}), ("event", {"n": 1}), ("error", "still delivered"), None]
    assert box.dropped == 3


def test_watchdog_counts_only_time_the_housekeeper_was_awake():
    from libobs.guard.loop import Watchdog

    w = Watchdog(5.0)
    assert not any(w.stuck(1, t / 4) for t in range(20))  # 5 s without progress: not yet
    assert w.stuck(1, 5.25)
    w = Watchdog(5.0)
    assert not w.stuck(1, 0.0)
    assert not w.stuck(1, 60.0)  # the whole process was stopped for a minute: count afresh
    assert not w.stuck(2, 64.0) and not w.stuck(2, 66.0)  # progress resets it


# --- the kernel cache of allowed directories (libobs/guard/cache.py) -------------------------


class FakeDirs:
    """The *dirs* group without a kernel: records which directories were marked, by path."""

    def __init__(self, fd: int = 99) -> None:
        self.fd = fd
        self.marked: list[bytes] = []
        self.flushes = 0

    def ignore_children(self, dir_fd: int, mask: int) -> None:
        assert mask == MASK
        self.marked.append(os.readlink(f"/proc/self/fd/{dir_fd}").encode())

    def flush_inode_marks(self) -> None:
        self.flushes += 1


def rules_for(text: str) -> Rules:
    rules = rules_of(text)
    return plan(rules, observe(r.path for r in rules)).rules


def test_may_cache_children_only_where_no_rule_can_match_a_child():
    rules = rules_for("/srv/secret\n/home/me/.ssh/id_rsa\n/opt/later/not-there-yet\n")
    assert rules.may_cache_children(b"/srv/public")
    assert rules.may_cache_children(b"/")
    assert not rules.may_cache_children(b"/srv")  # /srv/secret itself is a child
    assert not rules.may_cache_children(b"/srv/secret")
    assert not rules.may_cache_children(b"/srv/secret/deep")
    assert not rules.may_cache_children(b"/home/me/.ssh")  # a listed file lives there
    assert not rules.may_cache_children(b"/opt/later")  # a listed name that may appear
    assert rules.may_cache_children(b"/home/me")
    assert rules_for("/nonexistent-obs\n").parents == frozenset({b"/"})


def test_a_listed_directory_does_not_keep_its_parent_from_the_cache(tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    rules = rules_for(f"{tmp_path}/secret\n{tmp_path}/link/file\n")
    here = os.fsencode(tmp_path)
    assert rules.may_cache_children(here)  # directories are never cached, only files
    assert not rules.may_cache_children(here + b"/secret")
    assert not rules.may_cache_children(here + b"/sub")  # the listed file, resolved
    assert rules.parents == frozenset({here + b"/link", here + b"/sub"})


def test_cache_marks_each_directory_once_and_only_under_the_current_rules(tmp_path):
    (tmp_path / "pub").mkdir()
    group = FakeDirs()
    cache = Cache(group, MASK, 8)
    old, new = rules_for(f"{tmp_path}/a\n"), rules_for(f"{tmp_path}/b\n")
    f = os.fsencode(tmp_path / "pub" / "f")
    assert not cache.add(f, old)  # the first allowed open in a directory: not yet
    assert not cache.add(f, old)  # no rules handed over yet
    cache.reset(old)
    assert cache.add(f, old) and not cache.add(f + b"2", old)  # one mark per directory
    assert group.marked == [os.fsencode(tmp_path / "pub")] and cache.entries == 1
    cache.reset(new)  # a rule change empties the cache ...
    assert group.flushes == 1 and cache.entries == 0
    assert not cache.add(f, old)  # ... and an answer decided under the old rules stays out
    assert cache.add(f, new) and cache.added == 2  # seen twice already: marked again at once
    (tmp_path / "x").mkdir()
    for _ in range(2):  # twice: past "seen once"
        assert not cache.add(os.fsencode(tmp_path / "a"), new)  # a listed name lives there
        assert not cache.add(os.fsencode(tmp_path / "x" / "f (deleted)"), new)
    assert group.marked == [os.fsencode(tmp_path / "pub")] * 2


def test_cache_never_marks_through_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "up").symlink_to(tmp_path)
    group = FakeDirs()
    cache = Cache(group, MASK, 8)
    rules = rules_for(f"{tmp_path}/other\n")
    cache.reset(rules)
    for _ in range(2):
        assert not cache.add(os.fsencode(tmp_path / "link" / "f"), rules)
        assert not cache.add(os.fsencode(tmp_path / "up" / "real" / "f"), rules)
        assert not cache.add(os.fsencode(tmp_path / "gone" / "f"), rules)
    assert group.marked == []


def test_cache_is_bounded_and_expires(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    clock = Clock()
    group = FakeDirs()
    cache = Cache(group, MASK, 1, ttl=2.0, clock=clock)
    rules = rules_for(f"{tmp_path}/x\n")
    cache.reset(rules)
    for d in ("a", "b"):
        assert not cache.add(os.fsencode(tmp_path / d / "f"), rules)  # once: not yet
    assert cache.add(os.fsencode(tmp_path / "a" / "f"), rules)
    assert cache.add(os.fsencode(tmp_path / "b" / "f"), rules)  # full: emptied, then added
    assert group.flushes == 1 and cache.entries == 1
    cache.expire(1.0)
    assert group.flushes == 1
    cache.expire(2.5)
    assert group.flushes == 2 and cache.entries == 0
    assert cache.stats() == {"cache_entries": 0, "cache_flushes": 2, "cache_failed": 0}
    assert Cache(FakeDirs(), MASK, 0).add(os.fsencode(tmp_path / "a" / "f"), rules) is False


def test_guard_caches_only_unmatched_files_of_the_dirs_group(tmp_path, answered):
    fan, responses = answered
    pub, sec, sub = tmp_path / "pub", tmp_path / "sec", tmp_path / "pub" / "sub"
    sub.mkdir(parents=True)
    sec.mkdir()
    for p in (pub / "f", sec / "s"):
        p.write_text("x")
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_proc(proc, 11, "/host")
    group = FakeDirs(fan)
    box = Box()
    files_r, files_w = os.pipe()  # the files group
    g = Guard(files_w, box, Enricher("host", None), Scope("/agent", proc=str(proc)), me=ME,
              cache=Cache(group, MASK, 8))
    g.set_rules(rules_for(f"{sec}\n"))
    g.answer([event_for(pub / "f", pid=11)])  # from the files group: never cached
    assert len(os.read(files_r, 100)) == 8
    os.close(files_r)
    os.close(files_w)
    outside = event_for(sec / "s", pid=11)  # a rule matched; allowed only as out of scope
    mine = event_for(pub / "f", pid=ME)  # the guard's own open: not checked
    a_dir = Event(FAN_OPEN_PERM | fanotify.FAN_ONDIR, os.open(sub, os.O_RDONLY), 11)
    g.answer([outside, mine, a_dir], fan)
    assert group.marked == [] and g.counters.cached == 0
    g.answer([event_for(pub / "f", pid=11), event_for(pub / "f", pid=11)], fan)
    assert group.marked == [os.fsencode(pub)] and g.counters.cached == 1
    assert [r for _, r in responses()] == [FAN_ALLOW] * 5 and box.events == []
    assert g.stats() == {"answered": 6, "cached": 1, "cache_entries": 1, "cache_flushes": 0,
                         "cache_failed": 0}
    g.set_rules(rules_for(f"{sec}\n"))  # the same rules again: the cache stays
    assert group.flushes == 0
    g.close()


@pytest.mark.parametrize("err, stays_on", [(22, False), (12, True)])
def test_a_refused_cache_mark_is_said_once_and_allows_anyway(tmp_path, answered, err, stays_on):
    fan, responses = answered
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text("x")

    class Refusing(FakeDirs):
        def ignore_children(self, dir_fd: int, mask: int) -> None:
            raise OSError(err, os.strerror(err))

    box = Box()
    cache = Cache(Refusing(fan), MASK, 8)
    g = Guard(fan, box, Enricher("host", None), me=ME, cache=cache)
    g.set_rules(rules_for(f"{tmp_path}/x\n"))
    g.answer([event_for(tmp_path / d / "f", pid=11) for d in ("a", "a", "b", "b")], fan)
    assert [r for _, r in responses()] == [FAN_ALLOW] * 4
    assert len(box.errors) == 1 and g.counters.cached == 0
    assert (cache.max_entries > 0) == stays_on and cache.failed == (2 if stays_on else 1)
    g.close()
