"""obs-enforce against the real kernel: a cgroup of our own, clients that join it, real
connect()/sendto() results, Denied events, and what stays attached after the tool is gone."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hosts import mapped
from tests.support.tools import REPO, running, tool_cmd, wait_for

pytestmark = pytest.mark.kernel
PY = sys.executable
CGROUP2 = Path("/sys/fs/cgroup/unified")
PORT = 47611  # nothing listens here: an allowed connect gets ECONNREFUSED, a refused one EPERM

# A client that joins the cgroup before it makes any socket, then reports errno as JSON.
CLIENT = r"""
import errno, json, os, socket, sys, time
cg, action, *args = sys.argv[1:]
if cg != "-":
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))

def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def tcp(host, port, blocking=True):
    s = socket.socket(fam(host), socket.SOCK_STREAM)
    try:
        s.setblocking(blocking)
        s.settimeout(2) if blocking else None
        s.connect((host, int(port)))
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()

def udp(host, port, connected=False):
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    try:
        if connected:
            s.connect((host, int(port)))
            s.send(b"x")
        else:
            s.sendto(b"x", (host, int(port)))
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()

def dns(server, name):
    import dnslib
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(dnslib.DNSRecord.question(name).pack(), (server, 53))
    reply = dnslib.DNSRecord.parse(s.recv(4096))
    return [str(r.rdata) for r in reply.rr]

out = {"pid": os.getpid()}
if action == "tcp":
    out["errno"] = tcp(*args)
elif action == "tcpnb":
    out["errno"] = tcp(*args, blocking=False)
elif action == "udp":
    out["errno"] = udp(*args)
elif action == "udpconn":
    out["errno"] = udp(*args, connected=True)
elif action == "dns":
    out["answers"] = dns(*args)
elif action == "dnsconnect":  # look up, then connect at once: no time for user space
    server, name, host, port, mode = args
    out["answers"] = dns(server, name)
    out["errno"] = tcp(host, port, mode == "block")
elif action == "until":  # dns first if asked, then connect until the errno changes to `want`
    host, port, want, deadline = args[0], args[1], int(args[2]), float(args[3])
    blocking = args[4] == "block"
    if len(args) > 5:
        out["answers"] = dns(args[5], args[6])
    print(json.dumps({"ready": True}), flush=True)
    while time.monotonic() < deadline:
        if tcp(host, port, blocking) == want:
            out["t"] = time.monotonic()
            break
        time.sleep(0.005)
    out["errno"] = tcp(host, port, blocking)
print(json.dumps(out), flush=True)
"""


def client(cg: Path | str, action: str, *args: object) -> dict:
    p = subprocess.run([PY, "-c", CLIENT, str(cg), action, *map(str, args)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def attached(cg: Path) -> list[str]:
    p = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cg)], capture_output=True,
                       text=True, check=True)
    return sorted(e["attach_type"] for e in json.loads(p.stdout.strip() or "[]"))


GUARDS = ["cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_inet_ingress",
          "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg"]


@pytest.fixture
def cgroup() -> Iterator[Path]:
    cg = CGROUP2 / f"obs-test-{uuid.uuid4().hex[:10]}"
    cg.mkdir()
    try:
        yield cg
    finally:
        pins = Path("/sys/fs/bpf/obs") / str(cg.stat().st_ino)
        if pins.exists():
            for p in pins.iterdir():
                p.unlink()
            pins.rmdir()
        for pid in (cg / "cgroup.procs").read_text().split():
            (CGROUP2 / "cgroup.procs").write_text(pid)
        wait_for(lambda: _rmdir(cg), 5, f"rmdir {cg}")


def _rmdir(cg: Path) -> bool:
    try:
        cg.rmdir()
        return True
    except OSError:
        return False


@pytest.fixture
def denyfile(tmp_path) -> Path:
    tmp_path.chmod(0o755)
    f = tmp_path / "deny.txt"
    f.write_text("")
    f.chmod(0o644)
    return f


def write(path: Path, text: str) -> None:
    """Replace atomically, as an editor or the example controller does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    s = socket.socket()
    s.bind(("127.0.0.62", 0))
    s.listen(64)
    yield s.getsockname()
    s.close()


