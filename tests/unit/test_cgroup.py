"""libobs/cgroup.py without a kernel: argument resolution (the root is refused), /proc/<pid>/cgroup
parsing, and cgroup id → path over a directory tree standing in for the cgroup filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs import cgroup, identity
from libobs.kernel.records import Hdr

CID = "3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e"
POD = "8c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"
KUBEPODS = (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope")


def fake_v2(tmp_path: Path, *dirs: str) -> Path:
    """A directory tree shaped like a cgroup-v2 mount (every directory has cgroup.procs)."""
    root = tmp_path / "cg"
    for d in ("", *dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "cgroup.procs").write_text("")
    return root


# ---- resolve_dir -----------------------------------------------------------------------------
def test_resolve_relative_and_absolute(tmp_path):
    root = fake_v2(tmp_path, "agents/a1")
    assert cgroup.resolve_dir("agents/a1", root) == root / "agents/a1"
    assert cgroup.resolve_dir(str(root / "agents/a1"), root) == root / "agents/a1"
    assert cgroup.resolve_dir(Path("agents/a1/"), root) == root / "agents/a1"


@pytest.mark.parametrize("arg", ["", ".", "/", "./", "agents/..", "ROOT"])
def test_the_root_is_refused_unless_asked_for(tmp_path, arg):
    root = fake_v2(tmp_path, "agents")
    arg = str(root) if arg == "ROOT" else arg
    if arg == "/":  # "/" is the host's root directory, which is not under the v2 mount
        with pytest.raises(cgroup.CgroupError, match="not under"):
            cgroup.resolve_dir(arg, root)
        return
    with pytest.raises(cgroup.CgroupError) as e:
        cgroup.resolve_dir(arg, root, root_hint="pass --whole-host to mean it")
    msg = str(e.value)
    assert "cgroup-v2 root" in msg and "--whole-host" in msg and "\n" not in msg
    assert cgroup.resolve_dir(arg, root, root_ok=True) == root


def test_empty_argument_is_shown_quoted(tmp_path):
    root = fake_v2(tmp_path)
    with pytest.raises(cgroup.CgroupError, match=r"^CGROUP '' is the cgroup-v2 root"):
        cgroup.resolve_dir("", root, what="CGROUP")


def test_outside_missing_and_unmounted_are_refused(tmp_path):
    root = fake_v2(tmp_path, "agent")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cgroup.procs").write_text("")
    (root / "plain").mkdir()
    for bad in ("missing", str(tmp_path / "other"), "../other", "plain", "a\0b"):
        with pytest.raises(cgroup.CgroupError):
            cgroup.resolve_dir(bad, root)
    with pytest.raises(cgroup.CgroupError, match="no cgroup-v2 hierarchy"):
        cgroup.resolve_dir("agent", None)


@given(st.text(max_size=40))
def test_resolve_dir_is_total(text):
    root = Path("/nonexistent-obs-cgroup-root")
    try:
        cgroup.resolve_dir(text, root)
    except cgroup.CgroupError as e:
        assert str(e).isprintable()
    else:
        raise AssertionError("nothing exists under a missing root")


def test_relative_and_in_subtree(tmp_path):
    root = fake_v2(tmp_path, "agents/a1")
    assert cgroup.relative(root / "agents/a1", root) == "/agents/a1"
    assert cgroup.relative(root, root) == "/"
    assert cgroup.in_subtree("/agents/a1", "/agents/a1")
    assert cgroup.in_subtree("/agents/a1/tool", "/agents/a1")
    assert not cgroup.in_subtree("/agents/a10", "/agents/a1")
    assert cgroup.in_subtree("/anything", "/")


# ---- /proc/<pid>/cgroup ----------------------------------------------------------------------
def test_v2_line_wins_over_v1():
    text = f"12:pids:/docker/{CID}\n1:name=systemd:/x\n0::/system.slice/docker-{CID}.scope\n"
    assert cgroup.v2_path(text) == cgroup.best_path(text) == f"/system.slice/docker-{CID}.scope"


def test_v1_only_takes_longest_path():
    text = f"4:memory:/docker/{CID}\n1:name=systemd:/docker\n"
    assert cgroup.v2_path(text) is None
    assert cgroup.best_path(text) == f"/docker/{CID}"


def test_garbage():
    assert cgroup.best_path("") == cgroup.best_path("nonsense\n") == ""
    assert cgroup.v2_path("0::\n") is None and cgroup.v2_path("4:memory:/x\n") is None


@given(st.text(max_size=300))
def test_proc_parsers_are_total(text):
    v2 = cgroup.v2_path(text)
    assert v2 is None or v2.startswith("/")
    assert isinstance(cgroup.best_path(text), str)


def test_read_proc_cgroup(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_bytes(b"0::/a\xff\n")
    assert cgroup.read_proc_cgroup(7, str(tmp_path)) == "0::/a\ufffd\n"
    assert cgroup.read_proc_cgroup(8, str(tmp_path)) is None


# ---- cgroup id → path ------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_ids_resolve_to_paths_and_new_cgroups_are_found(tmp_path):
    root = fake_v2(tmp_path, "system.slice")
    paths = cgroup.CgroupPaths(root, clock=Clock())
    assert paths.path(root.stat().st_ino) == "/"
    assert paths.path((root / "system.slice").stat().st_ino) == "/system.slice"
    assert paths.scans == 1  # one walk answered both
    (root / KUBEPODS).mkdir(parents=True)  # made after the first scan: a newer, higher id
    ino = (root / KUBEPODS).stat().st_ino
    assert paths.path(ino) == "/" + KUBEPODS
    assert paths.scans == 2
    os.rmdir(root / KUBEPODS)  # the process (and its cgroup) are gone: still answered
    assert paths.path(ino) == "/" + KUBEPODS
    assert cgroup.cgroup_id(root, "/system.slice") == (root / "system.slice").stat().st_ino
    assert cgroup.cgroup_id(root, "/nope") is None


def test_unknown_ids_do_not_rescan_every_time(tmp_path):
    root = fake_v2(tmp_path, "a")
    clock = Clock()
    paths = cgroup.CgroupPaths(root, clock=clock, negative_ttl=5.0)
    assert paths.path(root.stat().st_ino) == "/"
    n = paths.scans
    for _ in range(100):  # an id from an earlier, removed cgroup (below the newest seen)
        assert paths.path(1) is None
    for _ in range(100):  # an id no scan has seen: one scan, then remembered as missing
        assert paths.path(2**62) is None
    assert paths.scans == n + 1
    clock.t = 6.0
    assert paths.path(2**62) is None and paths.scans == n + 2  # retried after the ttl
    assert paths.path(0) is None and cgroup.CgroupPaths(None).path(5) is None


def test_cache_is_bounded_and_keeps_what_was_asked(tmp_path):
    root = fake_v2(tmp_path, *(f"d{i}" for i in range(50)))
    paths = cgroup.CgroupPaths(root, max_entries=8, max_scan=1000, clock=Clock())
    ino = (root / "d17").stat().st_ino
    assert paths.path(ino) == "/d17"
    assert len(paths._paths) <= 8 and len(paths._missing) <= 8
    assert paths.path(ino) == "/d17"


def test_a_tree_larger_than_the_cache_still_resolves_evicted_ids(tmp_path):
    root = fake_v2(tmp_path, *(f"d{i}" for i in range(30)))
    paths = cgroup.CgroupPaths(root, max_entries=5, clock=Clock())
    inos = {f"/d{i}": (root / f"d{i}").stat().st_ino for i in range(30)}
    for name, ino in inos.items():
        assert paths.path(ino) == name


def test_scan_is_bounded_and_ignores_symlinks(tmp_path):
    root = fake_v2(tmp_path, "a/b/c", "d")
    (root / "link").symlink_to(root / "a")
    found = cgroup.scan(root, 1000)
    assert sorted(found.values()) == ["/", "/a", "/a/b", "/a/b/c", "/d"]
    assert len(cgroup.scan(root, 2)) == 2
    assert cgroup.scan(tmp_path / "missing", 10) == {}


# ---- identity of a process that is already gone ---------------------------------------------
def test_identity_of_a_gone_process_comes_from_the_cgroup_tree(tmp_path):
    root = fake_v2(tmp_path, KUBEPODS)
    ids = identity.Identities(paths=cgroup.CgroupPaths(root))
    gone = 4_100_000  # above pid_max: no /proc entry
    hdr = Hdr(kind=1, pid=gone, tid=gone, ppid=1, uid=0, len=0, pgid=gone, pad=0, ts=0,
              cgroup_id=(root / KUBEPODS).stat().st_ino, start_bt=10**9, comm=b"echo".ljust(16, b"\0"))
    ident, proc = ids.of(hdr)
    assert (proc["container_id"], proc["pod_uid"]) == (CID, POD)
    assert ident["session"] == POD and ident["agent"] == POD
