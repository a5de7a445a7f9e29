"""Real fanotify permission events, as root, on private files and a private tmpfs.

Each test checks one claim of libobs/guard/fanotify.py's docstring about this kernel. Children are
separate Python processes that exec or open the marked files themselves: spawning a marked
binary straight from this process would deadlock on CPython's vfork (see the docstring).
"""

import errno
import glob
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from libobs.guard import fanotify
from libobs.guard.denyfile import match_path, parse_paths
from libobs.guard.fanotify import (
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    FANOTIFY_METADATA_VERSION,
    Event,
    mark,
    mark_filesystem,
    mark_inode,
)
from tests.support.clients import EXECER, OPENER

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission events need root"),
]

EPERM = str(errno.EPERM)

Decide = Callable[[Event, bytes], bool]


class Listener:
    """Answers permission events from a thread and records (mask, pid, path) for each.
    ``cache``: ignore the inode of every allowed event from then on (what obs-fileguard's
    cache does), with ``FAN_MARK_IGNORED_SURV_MODIFY`` unless ``survive_modify`` is False."""

    def __init__(self, decide: Decide, cache: bool = False, survive_modify: bool = True) -> None:
        self.decide = decide
        self.cache = cache
        self.survive_modify = survive_modify
        self.fan = fanotify.init(
            fanotify.FAN_CLASS_CONTENT | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK
        )
        self.seen: list[tuple[int, int, bytes]] = []
        self.errors: list[BaseException] = []
        self._stop_r, self._stop_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fan, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for ev in fanotify.read_events(self.fan):
                self._answer(ev)

    def _answer(self, ev: Event) -> None:
        allow = True  # never leave an opener blocked because the test itself broke
        try:
            path = fanotify.fd_path(ev.fd)
            self.seen.append((ev.mask, ev.pid, path))
            allow = self.decide(ev, path)
            if allow and self.cache:
                fanotify.ignore(self.fan, ev.fd, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM,
                                survive_modify=self.survive_modify)
        except BaseException as e:
            self.errors.append(e)
        finally:
            fanotify.answer_and_close(self.fan, ev, allow)

    def paths(self) -> list[bytes]:
        return [path for _, _, path in self.seen]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=10)
        for fd in (self.fan, self._stop_r, self._stop_w):
            os.close(fd)


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(decide: Decide, **kw: bool) -> Listener:
        listeners.append(Listener(decide, **kw))
        return listeners[-1]

    yield start
    for lst in listeners:
        lst.close()
        assert lst.errors == []


def allow_all(ev: Event, path: bytes) -> bool:
    return True


def deny_all(ev: Event, path: bytes) -> bool:
    return False


def run_child(script: str, *args: str) -> tuple[int, int, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=30)
    return proc.pid, proc.returncode, out.split()


def open_in_child(*paths: str) -> tuple[int, list[str]]:
    pid, _, results = run_child(OPENER, *paths)
    return pid, results


def touch(path, data: bytes = b"data") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[str]:
    """A private filesystem, so a filesystem mark never touches the rest of the machine."""
    where = tmp_path / "fs"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "obs-test", str(where))
    yield str(where)
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def true_copy(tmp_path) -> str:
    path = str(tmp_path / "true")
    shutil.copy("/bin/true", path)
    os.chmod(path, 0o755)
    return path


# --- inode marks ----------------------------------------------------------------------------


def test_denied_open_fails_with_eperm_in_the_child(tmp_path, listen):
    secret = touch(tmp_path / "secret")
    lst = listen(deny_all)
    mark_inode(lst.fan, secret, FAN_OPEN_PERM)
    pid, results = open_in_child(secret)
    assert results == [EPERM]
    assert lst.seen == [(FAN_OPEN_PERM, pid, secret.encode())]


def test_allowed_open_goes_through(tmp_path, listen):
    path = touch(tmp_path / "file")
    lst = listen(allow_all)
    mark_inode(lst.fan, path, FAN_OPEN_PERM)
    pid, results = open_in_child(path)
    assert results == ["ok"]
    assert lst.seen == [(FAN_OPEN_PERM, pid, path.encode())]


