"""obs-net against the real kernel: real connections (curl, CPython sockets, raw ClientHellos
through every send path) and real resolver traffic (glibc's getaddrinfo under a private
/etc/resolv.conf pointing at a local DNS server)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from libobs.kernel import program
from libobs.net import decode
from tests.support.dns_server import dns_server
from tests.support.hosts import mapped
from tests.support.tls_server import tls_server
from tests.support.tools import running, tool_cmd
from tests.unit.test_parse_tls import big_hello, records

pytestmark = pytest.mark.kernel
PY = sys.executable
# /etc/hosts is shared with any other run of the suite on this machine: a name of our own, or
# two runs map it twice and getaddrinfo() sorts the two answers with UDP connect()s.
HOST = f"obs-net-{uuid.uuid4().hex[:8]}.openai.com"
ADDR = "127.0.0.1"


@pytest.fixture(scope="module")
def server():
    with tls_server([HOST]) as srv, mapped({HOST: ADDR}):
        yield srv


@pytest.fixture(scope="module")
def tool():
    with running("obs-net", "--dns-timeout", "1", "--heartbeat-interval", "1") as r:
        yield r
    assert r.status == 0, r.stderr()


@pytest.fixture(autouse=True)
def _fresh(request):
    """Each test matches its own processes by pid: only events from its start on."""
    if "tool" in request.fixturenames:
        request.getfixturevalue("tool").fresh_events()


def egress(tool, pid: int, count: int = 1) -> list[dict]:
    tool.wait_events("Egress", lambda f: f["pid"] == pid, count=count)
    time.sleep(0.5)  # one event per connection: a second one would show up now
    found = [f for f in tool.of_kind("Egress") if f["pid"] == pid]
    assert len(found) == count, [{k: v for k, v in f.items() if k != "_env"} | {
        "ts": f["_env"]["ts"]} for f in found]
    return found


def py(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen[str]) -> int:
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return p.pid


def test_record_layout_matches_the_compiled_program():
    prog = program.Program("net.bpf.c", program.base_defines(1 << 20) | {"SNI": True, "DNS": True})
    try:
        leaf = prog.bpf[b"payload_scratch"].Leaf
        assert leaf.data.offset == decode.PAYLOAD_DATA
        assert leaf.fd.offset == decode.PAYLOAD.offset and leaf.peer.offset == 96
        assert ctypes.sizeof(leaf) == decode.PAYLOAD_DATA + 2 * decode.HELLO_CAP
    finally:
        prog.close()


def test_curl_egress_with_sni_and_provider(tool, server):
    p = subprocess.Popen(["curl", "-sS", "--cacert", str(server.cafile), "-o", "/dev/null",
                          server.url(HOST, size=10)])
    assert p.wait(timeout=60) == 0
    [e] = egress(tool, p.pid)
    assert {k: e[k] for k in ("peer", "port", "family", "sni", "proto")} == {
        "peer": ADDR, "port": server.port, "family": "ipv4", "sni": HOST, "proto": "tcp"}
    assert e["_env"]["provider"] == "OpenAi"
    assert e["_env"]["identity"]["task"] == str(p.pid)
    assert e["_env"]["process"]["comm"] == "curl"


SEND_HELLO = """
    import os, socket, sys
    port, method, hello = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
    s = socket.create_connection(("127.0.0.1", port))
    parts = [hello[:5], hello[5:700], hello[700:]]
    if method == "write":
        os.write(s.fileno(), hello)
    elif method == "send":
        s.send(hello)
    elif method == "sendmsg":
        s.sendmsg(parts)
    elif method == "writev":
        os.writev(s.fileno(), parts)
    s.recv(100)
