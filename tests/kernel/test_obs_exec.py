"""obs-exec against the real kernel: real processes, exact events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.tools import running, unmeasured_env, wait_for

pytestmark = pytest.mark.kernel
PY = sys.executable


@pytest.fixture(scope="module")
def tool():
    with running("obs-exec", "--files", "--heartbeat-interval", "1") as r:
        yield r
    assert r.status == 0, r.stderr()


@pytest.fixture(autouse=True)
def _fresh(request):
    """Each test matches its own processes by pid: only events from its start on."""
    if "tool" in request.fixturenames:
        request.getfixturevalue("tool").fresh_events()


def start_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def by_pid(pid: int):
    return lambda f: f["pid"] == pid


def test_bash_exit_3_exec_exit_and_identity(tool, tmp_path):
    # A new session (process group) of its own, as a shell gives each command line.
    p = subprocess.Popen(["bash", "-c", "sleep 0.3; ls /tmp >/dev/null; exit 3"],
                         cwd=tmp_path, start_new_session=True)
    session = f"{p.pid}@{start_ticks(p.pid)}"
    assert p.wait() == 3
    [ex] = tool.wait_events("ToolExec", by_pid(p.pid))
    assert ex["argv"] == ["bash", "-c", "sleep 0.3; ls /tmp >/dev/null; exit 3"]
    assert ex["filename"] == "/usr/bin/bash"
    assert ex["cwd"] == str(tmp_path)
    assert ex["argv_truncated"] is False
    assert ex["uid"] == 0 and ex["ppid"] == os.getpid()
    assert ex["_env"]["identity"] == {"agent": "bash", "task": str(p.pid), "session": session}
    [pe] = tool.wait_events("ProcessExit", by_pid(p.pid))
    assert pe["exit_code"] == 3 and pe["signal"] is None and pe["core_dumped"] is False
    assert pe["duration"]["secs"] * 10**9 + pe["duration"]["nanos"] >= 300_000_000
    # The tool the shell ran carries the shell's session.
    [ls] = tool.wait_events("ToolExec", lambda f: f["ppid"] == p.pid and f["comm"] == "ls")
    assert ls["argv"] == ["ls", "/tmp"]
    assert ls["_env"]["identity"]["session"] == session
    assert ls["_env"]["identity"]["agent"] == "bash"


def test_sigkill(tool):
    p = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    p.kill()
    p.wait()
    [pe] = tool.wait_events("ProcessExit", by_pid(p.pid))
    assert pe["signal"] == 9 and pe["exit_code"] is None


@pytest.mark.parametrize("core", [False, True])
def test_segfault(tool, tmp_path, core):
    import resource

    limit = resource.RLIM_INFINITY if core else 0
    code = "import ctypes; ctypes.string_at(0)"
    p = subprocess.Popen([PY, "-c", code], cwd=tmp_path, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (limit, limit)))
    p.wait()
    [pe] = tool.wait_events("ProcessExit", by_pid(p.pid))
    assert pe["signal"] == 11
    assert pe["core_dumped"] is core


def test_multithreaded_exit_from_other_thread_is_one_event(tool):
    code = textwrap.dedent("""
        import os, threading, time
        ts = [threading.Thread(target=time.sleep, args=(5,), daemon=True) for _ in range(4)]
        for t in ts: t.start()
        threading.Thread(target=lambda: os._exit(7)).start()
        time.sleep(5)
    """)
    p = subprocess.run([PY, "-c", code])
    assert p.returncode == 7
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]
    tool.wait_events("ProcessExit", by_pid(pid))
    time.sleep(0.5)  # would-be duplicates from other threads have arrived by now
    exits = [f for f in tool.of_kind("ProcessExit") if f["pid"] == pid]
    assert len(exits) == 1
    assert exits[0]["exit_code"] == 7


def test_200_arguments(tool):
    args = [f"arg{i}" for i in range(200)]
    p = subprocess.run(["/bin/true", *args])
    assert p.returncode == 0
    [ex] = tool.wait_events("ToolExec", lambda f: f["argv"][1:] == args)
    assert ex["argv"] == ["/bin/true", *args] and ex["argv_truncated"] is False


def test_100000_byte_argument(tool):
    big = "x" * 99_990 + "END"
    subprocess.run(["/bin/true", big], check=True)
    [ex] = tool.wait_events("ToolExec", lambda f: f["argv"][:1] == ["/bin/true"]
                            and len(f["argv"]) == 2 and f["argv"][1].endswith("END"))
    assert ex["argv"][1] == big and ex["argv_truncated"] is False


def test_argv_beyond_limit_is_truncated(tool):
    args = ["y" * 100_000, "z" * 100_000]  # 200 KB > the default 128 KiB
    subprocess.run(["/bin/true", *args], check=True)
    [ex] = tool.wait_events("ToolExec", lambda f: f["argv_truncated"]
                            and f["argv"][:1] == ["/bin/true"])
    total = sum(len(a) + 1 for a in ex["argv"])
    assert 128 * 1024 - 1 <= total <= 128 * 1024 + 1
    assert ex["argv"][1] == args[0]


def test_non_utf8_argv_and_paths(tool, tmp_path):
    bad = b"caf\xe9-\xff"
    subprocess.run([b"/bin/true", bad], check=True)
    [ex] = tool.wait_events("ToolExec", lambda f: f["argv"][:1] == ["/bin/true"]
                            and len(f["argv"]) == 2 and f["argv"][1].startswith("caf"))
    assert ex["argv"][1] == bad.decode("utf-8", errors="replace")
    target = os.path.join(os.fsencode(tmp_path), b"f-\xff\xfe.txt")
    code = f"open({target!r}, 'wb').write(b'x')"
    subprocess.run([PY, "-c", code], check=True)
    want = target.decode("utf-8", errors="replace")
    tool.wait_events("FileAccess", lambda f: f["path"] == want)


def test_setuid_root_allowed_and_denied(tool):
    # Real uid 1000 keeping saved/effective root: setuid(0) is allowed (as in a setuid binary).
    allowed = "import os; os.setresuid(1000, 0, 0); os.setuid(0)"
    denied = ("import os\nos.setresuid(1000, 1000, 1000)\n"
              "try:\n    os.setuid(0)\nexcept PermissionError:\n    pass")
    pa = subprocess.run([PY, "-c", allowed], check=True)
    pd = subprocess.run([PY, "-c", denied], check=True)
    assert pa.returncode == pd.returncode == 0
    pid_a = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [allowed])[0]["pid"]
    pid_d = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [denied])[0]["pid"]
    [a] = tool.wait_events("SecurityAction", by_pid(pid_a))
    [d] = tool.wait_events("SecurityAction", by_pid(pid_d))
    assert a["kind"] == d["kind"] == "setuid-root"
    assert a["detail"] == "setuid(0) = 0"
    assert d["detail"] == "setuid(0) = -1 EPERM"


def test_setuid_in_multithreaded_process_is_one_action(tool):
    # glibc applies setuid() to every thread (one syscall per thread): one action is reported.
    code = textwrap.dedent("""
        import os, threading, time
        ev = threading.Event()
        ts = [threading.Thread(target=ev.wait) for _ in range(4)]
        for t in ts: t.start()
        os.setresuid(1000, 0, 0)
        os.setuid(0)
        ev.set()
    """)
    subprocess.run([PY, "-c", code], check=True)
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]
    tool.wait_events("ProcessExit", by_pid(pid))
    time.sleep(0.3)
    acts = [f for f in tool.of_kind("SecurityAction") if f["pid"] == pid]
    assert [a["detail"] for a in acts] == ["setuid(0) = 0"]


def test_ptrace_attach(tool):
    target = subprocess.Popen(["sleep", "30"])
    code = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.ptrace(16, {target.pid}, 0, 0) == 0, ctypes.get_errno()
        os.waitpid({target.pid}, 0)
        libc.ptrace(17, {target.pid}, 0, 0)
    """)
    try:
        subprocess.run([PY, "-c", code], check=True)
    finally:
        target.kill()
        target.wait()
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]
    [act] = tool.wait_events("SecurityAction", by_pid(pid))
    assert act["kind"] == "ptrace"
    assert act["detail"] == f"PTRACE_ATTACH pid {target.pid} = 0"