def test_inode_mark_covers_a_hard_link_which_has_another_name(tmp_path, listen):
    secret = touch(tmp_path / "secret")
    link = str(tmp_path / "innocent")
    os.link(secret, link)
    lst = listen(deny_all)
    mark_inode(lst.fan, secret, FAN_OPEN_PERM)
    _, results = open_in_child(link)
    assert results == [EPERM]
    assert lst.paths() == [link.encode()]  # a name-based check would not have matched


def test_event_on_child_covers_direct_children_only(tmp_path, listen):
    direct = touch(tmp_path / "dir" / "direct")
    deeper = touch(tmp_path / "dir" / "sub" / "deeper")
    lst = listen(deny_all)
    mark_inode(lst.fan, str(tmp_path / "dir"), FAN_OPEN_PERM, children=True)
    # Perm events are synchronous: had `deeper` produced one, it would be recorded first.
    _, results = open_in_child(deeper, direct)
    assert results == ["ok", EPERM]
    assert lst.paths() == [direct.encode()]


def test_the_listeners_own_opens_are_events_too(tmp_path, listen):
    path = touch(tmp_path / "file")
    lst = listen(lambda ev, p: ev.pid != os.getpid())
    mark_inode(lst.fan, path, FAN_OPEN_PERM)
    # Answered (denied) by the listener thread of this very process.
    with pytest.raises(PermissionError) as e, open(path, "rb"):
        pass
    assert e.value.errno == errno.EPERM
    assert lst.seen == [(FAN_OPEN_PERM, os.getpid(), path.encode())]


# --- exec -----------------------------------------------------------------------------------


def test_denied_exec_fails_with_eperm(true_copy, listen):
    lst = listen(deny_all)
    mark_inode(lst.fan, true_copy, FAN_OPEN_EXEC_PERM)
    pid, rc, out = run_child(EXECER, true_copy)
    assert (rc, out) == (3, [EPERM])
    assert lst.seen == [(FAN_OPEN_EXEC_PERM, pid, true_copy.encode())]


def test_allowed_exec_runs_and_also_reports_a_plain_open(true_copy, listen):
    lst = listen(allow_all)
    mark_inode(lst.fan, true_copy, FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM)
    pid, rc, _ = run_child(EXECER, true_copy)
    assert rc == 0
    assert [(m, p) for m, p, _ in lst.seen] == [(FAN_OPEN_EXEC_PERM, pid), (FAN_OPEN_PERM, pid)]


def test_the_dynamic_loader_bypasses_an_exec_only_mark(true_copy, listen):
    loaders = glob.glob("/lib64/ld-linux*.so*") + glob.glob("/lib/*/ld-linux*.so*")
    if not loaders:
        pytest.skip("no glibc dynamic loader found")
    lst = listen(deny_all)
    mark_inode(lst.fan, true_copy, FAN_OPEN_EXEC_PERM)
    _, rc, _ = run_child(EXECER, loaders[0], true_copy)
    assert rc == 0 and lst.seen == []
    mark_inode(lst.fan, true_copy, FAN_OPEN_PERM)  # what an airtight exec guard adds
    _, rc, _ = run_child(EXECER, loaders[0], true_copy)
    assert rc != 0 and [m for m, _, _ in lst.seen] == [FAN_OPEN_PERM]


# --- filesystem and mount marks -------------------------------------------------------------


def test_filesystem_mark_with_a_path_check_denies_a_whole_subtree(tmpfs, listen):
    rules, errors = parse_paths(f"{tmpfs}/secret\n")
    assert errors == []
    deep = touch(f"{tmpfs}/secret/a/b/c")
    lookalike = touch(f"{tmpfs}/secretary")
    me = os.getpid()
    lst = listen(lambda ev, path: ev.pid == me or match_path(rules, path) is None)
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM)
    created_later = touch(f"{tmpfs}/secret/new/file")  # after the mark: still covered
    _, results = open_in_child(deep, created_later, lookalike)
    assert results == [EPERM, EPERM, "ok"]


