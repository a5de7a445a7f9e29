"""obs-fileguard against the real kernel: real fanotify marks, real openers, real cgroups.

Directory rules put a filesystem mark on a whole filesystem, so they are tested on a private
tmpfs: the rest of the machine never waits for this test's guard. Openers are separate
processes spawned from the test process (never from inside a listener: see the vfork note in
libobs/guard/fanotify.py). Deny-files live in root-owned 0700 directories, as read_denyfile demands.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from libobs.guard.cache import TTL
from libobs.kernel.host import cgroup2_root
from tests.support.clients import EXECER, OPENER
from tests.support.tools import REPO, running, tool_cmd, wait_for

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission events need root"),
]

EPERM = str(errno.EPERM)
TOOL = "obs-fileguard"
RELOAD_BOUND = 2.0  # the contract: a deny-file change applies within 2 s
BURST = """
import os, sys
n, paths = int(sys.argv[1]), sys.argv[2:]
for i in range(n):
    os.close(os.open(paths[i % len(paths)], os.O_RDONLY))
print(n)
"""


def child(script: str, *args: str, cgroup: Path | None = None) -> subprocess.Popen[str]:
    def join() -> None:  # runs in the child, before exec: it opens nothing guarded before this
        assert cgroup is not None
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    # A process group of its own, as a shell gives each command line: its session is then the
    # test's own, not that of whatever launched pytest (a group whose leader may be long gone).
    return subprocess.Popen([sys.executable, "-I", "-c", script, *args], stdout=subprocess.PIPE,
                            text=True, preexec_fn=join if cgroup else None,
                            start_new_session=True)


def open_in_child(*paths: str | Path, cgroup: Path | None = None) -> tuple[int, list[str]]:
    p = child(OPENER, *map(str, paths), cgroup=cgroup)
    out, _ = p.communicate(timeout=60)
    return p.pid, out.split()


def write_denyfile(path: Path, text: str, staging: Path | None = None) -> None:
    """Replace atomically, as an editor or config manager would (``staging``: where to write
    the new file first, on the same filesystem)."""
    tmp = (staging or path.parent) / (path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def conf(tmp_path) -> Path:
    d = tmp_path / "conf"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    where = tmp_path / "fs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "obs-test", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    root = cgroup2_root()
    assert root is not None, "no cgroup-v2 hierarchy mounted"
    path = root / f"obs-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    for _ in range(50):  # move stragglers out, then remove
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(pid)
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def touch(path: Path, data: str = "data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def by_pid(pid: int):
    return lambda f: f["pid"] == pid


def test_denied_open_is_eperm_and_a_denied_event(conf, tmp_path):
    secret, fine = touch(tmp_path / "secret"), touch(tmp_path / "fine")
    deny = conf / "deny"
    deny.write_text(f"# test\n{secret}\n")
    with running(TOOL, str(deny)) as tool:
        pid, results = open_in_child(secret, fine)
        assert results == [EPERM, "ok"]
        link = tmp_path / "another-name"
        os.link(secret, link)  # the inode is listed, whatever its name
        pid2, results = open_in_child(link)
        assert results == [EPERM]
        [ev] = tool.wait_events("Denied", by_pid(pid))
        assert {k: v for k, v in ev.items() if k != "_env"} == {
            "pid": pid, "action": "open", "target": str(secret), "rule": str(secret),
            "guard": TOOL}
        env = ev["_env"]
        assert env["process"]["pid"] == pid and env["process"]["ppid"] == os.getpid()
        assert env["process"]["comm"].startswith("python")
        assert env["identity"]["task"] == str(pid)
        leader, _, ticks = env["identity"]["session"].partition("@")
        assert leader == str(pid) and ticks.isdigit()
        [ev2] = tool.wait_events("Denied", by_pid(pid2))
        assert ev2["target"] == str(link) and ev2["rule"] == str(secret)
        os.unlink(link)
        moved = tmp_path / "moved"
        os.rename(secret, moved)  # a rename is no open: the guard only sees the name go
        time.sleep(1)  # a few housekeeping ticks
        assert open_in_child(moved)[1] == [EPERM]
    assert tool.status == 0, tool.stderr()
    assert "3 denied" in tool.stderr()


def test_cgroup_scope_denies_only_inside(conf, tmp_path, cgroup):
    secret = touch(tmp_path / "secret")
    deny = conf / "deny"
    deny.write_text(f"{secret}\n")
    with running(TOOL, str(deny), "--cgroup", str(cgroup)) as tool:
        outside_pid, outside = open_in_child(secret)
        inside_pid, inside = open_in_child(secret, cgroup=cgroup)
        assert outside == ["ok"]
        assert inside == [EPERM]
        [ev] = tool.wait_events("Denied", by_pid(inside_pid))
        assert ev["_env"]["process"]["cgroup_id"] == cgroup.stat().st_ino
        assert not [e for e in tool.of_kind("Denied") if e["pid"] == outside_pid]
    assert tool.status == 0, tool.stderr()


@pytest.fixture
def true_copy(tmp_path) -> Path:
    path = tmp_path / "bin" / "true"
    path.parent.mkdir()
    shutil.copy("/bin/true", path)
    path.chmod(0o755)
    return path


def test_exec_is_denied_also_through_the_dynamic_loader(conf, true_copy):
    deny = conf / "deny"
    deny.write_text(f"{true_copy}\n")
    with running(TOOL, str(deny)) as tool:
        p = child(EXECER, str(true_copy))
        out, _ = p.communicate(timeout=60)
        assert (p.returncode, out.split()) == (3, [EPERM])
        [ev] = tool.wait_events("Denied", by_pid(p.pid))
        assert ev["action"] == "exec" and ev["target"] == str(true_copy)
        loaders = glob.glob("/lib64/ld-linux*.so*") + glob.glob("/lib/*/ld-linux*.so*")
        assert loaders, "no glibc dynamic loader found"
        ld = subprocess.run([loaders[0], str(true_copy)], capture_output=True, text=True,
                            timeout=60)
        assert ld.returncode != 0 and "Operation not permitted" in ld.stderr
        [ev] = tool.wait_events("Denied", lambda f: f["action"] == "open")
        assert ev["target"] == str(true_copy)
    assert tool.status == 0, tool.stderr()


def test_directory_rule_covers_new_files_not_lookalike_siblings(conf, tmpfs):
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n")
    touch(tmpfs / "secret" / "old")
    with running(TOOL, str(deny)) as tool:
        # Made after the marks, without an open (creating with open() is itself denied):
        created = tmpfs / "secret" / "new" / "deep" / "file"
        created.parent.mkdir(parents=True)
        os.rename(touch(tmpfs / "staging"), created)
        with pytest.raises(PermissionError):
            touch(tmpfs / "secret" / "by-open")
        sibling = touch(tmpfs / "secretary" / "file")
        pid, results = open_in_child(created, tmpfs / "secret" / "old", sibling,
                                     tmpfs / "secret")
        assert results == [EPERM, EPERM, "ok", EPERM]  # the directory cannot be listed either
        events = tool.wait_events("Denied", by_pid(pid), count=3)
        assert {e["target"] for e in events} == {str(created), str(tmpfs / "secret" / "old"),
                                                 str(tmpfs / "secret")}
        assert {e["rule"] for e in events} == {f"{tmpfs}/secret"}
    assert tool.status == 0, tool.stderr()


def test_reload_applies_within_two_seconds_even_beneath_a_denied_directory(tmpfs):
    # The deny-file sits beneath a denied directory on a marked filesystem: the guard must
    # read it (and never wait on its own open) to reload. This test cannot open it any more, so
    # it writes the new list elsewhere on the same filesystem and renames it into place.
    conf = tmpfs / "secret" / "conf"
    conf.mkdir(parents=True, mode=0o700)
    staging = tmpfs / "staging"
    staging.mkdir(mode=0o700)
    a, b = touch(tmpfs / "pub" / "a"), touch(tmpfs / "pub" / "b")
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n{a}\n")
    with running(TOOL, str(deny)) as tool:
        assert open_in_child(a, b)[1] == [EPERM, "ok"]
        start = time.monotonic()
        write_denyfile(deny, f"{tmpfs}/secret\n{b}\n", staging)

        def swapped() -> bool:
            try:
                open(b, "rb").close()
                return False
            except PermissionError:
                pass
            try:
                open(a, "rb").close()
                return True
            except PermissionError:
                return False

        wait_for(swapped, timeout=10, what="the new deny-file to apply")
        took = time.monotonic() - start
        print(f"deny-file change applied in {took * 1000:.0f} ms")
        assert took < RELOAD_BOUND + 0.5
    assert tool.status == 0, tool.stderr()


def test_garbage_lines_are_reported_with_line_numbers_and_skipped(conf, tmp_path):
    secret = touch(tmp_path / "secret")
    deny = conf / "deny"
    deny.write_text(f"relative/path\n{secret}\n")
    with running(TOOL, str(deny)) as tool:
        assert open_in_child(secret)[1] == [EPERM]  # the good line still counts
        assert f"{deny}:1: not an absolute path" in tool.stderr()
        write_denyfile(deny, f"{secret}\n\n/\n")
        wait_for(lambda: f"{deny}:3: refusing to deny the whole filesystem" in tool.stderr(),
                 timeout=5, what="the bad line on reload")
        deny.chmod(0o666)  # a file others can write is refused: the old list stays
        wait_for(lambda: "keeping the previous list" in tool.stderr(), timeout=5,
                 what="the refusal")
        assert open_in_child(secret)[1] == [EPERM]
    assert tool.status == 0, tool.stderr()
    bad = [ln for ln in tool.stderr().splitlines() if ":1: " in ln or ":3: " in ln]
    assert len(bad) == 2  # one line each


def test_a_bad_denyfile_at_start_is_one_line_and_exit_2(tmp_path):
    deny = tmp_path / "world" / "deny"
    deny.parent.mkdir(mode=0o777)
    deny.parent.chmod(0o777)
    deny.write_text("/etc/shadow\n")
    r = subprocess.run(tool_cmd(TOOL, str(deny)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "writable by group or others" in r.stderr
    r = subprocess.run(tool_cmd(TOOL, str(deny), "--cgroup", "/nonexistent"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("arg", ["", ".", "/sys/fs/cgroup/unified"])
def test_the_cgroup_v2_root_is_refused(conf, arg):
    """--cgroup "$UNSET" must not quietly become "every process"."""
    deny = conf / "deny"
    deny.write_text("/nonexistent-obs\n")
    r = subprocess.run(tool_cmd(TOOL, str(deny), "--cgroup", arg), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cgroup-v2 root" in r.stderr and "omit --cgroup" in r.stderr


def test_without_root_it_says_what_is_missing(conf):
    deny = conf / "deny"
    deny.write_text("/nonexistent-obs\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *tool_cmd(TOOL, str(deny))], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1
    assert r.stderr == ("obs-fileguard: must run as root "
                        "(fanotify permission events need CAP_SYS_ADMIN)\n")


def test_a_binary_denyfile_is_a_few_escaped_lines(conf):
    deny = conf / "deny"
    deny.write_bytes(bytes(range(256)) * 8 + b"/nonexistent-obs\n")
    r = subprocess.run(tool_cmd(TOOL, str(deny), "--duration", "1"), capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    lines = [ln for ln in err.splitlines() if str(deny) in ln]
    assert 1 < len(lines) <= 8 and "more bad line(s) skipped" in err
    assert all(ln.isprintable() for ln in err.splitlines())


def test_sigkill_lets_blocked_and_new_opens_through(conf, tmp_path):
    secret = touch(tmp_path / "secret")
    deny = conf / "deny"
    deny.write_text(f"{secret}\n")
    with running(TOOL, str(deny)) as tool:
        tool.proc.send_signal(signal.SIGSTOP)  # events now wait
        blocked = child(OPENER, str(secret))
        time.sleep(0.5)
        assert blocked.poll() is None, "the open did not wait for the guard"
        tool.stop(signal.SIGKILL)
        out, _ = blocked.communicate(timeout=10)
        assert out.split() == ["ok"]
        assert open_in_child(secret)[1] == ["ok"]
    assert tool.status == -signal.SIGKILL


def test_sigterm_with_an_open_pending_answers_it_and_exits_0(conf, tmp_path):
    secret = touch(tmp_path / "secret")
    deny = conf / "deny"
    deny.write_text(f"{secret}\n")
    with running(TOOL, str(deny)) as tool:
        tool.proc.send_signal(signal.SIGSTOP)
        blocked = child(OPENER, str(secret))
        time.sleep(0.5)
        assert blocked.poll() is None, "the open did not wait for the guard"
        tool.proc.send_signal(signal.SIGTERM)
        tool.proc.send_signal(signal.SIGCONT)
        out, _ = blocked.communicate(timeout=10)
        assert out.split() in (["ok"], [EPERM])  # decided or let through, never left waiting
        assert tool.proc.wait(timeout=10) == 0, tool.stderr()  # exits by itself
        assert open_in_child(secret)[1] == ["ok"]  # nothing is guarded after a clean exit


def test_duration_and_human_format(conf, tmp_path):
    secret = touch(tmp_path / "secret")
    deny = conf / "deny"
    deny.write_text(f"{secret}\n")
    with running(TOOL, str(deny), "--format", "human", "--duration", "2") as tool:
        assert open_in_child(secret)[1] == [EPERM]
        assert tool.proc.wait(timeout=20) == 0, tool.stderr()
    lines = [ln for ln in tool.stdout_lines() if b"Denied" in ln]
    assert len(lines) == 1 and b"action=open" in lines[0] and str(secret).encode() in lines[0]


def test_burst_of_10000_opens_on_a_marked_filesystem(conf, tmpfs):
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n")
    touch(tmpfs / "secret" / "file")
    files = [str(touch(tmpfs / "pub" / f"f{i}")) for i in range(50)]
    procs, per_proc = 4, 2500
    # Without the cache: every open is a round trip (with it, 50 would be).
    with running(TOOL, str(deny), "--heartbeat-interval", "1", "--cache-size", "0") as tool:
        start = time.monotonic()
        workers = [child(BURST, str(per_proc), *files) for _ in range(procs)]
        done = [w.communicate(timeout=120)[0].split() for w in workers]
        took = time.monotonic() - start
        print(f"{procs * per_proc} guarded opens from {procs} processes in {took:.2f} s "
              f"({procs * per_proc / took:.0f}/s)")
        assert done == [[str(per_proc)]] * procs
        assert all(w.returncode == 0 for w in workers)
        assert took < 120
        assert open_in_child(tmpfs / "secret")[1] == [EPERM]  # still guarding
        [hb, *_] = tool.wait_events("CollectorHeartbeat", lambda f: True)
        assert hb["dropped"] == 0
    assert tool.status == 0, tool.stderr()
    [summary] = [ln for ln in tool.stderr().splitlines() if "permission event(s)" in ln]
    answered = int(summary.split("answered ")[1].split()[0])
    assert answered >= procs * per_proc  # every one of them was a round trip to the guard


# --- the kernel cache of allowed files (libobs/guard/cache.py) ---------------------------------


def summary(tool) -> dict[str, int]:
    """The counts of the exit summary on stderr."""
    [line] = [ln for ln in tool.stderr().splitlines() if "permission event(s)" in ln]
    words = line.replace("(", " ").split()
    return {"answered": int(words[words.index("answered") + 1]),
            "cached": int(words[words.index("allowed") - 1]),
            "flushes": int(words[words.index("emptied") + 1])}


def test_repeated_opens_in_an_allowed_directory_are_one_event(conf, tmpfs):
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n")
    (tmpfs / "secret").mkdir()
    dirs = [tmpfs / "pub" / "a", tmpfs / "pub" / "b"]
    files = [str(touch(d / f"f{i}")) for d in dirs for i in range(5)]
    n = 2000
    with running(TOOL, str(deny)) as tool:
        start = time.monotonic()
        w = child(BURST, str(n), *files)
        assert w.communicate(timeout=120)[0].split() == [str(n)]
        took = time.monotonic() - start
        assert open_in_child(tmpfs / "secret")[1] == [EPERM]  # never cached: a rule matched
        assert open_in_child(tmpfs / "secret")[1] == [EPERM]
    assert tool.status == 0, tool.stderr()
    got = summary(tool)
    print(f"{n} opens of {len(files)} files in {len(dirs)} directories in {took:.2f} s: {got}")
    # Two events per directory (it is cached at the second), again after each time the cache
    # was emptied or forgot what it saw once (every TTL), plus the two refused opens.
    assert got["cached"] >= len(dirs)
    windows = 2 + got["flushes"] + int(took / TTL)
    assert got["answered"] <= 2 * len(dirs) * windows + 2
    assert got["answered"] < n


def test_a_cached_file_newly_listed_is_denied_after_the_reload(conf, tmpfs):
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n")
    (tmpfs / "secret").mkdir()  # a directory rule: the filesystem is marked
    x, y = touch(tmpfs / "pub" / "x"), touch(tmpfs / "pub2" / "sub" / "y")
    with running(TOOL, str(deny)) as tool:
        assert open_in_child(x, x, y, y)[1] == ["ok"] * 4  # their directories cached now
        write_denyfile(deny, f"{tmpfs}/secret\n{x}\n")  # a file rule for a cached file
        wait_for(lambda: open_in_child(x)[1] == [EPERM], timeout=RELOAD_BOUND + 3,
                 what="the cached file to be denied")
        write_denyfile(deny, f"{tmpfs}/secret\n{x}\n{tmpfs}/pub2\n")  # a directory above one
        wait_for(lambda: open_in_child(y)[1] == [EPERM], timeout=RELOAD_BOUND + 3,
                 what="the cached file beneath the new directory rule to be denied")
        assert open_in_child(x, tmpfs / "secret")[1] == [EPERM, EPERM]
    assert tool.status == 0, tool.stderr()
    assert summary(tool)["cached"] >= 2


def test_cached_files_moved_or_linked_into_a_listed_directory(conf, tmpfs):
    """What libobs/guard/cache.py (point 3) argues: a file renamed or hard-linked into a
    listed directory is denied at once; a whole cached directory moved in, within 2 s."""
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n")
    (tmpfs / "secret").mkdir()
    moved, linked = touch(tmpfs / "pub" / "moved"), touch(tmpfs / "pub" / "linked")
    inner = touch(tmpfs / "pub" / "d" / "inner")
    with running(TOOL, str(deny)) as tool:
        assert open_in_child(moved, linked, inner, inner)[1] == ["ok"] * 4  # cached
        os.rename(moved, tmpfs / "secret" / "moved")
        os.link(linked, tmpfs / "secret" / "linked")
        assert open_in_child(tmpfs / "secret" / "moved", tmpfs / "secret" / "linked",
                             linked)[1] == [EPERM, EPERM, "ok"]
        start = time.monotonic()
        os.rename(tmpfs / "pub" / "d", tmpfs / "secret" / "d")
        assert open_in_child(tmpfs / "secret" / "d")[1] == [EPERM]  # listing it: at once
        print("right after: a file in the moved directory:",
              open_in_child(tmpfs / "secret" / "d" / "inner")[1])
        wait_for(lambda: open_in_child(tmpfs / "secret" / "d" / "inner")[1] == [EPERM],
                 timeout=10, what="the files of the moved directory to be denied")
        took = time.monotonic() - start
        print(f"files of the moved directory denied after {took * 1000:.0f} ms")
        assert took < RELOAD_BOUND + 0.5  # TTL (2 s) and a housekeeping tick
    assert tool.status == 0, tool.stderr()


def test_next_to_a_listed_directory_files_are_cached_and_the_directory_stays_denied(conf, tmpfs):
    deny = conf / "deny"
    deny.write_text(f"{tmpfs}/secret\n{tmpfs}/pub/later\n")
    inside = touch(tmpfs / "secret" / "s")
    a, other = touch(tmpfs / "a"), touch(tmpfs / "pub" / "other")
    with running(TOOL, str(deny)) as tool:
        # The filesystem's root holds the listed directory: its files may still be cached.
        assert open_in_child(a, a, other, other)[1] == ["ok"] * 4
        assert open_in_child(tmpfs / "secret", inside)[1] == [EPERM, EPERM]
        # pub holds a listed path that does not exist yet: never cached, so it is denied the
        # moment it appears, as without the cache.
        os.rename(touch(tmpfs / "staging"), tmpfs / "pub" / "later")
        assert open_in_child(tmpfs / "pub" / "later")[1] == [EPERM]
    assert tool.status == 0, tool.stderr()
    got = summary(tool)
    assert got["cached"] >= 1 and got["answered"] >= 5


LOOP = """
import os, sys
stop, paths = sys.argv[1], sys.argv[2:]
results = {p: set() for p in paths}
while not os.path.exists(stop):
    for p in paths:
        try:
            os.close(os.open(p, os.O_RDONLY))
            results[p].add("ok")
        except OSError as e:
            results[p].add(str(e.errno))
print(repr(results))
"""


def test_listed_files_stay_denied_throughout_reloads(conf, tmpfs, tmp_path):
    deny = conf / "deny"
    listed, beneath = touch(tmpfs / "listed"), touch(tmpfs / "secret" / "file")
    public = [touch(tmpfs / "pub" / f"p{i}") for i in range(3)]
    base = f"{listed}\n{tmpfs}/secret\n"
    deny.write_text(base)
    stop = tmp_path / "stop"
    with running(TOOL, str(deny)) as tool:
        opener = child(LOOP, str(stop), str(listed), str(beneath), *map(str, public))
        for i in range(12):  # each rewrite changes the rules: the cache is emptied each time
            extra = f"{tmpfs}/pub/p{i % 3}\n" if i % 2 else f"{tmpfs}/other{i}\n"
            write_denyfile(deny, base + extra)
            time.sleep(0.3)
        stop.touch()
        results = eval(opener.communicate(timeout=60)[0])  # noqa: S307 -- our own repr
        assert results[str(listed)] == {EPERM} and results[str(beneath)] == {EPERM}
        assert all("ok" in results[str(p)] for p in public)
    assert tool.status == 0, tool.stderr()
    assert summary(tool)["flushes"] >= 1
