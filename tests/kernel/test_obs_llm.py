"""obs-llm against the real kernel: real TLS clients (curl, CPython's ssl, Node's fetch) talking
HTTP/1.1 to a local TLS server that names itself as LLM providers. Timings are printed, not
asserted, except that the first byte is never the TLS handshake (the server waits D first)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.hosts import mapped
from tests.support.tls_server import tls_server
from tests.support.tools import running, tool_cmd

pytestmark = pytest.mark.kernel
PY = sys.executable
# Names of our own: /etc/hosts is shared with any other run of the suite on this machine.
HOST = f"obs-llm-{os.getpid()}.anthropic.com"
OTHER = f"obs-llm-{os.getpid()}.example.org"
ADDR = "127.0.0.1"


def ms(d: dict[str, int]) -> float:
    return d["secs"] * 1000 + d["nanos"] / 1e6


def show(events: list[dict]) -> None:
    for e in events:
        print(f"exchange {e['exchange']}: ttft {ms(e['ttft']):.1f} ms latency "
              f"{ms(e['latency']):.1f} ms req {e['req_bytes']} resp {e['resp_bytes']}")


@pytest.fixture(scope="module")
def server():
    with tls_server([HOST, OTHER]) as srv, mapped({HOST: ADDR, OTHER: ADDR}):
        yield srv


@pytest.fixture(scope="module")
def server6():
    with tls_server([HOST], addr="::1") as srv:
        yield srv


@pytest.fixture(scope="module")
def tool():
    with running("obs-llm", "--idle-flush", "2", "--heartbeat-interval", "1") as r:
        yield r
    assert r.status == 0, r.stderr()


def calls(tool, pid: int, count: int, timeout: float = 30) -> list[dict]:
    tool.wait_events("LlmCall", lambda f: f["pid"] == pid, count=count, timeout=timeout)
    time.sleep(0.5)  # anything more for this pid would be a bug: let it show up
    found = [f for f in tool.of_kind("LlmCall") if f["pid"] == pid]
    show(found)
    return found


def test_curl_keep_alive_three_requests(tool, server):
    url = server.url(HOST, delay=400, chunks=4, interval=30, size=6000)
    proc = subprocess.Popen(["curl", "-sS", "--cacert", str(server.cafile), "-o", "/dev/null",
                             "-o", "/dev/null", "-o", "/dev/null", url, url, url])
    assert proc.wait(timeout=60) == 0
    found = calls(tool, proc.pid, 3)
    assert [f["exchange"] for f in found] == [1, 2, 3]
    for f in found:
        assert f["sni"] == HOST and f["peer"] == ADDR and f["port"] == server.port
        assert f["_env"]["provider"] == "Anthropic"
        assert f["_env"]["identity"]["task"] == str(proc.pid)
        assert f["resp_bytes"] >= 6000 and f["req_bytes"] > 60
        assert ms(f["ttft"]) >= 200  # the server waits 400 ms: tickets are not the first byte
        assert ms(f["latency"]) >= ms(f["ttft"])


CLIENT = textwrap.dedent("""
    import http.client, json, ssl, sys, time
    host, port, ca, n, delay, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
        int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    ctx = ssl.create_default_context(cafile=ca)
    if len(sys.argv) > 7:  # a ClientHello past 1.5 KiB: many long ALPN protocol names
        ctx.set_alpn_protocols([f"x-obs-{i:02d}-" + "p" * 180 for i in range(9)] + ["http/1.1"])
    conn = http.client.HTTPSConnection(host, port, context=ctx)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]})
    for i in range(n):
        conn.request("POST", f"/v1/messages?delay={delay}&size={size}&chunks=3&interval=20",
                     body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and len(r.read()) == size
    print("done", flush=True)
    time.sleep(float(sys.argv[7]) if len(sys.argv) > 7 else 0)
""")


def run_client(host: str, port: int, cafile, n: int, delay: int, size: int,
               *extra: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([PY, "-c", CLIENT, host, str(port), str(cafile), str(n), str(delay),
                        str(size), *extra], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_python_http_client_four_requests(tool, server):
    proc = subprocess.Popen([PY, "-c", CLIENT, HOST, str(server.port), str(server.cafile), "4",
                             "300", "20000"], stdout=subprocess.PIPE, text=True)
    assert proc.wait(timeout=120) == 0
    found = calls(tool, proc.pid, 4)
    assert [f["exchange"] for f in found] == [1, 2, 3, 4]
    for f in found:
        assert f["req_bytes"] > 3000 and f["resp_bytes"] >= 20000
        assert ms(f["ttft"]) >= 150


# A client that writes like rustls: one writev per flight, one iovec per TLS record, so its
# TLS 1.3 change_cipher_spec and Finished leave in one writev of two buffers (6 + 74 bytes).
VECTORED_CLIENT = textwrap.dedent("""
    import os, socket, ssl, sys
    host, port, ca, n, delay, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
        int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname=host)
    s = socket.create_connection((host, port))

    def flush():
        data, recs = out.read(), []
        while len(data) >= 5:
            end = 5 + int.from_bytes(data[3:5], "big")
            recs.append(data[:end])
            data = data[end:]
        if recs:
            assert os.writev(s.fileno(), recs) == sum(map(len, recs))

    def fill():
        data = s.recv(65536)
        assert data, "server closed"
        inc.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            fill()
    flush()
    for i in range(n):
        tls.write(f"GET /v1/messages?delay={delay}&size={size} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n".encode())
        flush()
        got = b""
        while b"\\r\\n\\r\\n" not in got or len(got.split(b"\\r\\n\\r\\n", 1)[1]) < size:
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                fill()
        assert got.startswith(b"HTTP/1.1 200")
    print("done", flush=True)