def test_mount_mark_misses_a_bind_mount_filesystem_mark_does_not(tmpfs, tmp_path, listen):
    path = touch(f"{tmpfs}/file")
    bind = tmp_path / "bind"
    bind.mkdir()
    mount("--bind", tmpfs, str(bind))
    try:
        via_bind = str(bind / "file")
        on_mount = listen(deny_all)
        mark(
            on_mount.fan, fanotify.FAN_MARK_ADD | fanotify.FAN_MARK_MOUNT, FAN_OPEN_PERM, path=tmpfs
        )
        assert open_in_child(path, via_bind)[1] == [EPERM, "ok"]
        on_mount.close()
        on_fs = listen(deny_all)
        mark_filesystem(on_fs.fan, tmpfs, FAN_OPEN_PERM)
        assert open_in_child(path, via_bind)[1] == [EPERM, EPERM]
        assert on_fs.paths() == [path.encode(), via_bind.encode()]
    finally:
        subprocess.run(["umount", str(bind)], check=True)


# --- ignore masks (obs-fileguard's cache) and two groups --------------------------------------

# Opens (r), opens for writing (w) and opens that write (a) of each "how:path" argument.
OPS = """
import os, sys
for arg in sys.argv[1:]:
    how, _, p = arg.partition(":")
    try:
        fd = os.open(p, os.O_RDONLY if how == "r" else os.O_WRONLY)
        if how == "a":
            os.write(fd, b"more")
        os.close(fd)
        print("ok")
    except OSError as e:
        print(e.errno)
"""


def ops_in_child(*ops: str) -> list[str]:
    return run_child(OPS, *ops)[2]


def test_an_ignore_mask_on_the_event_fd_silences_that_inode_for_the_filesystem_mark(
        tmpfs, listen):
    a, b = touch(f"{tmpfs}/a"), touch(f"{tmpfs}/b")
    d = f"{tmpfs}/d"
    inside = touch(f"{d}/inside")
    lst = listen(lambda ev, path: ev.pid != os.getpid(), cache=True)
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | fanotify.FAN_ONDIR)
    assert ops_in_child(f"r:{a}", f"r:{a}", f"w:{a}", f"r:{b}", f"r:{d}", f"r:{d}",
                        f"r:{inside}", f"r:{inside}") == ["ok"] * 8
    # One event per inode, and the directory's ignore mask does not cover the file in it.
    assert lst.paths() == [a.encode(), b.encode(), d.encode(), inside.encode()]


def test_flushing_inode_marks_empties_the_cache_and_keeps_the_filesystem_mark(tmpfs, listen):
    a = touch(f"{tmpfs}/a")
    lst = listen(lambda ev, path: ev.pid != os.getpid(), cache=True)
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM)
    assert ops_in_child(f"r:{a}", f"r:{a}") == ["ok", "ok"]
    fanotify.flush_inode_marks(lst.fan)
    assert ops_in_child(f"r:{a}", f"r:{a}") == ["ok", "ok"]
    assert lst.paths() == [a.encode()] * 2  # one event again after the flush, then cached


def test_an_ignore_mask_silences_its_own_groups_inode_mark_but_not_another_groups(
        tmp_path, listen):
    secret = touch(tmp_path / "secret")
    mine = listen(allow_all, cache=True)
    mark_inode(mine.fan, secret, FAN_OPEN_PERM)
    assert ops_in_child(f"r:{secret}", f"r:{secret}") == ["ok", "ok"]
    assert mine.paths() == [secret.encode()]  # why listed files need a group of their own
    other = listen(deny_all)
    mark_inode(other.fan, secret, FAN_OPEN_PERM)
    assert ops_in_child(f"r:{secret}") == [EPERM]
    assert other.paths() == [secret.encode()] and mine.paths() == [secret.encode()]