def test_bind_listen(tool):
    code = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(s.getsockname()[1])")
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout
    port = int(out)
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]
    [act] = tool.wait_events("SecurityAction", by_pid(pid))
    assert act["kind"] == "bind"
    assert act["detail"] == f"listen 127.0.0.1:{port} = 0"


def test_file_create_write_unlink_relative_and_absolute(tool, tmp_path):
    sub = tmp_path / "sub"
    code = textwrap.dedent(f"""
        import os
        os.mkdir("sub")
        open("rel.txt", "w").write("a")                   # relative to cwd
        open({str(tmp_path / 'abs.txt')!r}, "a").close()  # absolute
        fd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
        open("sub/inner.txt", "w").close()
        open("ro.txt", "w").close()
        open("ro.txt").read()                              # read-only: not reported
        os.unlink("rel.txt")
        os.unlink({str(tmp_path / 'abs.txt')!r})
        os.unlink("inner.txt", dir_fd=fd)                  # unlinkat relative to a dirfd
        os.rmdir("sub")
    """)
    subprocess.run([PY, "-c", code], check=True, cwd=tmp_path, env=unmeasured_env())
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]
    tool.wait_events("ProcessExit", by_pid(pid))
    deletes = tool.wait_events("FileDelete", by_pid(pid), count=4)
    writes = [f for f in tool.of_kind("FileAccess") if f["pid"] == pid]
    assert [w["path"] for w in writes] == [
        f"{tmp_path}/rel.txt", f"{tmp_path}/abs.txt", f"{sub}/inner.txt", f"{tmp_path}/ro.txt"]
    assert all(w["write"] is True for w in writes)
    assert writes[0]["flags"] & os.O_CREAT and writes[1]["flags"] & os.O_APPEND
    assert [d["path"] for d in deletes] == [
        f"{tmp_path}/rel.txt", f"{tmp_path}/abs.txt", f"{sub}/inner.txt", str(sub)]