def test_denied_addresses_get_eperm_only_inside_the_cgroup(cgroup, denyfile, listener):
    write(denyfile, "# test\n127.0.0.61\n::1   # v6 loopback\n")
    with running("obs-enforce", str(cgroup), str(denyfile)) as tool:
        assert attached(cgroup) == GUARDS
        r4 = client(cgroup, "tcp", "127.0.0.61", PORT)
        assert r4["errno"] == errno.EPERM
        assert client(cgroup, "tcp", "::1", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "tcp", "::ffff:127.0.0.61", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "tcp", *listener)["errno"] == 0
        assert client(cgroup, "tcp", "127.0.0.1", PORT)["errno"] == errno.ECONNREFUSED
        for host in ("127.0.0.61", "::1"):  # outside the cgroup: untouched
            assert client("-", "tcp", host, PORT)["errno"] == errno.ECONNREFUSED
        [ev] = tool.wait_events("Denied", lambda f: f["pid"] == r4["pid"])
        assert ev == ev | {"action": "egress", "target": f"127.0.0.61:{PORT}",
                           "rule": "127.0.0.61", "guard": "obs-enforce", "protocol": "tcp"}
        assert ev["_env"]["process"]["cgroup_id"] == cgroup.stat().st_ino
        v6 = tool.wait_events("Denied", lambda f: f["target"] == f"[::1]:{PORT}")
        assert v6[0]["rule"] == "::1   # v6 loopback"
        tool.wait_events("Denied", lambda f: f["rule"] == "127.0.0.61", count=2)  # v4-mapped
    assert tool.status == 0, tool.stderr()
    assert attached(cgroup) == []


def test_udp_sends_to_denied_addresses_fail(cgroup, denyfile):
    write(denyfile, "127.0.0.67\n::1\n")
    with running("obs-enforce", str(cgroup), str(denyfile)) as tool:
        assert client(cgroup, "udp", "127.0.0.67", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "udpconn", "127.0.0.67", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "udp", "::1", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "udp", "127.0.0.68", PORT)["errno"] == 0
        assert client("-", "udp", "127.0.0.67", PORT)["errno"] == 0
        tool.wait_events("Denied", lambda f: f["protocol"] == "udp", count=3)


def test_hostname_from_etc_hosts_is_denied(cgroup, denyfile):
    with mapped({"blocked-host.obs-enforce.test": "127.0.0.63"}):
        write(denyfile, "Blocked-Host.obs-enforce.test.\n")
        with running("obs-enforce", str(cgroup), str(denyfile)) as tool:
            assert client(cgroup, "tcp", "127.0.0.63", PORT)["errno"] == errno.EPERM
            [ev] = tool.wait_events("Denied")
            assert ev["rule"] == "Blocked-Host.obs-enforce.test."