def test_a_denial_by_the_first_group_asked_ends_the_open(tmpfs, listen):
    secret = touch(f"{tmpfs}/secret")
    files, dirs = listen(deny_all), listen(deny_all)
    mark_inode(files.fan, secret, FAN_OPEN_PERM)
    mark_filesystem(dirs.fan, tmpfs, FAN_OPEN_PERM)
    assert ops_in_child(f"r:{secret}") == [EPERM]
    assert len(files.paths() + dirs.paths()) == 1  # one Denied event per refused open
    files_first = bool(files.paths())
    files.decide = allow_all
    assert ops_in_child(f"r:{secret}") == [EPERM]
    if files_first:  # allowed by the first, so asked of the second, which denies
        assert (len(files.paths()), len(dirs.paths())) == (2, 1)
    else:
        assert (len(files.paths()), len(dirs.paths())) == (0, 2)


def o_path(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def test_a_children_ignore_mask_silences_the_files_directly_in_a_directory_only(tmpfs, listen):
    d = f"{tmpfs}/d"
    a, b, deeper = touch(f"{d}/a"), touch(f"{d}/b"), touch(f"{d}/sub/c")
    lst = listen(allow_all)
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | fanotify.FAN_ONDIR)
    fd = o_path(d)
    try:
        fanotify.ignore_children(lst.fan, fd, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM)
    finally:
        os.close(fd)
    assert ops_in_child(f"r:{a}", f"w:{b}", f"r:{d}", f"r:{d}/sub", f"r:{deeper}") == ["ok"] * 5
    # Not the directory itself, not its sub-directory, not a file deeper down.
    assert lst.paths() == [d.encode(), f"{d}/sub".encode(), deeper.encode()]


def test_a_file_renamed_or_linked_out_of_a_cached_directory_is_an_event_again(tmpfs, listen):
    d, listed = f"{tmpfs}/d", f"{tmpfs}/listed"
    moved, linked = touch(f"{d}/moved"), touch(f"{d}/linked")
    os.mkdir(listed)
    lst = listen(lambda ev, path: not path.startswith(listed.encode() + b"/"))
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM | fanotify.FAN_ONDIR)
    fd = o_path(d)
    try:
        fanotify.ignore_children(lst.fan, fd, FAN_OPEN_PERM)
    finally:
        os.close(fd)
    os.rename(moved, f"{listed}/moved")
    os.link(linked, f"{listed}/linked")
    assert ops_in_child(f"r:{listed}/moved", f"r:{listed}/linked", f"r:{linked}") == [
        EPERM, EPERM, "ok"]  # the old name of the link: still a child of the cached directory
    assert lst.paths() == [f"{listed}/moved".encode(), f"{listed}/linked".encode()]
    os.rename(d, f"{listed}/d")  # the directory keeps its mark, wherever it goes
    assert ops_in_child(f"r:{listed}/d/linked", f"r:{listed}/d") == ["ok", EPERM]
    assert lst.paths()[2:] == [f"{listed}/d".encode()]


def test_a_children_ignore_mask_does_not_silence_another_groups_inode_mark(tmpfs, listen):
    d = f"{tmpfs}/d"
    secret = touch(f"{d}/secret")
    dirs, files = listen(allow_all), listen(deny_all)
    mark_filesystem(dirs.fan, tmpfs, FAN_OPEN_PERM)
    fd = o_path(d)
    try:
        fanotify.ignore_children(dirs.fan, fd, FAN_OPEN_PERM)
    finally:
        os.close(fd)
    mark_inode(files.fan, secret, FAN_OPEN_PERM)
    assert ops_in_child(f"r:{secret}") == [EPERM]
    assert files.paths() == [secret.encode()] and dirs.paths() == []