""")


def test_vectored_writer_finished_in_a_second_iovec(tool, server):
    """rustls-style writev: the Finished in the second buffer is still seen, so the server's
    session tickets are neither a call nor its first byte."""
    p = subprocess.Popen([PY, "-c", VECTORED_CLIENT, HOST, str(server.port), str(server.cafile),
                          "2", "400", "5000"], stdout=subprocess.PIPE, text=True)
    assert p.wait(timeout=120) == 0
    found = calls(tool, p.pid, 2)
    assert [f["exchange"] for f in found] == [1, 2]
    for f in found:
        assert f["resp_bytes"] >= 5000
        assert ms(f["ttft"]) >= 200  # the server waits 400 ms: tickets are not the first byte


def test_ipv6(tool, server6):
    code = textwrap.dedent("""
        import socket, ssl, sys
        port, ca = int(sys.argv[1]), sys.argv[2]
        ctx = ssl.create_default_context(cafile=ca)
        s = ctx.wrap_socket(socket.create_connection(("::1", port)),
                            server_hostname=sys.argv[3])
        for _ in range(2):
            s.sendall(b"GET /?delay=200&size=700 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            got = b""
            while b"\\r\\n\\r\\n" not in got or len(got.split(b"\\r\\n\\r\\n")[1]) < 700:
                got += s.recv(65536)
        s.close()
    """)
    proc = subprocess.Popen([PY, "-c", code, str(server6.port), str(server6.cafile), HOST])
    assert proc.wait(timeout=60) == 0
    found = calls(tool, proc.pid, 2)
    assert [f["exchange"] for f in found] == [1, 2]
    assert all(f["peer"] == "::1" and f["sni"] == HOST and f["resp_bytes"] >= 700
               for f in found)


def test_hello_without_sni_needs_all_tls(tool, server6):
    # http.client sends no SNI when connecting by address: nothing to classify
    proc = subprocess.Popen([PY, "-c", CLIENT.replace("HTTPSConnection(host, port",
                                                       "HTTPSConnection('::1', port"),
                             HOST, str(server6.port), str(server6.cafile), "1", "50", "50"],
                            stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == 0
    time.sleep(1)
    assert [f for f in tool.of_kind("LlmCall") if f["pid"] == proc.pid] == []


def test_node_fetch(tool, server, have_tool):
    have_tool("node")
    script = textwrap.dedent("""
        const url = process.argv[1];
        (async () => {
          for (let i = 0; i < 2; i++) {
            const r = await fetch(url, {method: "POST", body: JSON.stringify({prompt: "hi"}),
                                        headers: {"content-type": "application/json"}});
            if ((await r.text()).length !== 900) process.exit(3);
          }
        })();
    """)
    proc = subprocess.Popen(["node", "-e", script, server.url(HOST, delay=250, size=900)],
                            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(server.cafile)})
    assert proc.wait(timeout=60) == 0
    found = calls(tool, proc.pid, 2)
    assert len(found) == 2
    for f in found:
        assert f["sni"] == HOST and f["resp_bytes"] >= 900 and ms(f["ttft"]) >= 125


def test_big_client_hello(tool, server):
    """A ClientHello over 1.5 KiB (long ALPN list): the SNI is still read, the calls followed."""
    import ssl as _ssl

    ctx = _ssl.create_default_context()
    ctx.set_alpn_protocols([f"x-obs-{i:02d}-" + "p" * 180 for i in range(9)] + ["http/1.1"])
    incoming, outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
    with pytest.raises(_ssl.SSLWantReadError):
        ctx.wrap_bio(incoming, outgoing, server_hostname=HOST).do_handshake()
    assert len(outgoing.read()) > 1536
    proc = subprocess.Popen([PY, "-c", CLIENT, HOST, str(server.port), str(server.cafile), "2",
                             "100", "300", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.wait(timeout=60) == 0
    assert len(calls(tool, proc.pid, 2)) == 2


def test_killed_mid_stream(tool, server):
    code = textwrap.dedent("""
        import socket, ssl, sys, time
        port, ca, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        s = ssl.create_default_context(cafile=ca).wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname=host)
        s.sendall(b"GET /?delay=100&size=40000&chunks=40&interval=100 HTTP/1.1\\r\\n"
                  b"Host: x\\r\\n\\r\\n")
        got = 0
        while got < 4000:
            got += len(s.recv(65536))
        print("streaming", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([PY, "-c", code, str(server.port), str(server.cafile), HOST],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [f] = calls(tool, proc.pid, 1, timeout=10)
    assert 4000 <= f["resp_bytes"] < 40000


def test_idle_flush_while_connection_stays_open(tool, server):
    proc = subprocess.Popen([PY, "-c", CLIENT, HOST, str(server.port), str(server.cafile), "1",
                             "100", "500", "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        [f] = calls(tool, proc.pid, 1, timeout=10)  # --idle-flush 2: long before the close
        assert f["resp_bytes"] >= 500 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_other_tls_hosts_only_with_all_tls(tool, server):
    url = server.url(OTHER, delay=50, size=100)
    with running("obs-llm", "--all-tls", "--comm", "curl") as every:
        p = subprocess.Popen(["curl", "-sS", "--cacert", str(server.cafile), "-o", "/dev/null",
                              url])
        assert p.wait(timeout=60) == 0
        [f] = calls(every, p.pid, 1)
        assert f["sni"] == OTHER and f["_env"]["provider"] is None
    time.sleep(0.5)
    assert [f for f in tool.of_kind("LlmCall") if f["pid"] == p.pid] == []


def test_heartbeat_lists_probes(tool):
    hb = tool.wait_events("CollectorHeartbeat", count=1)[-1]
    probes = set(hb["attached_probes"])
    assert {"tracepoint:tcp:tcp_probe", "tracepoint:sock:sock_send_length",
            "tracepoint:sock:inet_sock_set_state"} <= probes
    assert hb["tool"] == "obs-llm" and hb["dropped"] == 0


def test_bad_options_exit_2(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[[provider]]\nname = 3\n")
    for args in (["--idle-flush", "0"], ["--providers", str(bad)], ["--ring-size", "3"]):
        p = subprocess.run(tool_cmd("obs-llm", *args), capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("obs-llm: ")