def test_an_edit_applies_within_two_seconds(cgroup, denyfile):
    write(denyfile, "127.0.0.61\n")
    with running("obs-enforce", str(cgroup), str(denyfile)):
        time.sleep(0.6)  # the first read is behind us: this is a change, not a start
        deadline = time.monotonic() + 10
        args = ["until", "127.0.0.64", PORT, errno.EPERM, deadline, "block"]
        p = subprocess.Popen([PY, "-c", CLIENT, str(cgroup), *map(str, args)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert json.loads(p.stdout.readline()) == {"ready": True}
        t0 = time.monotonic()
        write(denyfile, "127.0.0.61\n127.0.0.64\n")
        out = json.loads(p.stdout.readline())
        p.wait()
        assert out["errno"] == errno.EPERM
        assert out["t"] - t0 < 2.0 + 0.3  # the contract's bound, plus scheduling slack


def test_garbage_lines_are_reported_and_the_rest_applies(cgroup, denyfile):
    write(denyfile, "127.0.0.61\nnot a host\n1.2.3\n10.0.0.0/8\n::1\n")
    with running("obs-enforce", str(cgroup), str(denyfile)) as tool:
        assert client(cgroup, "tcp", "127.0.0.61", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "tcp", "::1", PORT)["errno"] == errno.EPERM
        err = tool.stderr()
        for lineno in (2, 3, 4):
            assert f"{denyfile}:{lineno}:" in err
        assert f"{denyfile}:1:" not in err and f"{denyfile}:5:" not in err
        # A vanished file keeps the previous policy.
        denyfile.unlink()
        wait_for(lambda: "keeping the previous policy" in tool.stderr(), 5, "report")
        assert client(cgroup, "tcp", "127.0.0.61", PORT)["errno"] == errno.EPERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_exit_leaves_nothing_attached(cgroup, denyfile, sig):
    write(denyfile, "127.0.0.61\n")
    with running("obs-enforce", str(cgroup), str(denyfile)) as tool:
        assert attached(cgroup) == GUARDS
        status = tool.stop(sig)
    assert status == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    wait_for(lambda: attached(cgroup) == [], 5, "detach")
    assert client(cgroup, "tcp", "127.0.0.61", PORT)["errno"] == errno.ECONNREFUSED


def test_pin_keeps_the_guard_and_a_restart_takes_it_over(cgroup, denyfile):
    write(denyfile, "127.0.0.61\n")
    pins = Path("/sys/fs/bpf/obs") / str(cgroup.stat().st_ino)
    with running("obs-enforce", str(cgroup), str(denyfile), "--pin") as tool:
        assert sorted(p.name for p in pins.iterdir()) == [
            "connect4", "connect6", "sendmsg4", "sendmsg6"]
    assert tool.status == 0, tool.stderr()
    guards = [g for g in GUARDS if g != "cgroup_inet_ingress"]
    assert attached(cgroup) == guards  # fail-closed: still enforcing with nobody running
    assert client(cgroup, "tcp", "127.0.0.61", PORT)["errno"] == errno.EPERM
    # A run without --pin guards beside the pinned links, and says they are still there.
    p = run_tool(str(cgroup), str(denyfile), "--duration", "0.5")
    assert p.returncode == 0 and "a pinned guard from an earlier --pin run is still attached " \
        f"(remove {pins} to release it)" in p.stderr, p.stderr
    assert attached(cgroup) == guards
    write(denyfile, "127.0.0.64\n")
    with running("obs-enforce", str(cgroup), str(denyfile), "--pin"):
        assert attached(cgroup) == GUARDS  # the pinned links were updated, not duplicated
        assert client(cgroup, "tcp", "127.0.0.64", PORT)["errno"] == errno.EPERM
        assert client(cgroup, "tcp", "127.0.0.61", PORT)["errno"] == errno.ECONNREFUSED
    for p in pins.iterdir():
        p.unlink()
    wait_for(lambda: attached(cgroup) == [], 5, "detach after unpinning")


def resolved(host: str) -> list[str]:
    return sorted({str(i[4][0]) for i in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def pick(host: str, want: str) -> str:
    """The address we mapped, unless another suite's mapping of the same name comes first."""
    addrs = resolved(host)
    return want if want in addrs else addrs[0]


def test_unapproved_provider_is_denied_on_the_first_connect(cgroup, listener):
    with mapped({"api.openai.com": "127.0.0.70", "api.anthropic.com": "127.0.0.62"}):
        openai = pick("api.openai.com", "127.0.0.70")
        with running("obs-enforce", str(cgroup), "--allow-provider", "Anthropic") as tool:
            r = client(cgroup, "tcp", openai, 443)
            assert r["errno"] == errno.EPERM
            assert client(cgroup, "tcp", *listener)["errno"] == 0  # api.anthropic.com
            assert client(cgroup, "tcp", "127.0.0.73", PORT)["errno"] == errno.ECONNREFUSED
            [ev] = tool.wait_events("Denied", lambda f: f["pid"] == r["pid"])
            assert ev["rule"] == "provider:OpenAi not allowed"
            assert ev["_env"]["provider"] == "OpenAi"


class FakeDns:
    """A UDP DNS server on address:53 answering A queries from a table."""

    def __init__(self, address: str, table: dict[str, str]):
        import dnslib

        self.dnslib, self.table = dnslib, table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        d = self.dnslib
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = d.DNSRecord.parse(data)
            reply = q.reply()
            name = str(q.q.qname).rstrip(".").lower()
            if name in self.table:
                reply.add_answer(d.RR(q.q.qname, d.QTYPE.A, rdata=d.A(self.table[name]), ttl=60))
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def dns_servers() -> Iterator[None]:
    trusted = FakeDns("127.0.0.65", {"api.mistral.ai": "127.0.0.72",
                                     "console.mistral.ai": "127.0.0.74",
                                     "blocked.obs-enforce.test": "127.0.0.75",
                                     "api.anthropic.com": "198.51.100.9"})
    untrusted = FakeDns("127.0.0.66", {"api.anthropic.com": "198.51.100.10"})
    yield
    trusted.close()
    untrusted.close()


def until(cg: Path, host: str, port: int, want: int, *dns: str, block: bool = True) -> dict:
    deadline = time.monotonic() + 3
    p = subprocess.run([PY, "-c", CLIENT, str(cg), "until", host, str(port), str(want),
                        str(deadline), "block" if block else "nb", *dns],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_dns_answers_in_the_cgroup_are_denied_before_they_are_read(cgroup, denyfile,
                                                                   dns_servers):
    """An exact listed name: the kernel learns the answer before the resolver returns it."""
    write(denyfile, "blocked.obs-enforce.test\n")
    with running("obs-enforce", str(cgroup), str(denyfile), "--allow-provider", "Anthropic",
                 "--dns-server", "127.0.0.65") as tool:
        for host in ("127.0.0.72", "127.0.0.75"):
            assert client(cgroup, "tcp", host, PORT)["errno"] == errno.ECONNREFUSED
        r = client(cgroup, "dnsconnect", "127.0.0.65", "API.Mistral.ai", "127.0.0.72", PORT,
                   "block")
        assert r["answers"] == ["127.0.0.72"] and r["errno"] == errno.EPERM
        [ev] = tool.wait_events("Denied", lambda f: f["pid"] == r["pid"])
        assert ev["rule"] == "provider:Mistral not allowed"
        assert ev["_env"]["provider"] == "Mistral"
        r = client(cgroup, "dnsconnect", "127.0.0.65", "blocked.obs-enforce.test",
                   "127.0.0.75", PORT, "block")
        assert r["errno"] == errno.EPERM
        [ev] = tool.wait_events("Denied", lambda f: f["pid"] == r["pid"])
        assert ev["rule"] == "blocked.obs-enforce.test"


def test_dns_answers_for_a_provider_subdomain_are_learned_in_user_space(cgroup, dns_servers):
    with running("obs-enforce", str(cgroup), "--allow-provider", "Anthropic") as tool:
        r = until(cgroup, "127.0.0.74", PORT, errno.EPERM, "127.0.0.65", "console.mistral.ai")
        assert r["answers"] == ["127.0.0.74"] and r["errno"] == errno.EPERM
        evs = tool.wait_events("Denied", lambda f: f["pid"] == r["pid"])
        assert evs[0]["rule"] == "provider:Mistral not allowed"


def test_deny_unclassified_allows_only_approved_providers(cgroup, dns_servers):
    with mapped({"api.anthropic.com": "198.51.100.7", "api.openai.com": "127.0.0.70"}):
        anthropic = pick("api.anthropic.com", "198.51.100.7")
        openai = pick("api.openai.com", "127.0.0.70")
        with running("obs-enforce", str(cgroup), "--allow-provider", "anthropic",
                     "--deny-unclassified", "--dns-server", "127.0.0.65") as tool:
            assert client(cgroup, "tcpnb", anthropic, 443)["errno"] == errno.EINPROGRESS
            r = client(cgroup, "tcpnb", "198.51.100.8", 443)
            assert r["errno"] == errno.EPERM
            assert client(cgroup, "udp", "198.51.100.8", 443)["errno"] == errno.EPERM
            assert client(cgroup, "tcp", openai, 443)["errno"] == errno.EPERM
            assert client(cgroup, "tcp", "127.0.0.1", PORT)["errno"] == errno.ECONNREFUSED
            assert client("-", "tcpnb", "198.51.100.8", 443)["errno"] == errno.EINPROGRESS
            [ev] = tool.wait_events("Denied", lambda f: f["pid"] == r["pid"])
            assert ev["rule"] == "policy:deny-unclassified" and ev["_env"]["provider"] is None
            # A trusted server's answer for an approved name opens its address at once...
            assert client(cgroup, "tcpnb", "198.51.100.9", 443)["errno"] == errno.EPERM
            ok = client(cgroup, "dnsconnect", "127.0.0.65", "api.anthropic.com",
                        "198.51.100.9", 443, "nb")
            assert ok["answers"] == ["198.51.100.9"] and ok["errno"] == errno.EINPROGRESS
            # ...an answer from anyone else does not.
            bad = client(cgroup, "dnsconnect", "127.0.0.66", "api.anthropic.com",
                         "198.51.100.10", 443, "nb")
            assert bad["answers"] == ["198.51.100.10"] and bad["errno"] == errno.EPERM
            time.sleep(0.5)  # nor does user space, once it has read the answer
            assert client(cgroup, "tcpnb", "198.51.100.10", 443)["errno"] == errno.EPERM
            assert client(cgroup, "tcpnb", "198.51.100.9", 443)["errno"] == errno.EINPROGRESS


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tool_cmd("obs-enforce", *args), capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_unknown_cgroup_is_one_line_and_exit_2(denyfile):
    p = run_tool("/sys/fs/cgroup/unified/no-such-obs-test", str(denyfile))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_tool("/sys/fs/cgroup/cpu", str(denyfile))  # a v1 hierarchy
    assert p.returncode == 2 and "cgroup-v2" in p.stderr


@pytest.mark.parametrize("arg", ["", ".", "/", "/sys/fs/cgroup/unified", "./"])
def test_the_cgroup_v2_root_is_refused_without_whole_host(denyfile, arg):
    """An unset variable ("$AGENT_CGROUP") must not cage every process on the host."""
    p = run_tool(arg, str(denyfile))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("obs-enforce: CGROUP ")
    if arg != "/":  # "/" is the host's root directory, which is no cgroup at all
        assert "cgroup-v2 root" in p.stderr and "--whole-host" in p.stderr
    assert attached(Path("/sys/fs/cgroup/unified")) == []


@pytest.mark.parametrize(("with_denyfile", "why"), [
    (False, "give a DENYFILE, --allow-provider, or both"),
    (True, "--deny-unclassified needs --allow-provider"),
])
def test_a_guard_without_what_it_needs_is_a_usage_error(cgroup, denyfile, with_denyfile, why):
    args = [str(denyfile), "--deny-unclassified"] if with_denyfile else []
    p = run_tool(str(cgroup), *args)
    assert p.returncode == 2 and p.stderr == f"obs-enforce: {why}\n"
    assert attached(cgroup) == []


def test_root_is_checked_before_any_hostname_is_resolved(cgroup, denyfile):
    denyfile.write_text("resolving-would-hang.example\n")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *tool_cmd("obs-enforce", str(cgroup), str(denyfile))],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 1 and p.stderr == (
        "obs-enforce: must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)\n")


def test_denyfile_writable_by_others_is_refused(cgroup, denyfile):
    denyfile.chmod(0o666)
    p = run_tool(str(cgroup), str(denyfile))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "writable by group or others" in p.stderr
    assert attached(cgroup) == []


def test_map_layouts_match_the_c():
    from libobs.guard import egress
    from libobs.kernel import program as probes

    prog = probes.Program("enforce.bpf.c", probes.base_defines(1 << 20))
    try:
        import ctypes

        b = prog.bpf
        for table in (b"deny", b"allow"):
            assert ctypes.sizeof(b[table].Key) == egress.KEY.size
            assert ctypes.sizeof(b[table].Leaf) == egress.VAL.size
        assert ctypes.sizeof(b[b"names"].Key) == egress.NAME_LEN
        assert ctypes.sizeof(b[b"names"].Leaf) == egress.NAME_VAL.size
        assert ctypes.sizeof(b[b"servers"].Key) == egress.KEY.size
    finally:
        prog.close()