def test_without_surv_modify_nothing_open_for_writing_is_cached_and_a_write_uncaches(
        tmpfs, listen):
    a, b = touch(f"{tmpfs}/a"), touch(f"{tmpfs}/b")
    lst = listen(allow_all, cache=True, survive_modify=False)
    mark_filesystem(lst.fan, tmpfs, FAN_OPEN_PERM)
    # The opener's own O_WRONLY open counts: the kernel quietly adds no ignore mask.
    assert ops_in_child(f"w:{a}", f"w:{a}", f"r:{b}", f"r:{b}", f"a:{b}", f"r:{b}") == ["ok"] * 6
    # a: no caching; b: cached by the read, the cache cleared by the write (its open was
    # cached, so no event), then one event again.
    assert lst.paths() == [a.encode(), a.encode(), b.encode(), b.encode()]


def test_closing_the_group_with_an_event_pending_fails_open(tmp_path):
    path = touch(tmp_path / "file", b"content")
    fan = fanotify.init(fanotify.FAN_CLASS_CONTENT | fanotify.FAN_CLOEXEC)
    try:
        mark_inode(fan, path, FAN_OPEN_PERM)
        child = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
        ready, _, _ = select.select([fan], [], [], 10)
        assert ready, "no permission event within 10 s"
        events = fanotify.read_events(fan)
        assert [(ev.mask, ev.pid) for ev in events] == [(FAN_OPEN_PERM, child.pid)]
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.3)  # blocked until someone answers
        for ev in events:
            os.close(ev.fd)
    finally:
        os.close(fan)
    out, _ = child.communicate(timeout=10)
    assert (child.returncode, out) == (0, b"content")


def test_errors_name_the_call_and_keep_errno(tmp_path):
    fan = fanotify.init(fanotify.FAN_CLASS_CONTENT | fanotify.FAN_CLOEXEC)
    try:
        with pytest.raises(OSError) as e:
            mark_inode(fan, str(tmp_path / "missing"), FAN_OPEN_PERM)
        assert e.value.errno == errno.ENOENT and "fanotify_mark" in str(e.value)
        with pytest.raises(OSError) as e:
            fanotify.respond(fan, 12345, allow=True)  # no such pending event
        assert e.value.errno == errno.ENOENT and "response" in str(e.value)
    finally:
        os.close(fan)
    with pytest.raises(OSError) as e:
        fanotify.init(0xFFFF0000)
    assert e.value.errno == errno.EINVAL and "fanotify_init" in str(e.value)


# --- parsing what read(2) returns (pure) ----------------------------------------------------


def metadata(mask: int, fd: int, pid: int, extra: bytes = b"", vers: int = 3) -> bytes:
    return struct.pack("=IBBHQii", 24 + len(extra), vers, 0, 24, mask, fd, pid) + extra


def test_parse_events_splits_a_buffer_and_skips_info_records():
    buf = metadata(FAN_OPEN_PERM, 7, 100, extra=b"\x04\x00\x08\x00\x09\x00\x00\x00")
    buf += metadata(FAN_OPEN_EXEC_PERM, 8, 101)
    assert fanotify.parse_events(buf) == [
        Event(FAN_OPEN_PERM, 7, 100),
        Event(FAN_OPEN_EXEC_PERM, 8, 101),
    ]
    assert fanotify.parse_events(b"") == []


def test_parse_events_refuses_another_abi_and_closes_what_it_parsed():
    kept = os.open("/dev/null", os.O_RDONLY)
    buf = metadata(FAN_OPEN_PERM, kept, 1) + metadata(FAN_OPEN_PERM, -1, 2, vers=99)
    with pytest.raises(OSError) as e:
        fanotify.parse_events(buf)
    assert e.value.errno == errno.EPROTO and str(FANOTIFY_METADATA_VERSION) in str(e.value)
    with pytest.raises(OSError):
        os.fstat(kept)  # closed by parse_events: no fd leaks on a bad buffer
    too_long = struct.pack("=IBBHQii", 100, 3, 0, 24, FAN_OPEN_PERM, -1, 1)
    with pytest.raises(OSError, match="event_len"):
        fanotify.parse_events(too_long)
    with pytest.raises(OSError, match="trailing"):
        fanotify.parse_events(metadata(FAN_OPEN_PERM, -1, 1) + b"\0")