def test_each_open_syscall_with_its_flags_and_folded_counts(tool, tmp_path):
    """open, creat, openat2 and openat with write intent are reported with the flags the program
    passed (read at syscall exit); read-only and failed opens are not; 500 opens of one file
    fold into events whose counts add up to exactly 500."""
    code = textwrap.dedent("""
        import ctypes, os, struct
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        L, AT = ctypes.c_long, ctypes.c_long(-100)
        def call(nr, *args):
            fd = libc.syscall(L(nr), *args)
            if fd >= 0:
                os.close(fd)
        call(2, b"open.txt", L(os.O_WRONLY | os.O_CREAT), L(0o600))            # open
        call(85, b"creat.txt", L(0o600))                                        # creat
        how = struct.pack("QQQ", os.O_RDWR | os.O_CREAT, 0o600, 0)
        call(437, AT, b"openat2.txt", how, L(len(how)))                         # openat2
        call(257, AT, b"creat.txt", L(os.O_RDONLY | os.O_TRUNC), L(0))          # truncates
        call(257, AT, b"creat.txt", L(os.O_RDONLY), L(0))                       # read-only
        call(257, AT, b"none/x.txt", L(os.O_WRONLY | os.O_CREAT), L(0o600))     # fails
        for _ in range(500):
            call(257, AT, b"fold.txt", L(os.O_WRONLY | os.O_CREAT), L(0o600))
        call(257, AT, b"last.txt", L(os.O_WRONLY | os.O_CREAT), L(0o600))
    """)
    subprocess.run([PY, "-c", code], check=True, cwd=tmp_path, env=unmeasured_env())
    pid = tool.wait_events("ToolExec", lambda f: f["argv"][-1:] == [code])[0]["pid"]

    def writes():
        return [w for w in tool.of_kind("FileAccess") if w["pid"] == pid]

    def folded():
        return sum(w["count"] for w in writes() if w["path"] == f"{tmp_path}/fold.txt") == 500
    wait_for(folded, what="FileAccess counts of fold.txt adding up to 500")
    seen = writes()
    paths = list(dict.fromkeys(w["path"] for w in seen))
    assert paths == [f"{tmp_path}/{n}" for n in
                     ("open.txt", "creat.txt", "openat2.txt", "fold.txt", "last.txt")]
    flags = {(w["path"].rsplit("/", 1)[1], w["flags"], w["count"]) for w in seen
             if not w["path"].endswith("fold.txt")}
    assert flags == {("open.txt", os.O_WRONLY | os.O_CREAT, 1),
                     ("creat.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 1),
                     ("openat2.txt", os.O_RDWR | os.O_CREAT, 1),
                     ("creat.txt", os.O_RDONLY | os.O_TRUNC, 1),
                     ("last.txt", os.O_WRONLY | os.O_CREAT, 1)}
    assert {w["flags"] for w in seen if w["path"].endswith("fold.txt")} == {
        os.O_WRONLY | os.O_CREAT}


def test_heartbeat_counts(tmp_path):
    from tests.support.tools import wait_for
    prog = _copy_true(tmp_path, "zzhb")
    with running("obs-exec", "--comm", prog.name, "--heartbeat-interval", "0.3") as r:
        for i in range(5):
            subprocess.run([str(prog), str(i)], check=True)
        r.wait_events("ProcessExit", lambda f: f["comm"] == prog.name, count=5)

        def settled():
            beats = [e for e in r.events() if "CollectorHeartbeat" in e["event"]]
            last = beats[-1] if beats else None
            counts = last["event"]["CollectorHeartbeat"]["counts"] if last else {}
            return last if counts.get("ProcessExit") == 5 else None
        last = wait_for(settled, 10, "a heartbeat counting the five exits")
    h = last["event"]["CollectorHeartbeat"]
    assert h["tool"] == "obs-exec" and h["dropped"] == 0 and h["output_dropped"] == 0
    assert h["counts"]["ToolExec"] == 5 and h["interval_secs"] == 0.3
    assert "tracepoint:sched:sched_process_exec" in h["attached_probes"]
    assert last["identity"] == {"agent": None, "task": None, "session": None}
    assert last["provider"] is None


def test_sigint_detaches_and_exits_zero():
    with running("obs-exec") as r:
        assert r.stop(signal.SIGINT) == 0
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    assert f"pids python3({r.proc.pid})" not in out and f"({r.proc.pid})" not in out


def _copy_true(tmp_path, prefix):
    """/bin/true under a comm unique to this test run: another run of the suite on the same
    machine cannot add to what a --comm filter sees."""
    import shutil
    dst = tmp_path / f"{prefix}{os.getpid()}"[:15]
    shutil.copy("/bin/true", dst)
    return dst


def test_filter_comm(tmp_path):
    prog = _copy_true(tmp_path, "zzcomm")
    with running("obs-exec", "--comm", prog.name) as r:
        subprocess.run(["/bin/true", "other"], check=True)
        p = subprocess.run([str(prog), "mine"], check=True)
        assert p.returncode == 0
        r.wait_events("ProcessExit", lambda f: f["comm"] == prog.name)
    kinds = [e for e in r.events() if "CollectorHeartbeat" not in e["event"]]
    assert kinds and all(e["process"]["comm"] == prog.name for e in kinds)
    assert [e["event"]["ToolExec"]["argv"] for e in kinds if "ToolExec" in e["event"]] == [
        [str(prog), "mine"]]


def test_filter_pid_with_descendants():
    # The agent waits (read) until the tool is attached, however long start-up takes.
    agent = subprocess.Popen(["sh", "-c", "read go; /bin/true child; sh -c '/bin/true grandchild'"],
                             stdin=subprocess.PIPE)
    with running("obs-exec", "--pid", str(agent.pid)) as r:
        subprocess.run(["/bin/true", "outsider"], check=True)
        agent.communicate(b"go\n")
        r.wait_events("ProcessExit", lambda f: f["pid"] == agent.pid)
    argvs = [e["event"]["ToolExec"]["argv"] for e in r.events() if "ToolExec" in e["event"]]
    assert ["/bin/true", "child"] in argvs and ["/bin/true", "grandchild"] in argvs
    assert ["/bin/true", "outsider"] not in argvs


def test_filter_cgroup(tmp_path):
    from tests.support.cgroups import cgroup, run_in
    with cgroup() as cg, running("obs-exec", "--cgroup", str(cg)) as r:
        subprocess.run(["/bin/true", "outside"], check=True)
        run_in(cg, ["/bin/true", "inside"], check=True)
        r.wait_events("ToolExec", lambda f: f["argv"] == ["/bin/true", "inside"])
        r.wait_events("ProcessExit", lambda f: f["comm"] == "true")
    argvs = [e["event"]["ToolExec"]["argv"] for e in r.events() if "ToolExec" in e["event"]]
    assert argvs == [["/bin/true", "inside"]]


def test_bad_options_one_line_exit_2():
    from tests.support.tools import tool_cmd
    for args in (["--comm", "x" * 40], ["--pid", "999999999"], ["--cgroup", "/nonexistent"],
                 ["--cgroup", ""], ["--cgroup", "."], ["--cgroup", "/sys/fs/cgroup/unified"],
                 ["--max-argv", "100"], ["--ring-size", "3"], ["--format", "xml"],
                 ["--pid", "abc"], ["--no-such-option"]):
        p = subprocess.run(tool_cmd("obs-exec", *args), capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("obs-exec: "), (args, p.stderr)


def test_head_1_exits_quietly(tmp_path):
    from tests.support.tools import tool_cmd, wait_for
    hb = tmp_path / "hb.json"
    cmd = " ".join(tool_cmd("obs-exec", "--format", "json", "--heartbeat-file", str(hb)))
    proc = subprocess.Popen(cmd + " | head -1", shell=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, executable="/bin/bash")
    wait_for(hb.exists, 60, "attach")  # execs before that would not be seen

    def ended() -> bool:  # a line for head, then lines that find the pipe closed
        subprocess.run(["/bin/true"])
        return proc.poll() is not None
    wait_for(ended, 30, "the pipeline to end")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert err == b""
    assert out.count(b"\n") == 1


def test_short_lived_process_in_a_pod_cgroup_has_its_pod(tool):
    """/bin/echo is gone before its exec is decoded: container and pod come from the cgroup
    filesystem (cgroup id = directory inode), not from /proc/<pid>/cgroup."""
    import uuid

    from tests.support.cgroups import cgroup, run_in
    pod = str(uuid.uuid4())
    cid = uuid.uuid4().hex * 2
    tiers = ["kubepods.slice", "kubepods-besteffort.slice",
             f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice",
             f"cri-containerd-{cid}.scope"]
    with cgroup("obs-test-k8s") as top:
        path = top.joinpath(*tiers)
        path.mkdir(parents=True)  # made just now: the tool has never seen this cgroup id
        try:
            # Stopped, the tool decodes both execs only after both processes are reaped, as
            # happens under load; the kernel side keeps the records in the ring buffer.
            tool.proc.send_signal(signal.SIGSTOP)
            try:
                for word in ("first", "second"):
                    run_in(path, ["/bin/echo", word], check=True, stdout=subprocess.DEVNULL)
            finally:
                tool.proc.send_signal(signal.SIGCONT)
            execs = tool.wait_events("ToolExec", lambda f: f["argv"][:1] == ["/bin/echo"]
                                     and f["_env"]["process"]["cgroup_id"] == path.stat().st_ino,
                                     count=2)
        finally:
            for d in [path, *path.parents][:len(tiers)]:
                d.rmdir()  # children first; `cgroup` removes the top
    for ex in execs:
        proc = ex["_env"]["process"]
        assert (proc["container_id"], proc["pod_uid"]) == (cid, pod), proc
        assert ex["_env"]["identity"]["session"] == pod


def test_human_output_escapes_what_a_watched_process_names(tmp_path):
    """touch $'esc\\e[1A\\e[2Kfake' must not move the operator's cursor (JSON stays exact)."""
    from tests.support.tools import tool_cmd, wait_for
    name = "esc\x1b[1A\x1b[2Kfake"
    hb, out = tmp_path / "hb", tmp_path / "out"
    with open(out, "wb") as o:
        proc = subprocess.Popen(tool_cmd("obs-exec", "--files", "--format", "human",
                                         "--heartbeat-file", str(hb), "--comm", "touch"),
                                stdout=o, stderr=subprocess.PIPE)
    try:
        wait_for(hb.exists, 60, "obs-exec to attach")
        subprocess.run(["touch", tmp_path / name], check=True)
        wait_for(lambda: b"fake" in out.read_bytes(), 30, "the FileAccess line")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    text = out.read_bytes()
    assert b"\x1b" not in text and b"\x1b" not in err
    assert f"path={tmp_path}/esc\\x1b[1A\\x1b[2Kfake".encode() in text


def test_node_name_and_collector_id_from_the_deployment(tmp_path):
    prog = _copy_true(tmp_path, "zzobsnode")
    env = {"OBS_NODE_NAME": "node-a.example", "OBS_COLLECTOR_ID": "node-a/obs-exec"}
    with running("obs-exec", "--comm", prog.name, env=env) as r:
        subprocess.run([str(prog)], check=True)
        [ex] = r.wait_events("ToolExec", lambda f: f["comm"] == prog.name)
    import orjson
    hb = orjson.loads((r.out_path.parent / "heartbeat.json").read_bytes())
    assert ex["_env"]["host"] == "node-a.example"
    assert hb["host"] == hb["event"]["CollectorHeartbeat"]["node_name"] == "node-a.example"
    assert hb["event"]["CollectorHeartbeat"]["collector_id"] == "node-a/obs-exec"