"""


@pytest.mark.parametrize("method", ["write", "send", "sendmsg", "writev"])
def test_big_hello_through_every_send_path(tool, server, method):
    """A hand-built post-quantum-sized ClientHello (SNI past byte 1,500), split across iovecs
    for writev and sendmsg."""
    name = f"{method}.big-hello.anthropic.com"
    hello = records(big_hello(name.encode()))
    assert len(hello) > 1536 and hello.index(name.encode()) > 1500
    pid = finished(py(SEND_HELLO, server.port, method, hello.hex()))
    [e] = egress(tool, pid)
    assert e["sni"] == name and e["_env"]["provider"] == "Anthropic"


def test_connect_called_again_is_one_connection(tool, server):
    # A non-blocking connect() polled by calling connect() again: the second call returns 0
    # once established (some event loops do this). One connection, one Egress.
    name = "again.big-hello.anthropic.com"
    pid = finished(py("""
        import select, socket, sys
        s = socket.socket()
        s.setblocking(False)
        first = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
        select.select([], [s], [], 5)
        again = s.connect_ex(("127.0.0.1", int(sys.argv[1])))
        assert first in (0, 115) and again in (0, 106), (first, again)
        s.setblocking(True)
        s.send(bytes.fromhex(sys.argv[2]))
        s.recv(100)
    """, server.port, records(big_hello(name.encode())).hex()))
    [e] = egress(tool, pid)
    assert e["sni"] == name


def test_ipv6_and_v4_mapped(tool):
    code = """
        import socket, sys, time
        srv = socket.socket(socket.AF_INET6)
        srv.bind(("::", 0))
        srv.listen()
        port = srv.getsockname()[1]
        for addr in ("::1", "::ffff:127.0.0.1"):
            c = socket.socket(socket.AF_INET6)
            c.connect((addr, port))
            c.send(b"GET / HTTP/1.1\\r\\n\\r\\n")
            c.close()
        print(port)
    """
    p = py(code)
    port = int(p.communicate(timeout=30)[0])
    found = egress(tool, p.pid, count=2)
    assert sorted((f["peer"], f["family"], f["port"], f["sni"]) for f in found) == [
        ("127.0.0.1", "ipv4", port, None), ("::1", "ipv6", port, None)]


def test_connected_udp_is_reported_at_connect(tool):
    p = py("""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", 9))
        time.sleep(3)
    """)
    try:
        [e] = egress(tool, p.pid)  # while the socket is still open
        assert (e["proto"], e["peer"], e["port"], e["sni"]) == ("udp", "127.0.0.1", 9, None)
    finally:
        p.kill()
        p.wait()


def test_tcp_without_write_reported_after_the_wait(tool, server):
    p = py("""
        import socket, time
        s = socket.create_connection(("127.0.0.1", int(__import__("sys").argv[1])))
        print("connected", flush=True)
        time.sleep(30)
    """, server.port)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "connected"
        t0 = time.monotonic()
        [e] = egress(tool, p.pid)
        print(f"Egress {time.monotonic() - t0:.2f} s after connect (hold 0.3 s), socket open")
        assert e["sni"] is None and p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_tcp_closed_without_write(tool, server):
    pid = finished(py("""
        import socket, sys
        socket.create_connection(("127.0.0.1", int(sys.argv[1]))).close()
    """, server.port))
    [e] = egress(tool, pid)
    assert e["sni"] is None and e["port"] == server.port


@pytest.fixture(scope="module")
def dns():
    tag = uuid.uuid4().hex[:8]
    names = {f"{tag}.api.openai.com": ["127.0.0.9", "::1"], f"{tag}.target.example": ["10.1.2.3"]}
    with dns_server(names, cnames={f"{tag}.alias.example": f"{tag}.target.example"}) as d:
        d.tag = tag  # type: ignore[attr-defined]
        yield d


def dns_events(tool, pid: int, count: int) -> list[dict]:
    tool.wait_events("Dns", lambda f: f["pid"] == pid, count=count, timeout=15)
    time.sleep(0.3)
    return sorted((f for f in tool.of_kind("Dns") if f["pid"] == pid), key=lambda f: f["qtype"])


def test_getaddrinfo_sendmmsg_a_and_aaaa(tool, dns):
    name = f"{dns.tag}.api.openai.com"
    p = subprocess.Popen(dns.command(["getent", "ahosts", name]), stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    assert b"127.0.0.9" in out
    found = tool.wait_events("Dns", lambda f: f["query"] == name, count=2, timeout=15)
    by_type = {f["qtype"]: f for f in found}
    assert by_type["A"]["answers"] == ["127.0.0.9"] and by_type["AAAA"]["answers"] == ["::1"]
    for f in found:
        assert f["server"] == dns.addr and f["proto"] == "udp"
        assert f["_env"]["provider"] == "OpenAi"
        assert f["_env"]["process"]["comm"] == "getent"
    assert ("A" in {q for n, q in dns.zone.queries if n == name})
    [eg] = egress(tool, found[0]["pid"])  # glibc's connected UDP socket (port-0 probes skipped)
    assert (eg["peer"], eg["port"], eg["proto"]) == (dns.addr, 53, "udp")


def test_dns_over_tcp_with_cname(tool, dns):
    name = f"{dns.tag}.alias.example"
    p = subprocess.run(dns.command(["getent", "ahosts", name], use_vc=True),
                       capture_output=True, timeout=30)
    assert b"10.1.2.3" in p.stdout
    found = tool.wait_events("Dns", lambda f: f["query"] == name, count=2, timeout=15)
    by_type = {f["qtype"]: f for f in found}
    assert by_type["A"]["answers"] == [f"{dns.tag}.target.example", "10.1.2.3"]
    assert by_type["AAAA"]["answers"] == [f"{dns.tag}.target.example"]
    assert all(f["proto"] == "tcp" and f["_env"]["provider"] is None for f in found)


PY_QUERY = """
    import socket, struct, sys
    addr, name, how = sys.argv[1], sys.argv[2], sys.argv[3]
    q = struct.pack(">6H", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    q += struct.pack(">2H", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    if how == "sendto":
        s.sendto(q, (addr, 53))
        s.recvfrom(2048)
    else:
        s.sendmsg([q[:12], q[12:]], [], 0, (addr, 53))
        s.recvmsg(2048)
"""


@pytest.mark.parametrize("how", ["sendto", "sendmsg"])
def test_unconnected_udp_query(tool, dns, how):
    name = f"{dns.tag}.target.example"
    pid = finished(py(PY_QUERY, dns.addr, name, how))
    [f] = dns_events(tool, pid, 1)
    assert (f["query"], f["qtype"], f["answers"], f["server"]) == (name, "A", ["10.1.2.3"],
                                                                    dns.addr)


def test_query_without_reply(tool):
    p = py("""
        import socket, struct
        q = struct.pack(">6H", 0x4321, 0x0100, 1, 0, 0, 0) + b"\\x07noreply\\x07example\\0"
        q += struct.pack(">2H", 28, 1)
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(q, ("127.53.255.254", 53))
    """)
    pid = finished(p)
    [f] = dns_events(tool, pid, 1)  # --dns-timeout 1
    assert (f["query"], f["qtype"], f["answers"]) == ("noreply.example", "AAAA", None)


WAIT_THEN_CONNECT = """
    import socket, subprocess, sys
    port, ca, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.stdin.readline()
    curl = subprocess.run(["curl", "-sS", "--cacert", ca, "-o", "/dev/null", url])
    socket.create_connection(("127.0.0.1", port)).close()
    print(curl.returncode, flush=True)
"""


def test_pid_filter_follows_children_and_no_dns(server, dns):
    args = (server.port, server.cafile, server.url(HOST, size=10))
    watched = subprocess.Popen([PY, "-c", textwrap.dedent(WAIT_THEN_CONNECT), *map(str, args)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([PY, "-c", textwrap.dedent(WAIT_THEN_CONNECT), *map(str, args)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with running("obs-net", "--pid", str(watched.pid), "--no-dns") as r:
        for p in (watched, other):
            out, _ = p.communicate("go\n", timeout=60)
            assert out.strip() == "0"
        subprocess.run(dns.command(["getent", "ahosts", f"{dns.tag}.target.example"]),
                       capture_output=True, timeout=30)
        r.wait_events("Egress", lambda f: f["pid"] == watched.pid)
        time.sleep(1)
        r.stop()
    found = r.of_kind("Egress")
    assert {f["pid"] for f in found if f["pid"] == watched.pid} == {watched.pid}
    curl = [f for f in found if f["_env"]["process"]["ppid"] == watched.pid]
    assert [f["sni"] for f in curl] == [HOST]          # the watched process's child
    assert not [f for f in found if f["pid"] == other.pid or
                f["_env"]["process"]["ppid"] == other.pid]
    assert r.of_kind("Dns") == []


def test_bad_options_exit_2(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("not toml [")
    for args in (["--sni-wait", "-1"], ["--providers", str(bad)], ["--dns-timeout", "0"],
                 ["--comm", "a-name-longer-than-15"]):
        p = subprocess.run(tool_cmd("obs-net", *args), capture_output=True,
                           text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("obs-net: ")
