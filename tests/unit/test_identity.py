from hypothesis import given
from hypothesis import strategies as st

from libobs import identity
from libobs.kernel.records import Hdr

CID = "3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e"
POD = "8c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"


def test_empty_and_garbage():
    assert identity.container_id("/user.slice/user-1000.slice/session-3.scope") is None
    assert identity.pod_uid("/user.slice") is None


def test_docker_cgroupfs():
    assert identity.container_id(f"/docker/{CID}") == CID


def test_docker_systemd():
    assert identity.container_id(f"/system.slice/docker-{CID}.scope") == CID


def test_containerd_kubepods_systemd_driver():
    path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope")
    assert identity.container_id(path) == CID
    assert identity.pod_uid(path) == POD


def test_crio_kubepods():
    path = f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CID}.scope"
    assert identity.container_id(path) == CID
    assert identity.pod_uid(path) == POD


def test_kubepods_cgroupfs_driver():
    path = f"/kubepods/besteffort/pod{POD}/{CID}"
    assert identity.container_id(path) == CID
    assert identity.pod_uid(path) == POD


def test_podman_libpod():
    assert identity.container_id(f"/machine.slice/libpod-{CID}.scope/container") == CID


def test_innermost_container_wins():
    other = "a" * 64
    assert identity.container_id(f"/docker/{other}/docker/{CID}") == CID


@given(st.text())
def test_parsers_total(text):
    for v in (identity.container_id(text), identity.pod_uid(text)):
        assert v is None or isinstance(v, str)


def _hdr(pid, pgid, start_bt=123 * 10**7, comm=b"agent"):
    return Hdr(kind=1, pid=pid, tid=pid, ppid=1, uid=0, len=0, pgid=pgid, pad=0, ts=0,
               cgroup_id=1, start_bt=start_bt, comm=comm + b"\0" * (16 - len(comm)))


def test_session_from_group_leader_then_member():
    ids = identity.Identities()
    ticks = 123 * 10**7 // (10**9 // identity.CLK_TCK)
    ident, proc = ids.of(_hdr(4_000_001, 4_000_001))
    assert ident == {"agent": "agent", "task": "4000001", "session": f"4000001@{ticks}"}
    member, _ = ids.of(_hdr(4_000_002, 4_000_001, comm=b"git"))
    assert member["session"] == f"4000001@{ticks}" and member["agent"] == "agent"
    assert proc["pid"] == 4_000_001 and proc["comm"] == "agent"


def test_unknown_group_leader_gives_null_session():
    ids = identity.Identities()
    ident, _ = ids.of(_hdr(4_000_003, 4_000_999))  # no such pid: nothing invented
    assert ident["session"] is None


def test_caches_are_bounded():
    ids = identity.Identities(max_entries=10)
    for i in range(100):
        ids.of(_hdr(5_000_000 + i, 5_000_000 + i))
    assert len(ids._roots) <= 10


def test_members_keep_the_session_after_their_leader_exited():
    # `sh -c 'tool &'`: the shell (the group leader) exits first and is gone from /proc; its
    # tools' later records still carry its session, learnt from its own records.
    ids = identity.Identities()
    ticks = 123 * 10**7 // (10**9 // identity.CLK_TCK)
    ids.of(_hdr(4_000_011, 4_000_011))
    ids.forget(4_000_011)
    late, _ = ids.of(_hdr(4_000_012, 4_000_011, comm=b"git"))
    assert late["session"] == f"4000011@{ticks}" and late["agent"] == "agent"


def test_a_reused_leader_pid_gets_its_own_session():
    ids = identity.Identities()
    ids.of(_hdr(4_000_021, 4_000_021, start_bt=10**9))
    ids.forget(4_000_021)
    ids.of(_hdr(4_000_021, 4_000_021, start_bt=5 * 10**9))  # a new leader with that pid
    member, _ = ids.of(_hdr(4_000_022, 4_000_021))
    assert member["session"] == f"4000021@{5 * identity.CLK_TCK}"
