"""obs-ssl on the TLS stacks besides OpenSSL, against the real kernel: a Go client built here
(Go's crypto/tls, unstripped and stripped), libcurl built with GnuTLS and with NSS, each talking
to the local provider stand-in; exact models and token counts. And the stacks obs cannot read
are named, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import fakestack, gobuild
from tests.support import provider_server as ps
from tests.support.tools import Running, running, wait_for

pytestmark = pytest.mark.kernel
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")
COMM = "obs-stack-cli"  # every client runs under this comm; obs-ssl filters on it
_LINKS = Path(tempfile.mkdtemp(prefix="obs-stack-clients-"))
CURL_CLIENT = Path(__file__).resolve().parents[1] / "support" / "curl_ctypes.py"
LIBCURL = {"gnutls": "/usr/lib/x86_64-linux-gnu/libcurl-gnutls.so.4",
           "nss": "/usr/lib/x86_64-linux-gnu/libcurl-nss.so.4"}
LIB_OF = {"gnutls": "libgnutls.so.30", "nss": "libnspr4.so"}
FNS = {"gnutls": {"gnutls_record_send", "gnutls_record_recv"},
       "nss": {"PR_Write", "PR_Read", "PR_Send", "PR_Recv"}}


def as_client(target: Path, name: str = COMM) -> str:
    link = _LINKS / target.name / name
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)
    return str(link)


@pytest.fixture(scope="module")
def server():
    with ps.serving() as s:
        yield s


@pytest.fixture(scope="module")
def obs(server):
    with running("obs-ssl", "--heartbeat-interval", "1", "--rescan", "0.2",
                 "--comm", COMM) as r:
        yield r
    assert r.status == 0, r.stderr()


def headers_for(api: str) -> dict[str, str]:
    return {**ps.request_headers(api), "Content-Type": "application/json",
            "Accept-Encoding": "gzip"}


def expected(api: str, stream: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    path = ps.request_path(api, stream).split("?")[0]
    return ({"is_request": True, "model": ps.REQUEST_MODEL[api], "stream": stream,
             "path": path, **dict.fromkeys(TOKENS)},
            {"is_request": False, "stream": stream, "path": path, **ps.EXPECTED[(api, stream)]})


def strip(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("pid", "_env")}


def check_exchanges(obs: Running, pid: int, api: str, stream: bool, n: int) -> None:
    try:
        events = obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2 * n, timeout=15)
    except AssertionError:
        calls = [(f["is_read"], f["len"], f["content"][:70]) for f in obs.of_kind("SslContent")
                 if f["pid"] == pid]
        apis = [strip(f) for f in obs.of_kind("LlmApi") if f["pid"] == pid]
        raise AssertionError(f"pid {pid}: LlmApi {apis}; calls {calls}") from None
    assert len(events) == 2 * n
    want_req, want_resp = expected(api, stream)
    for req, resp in zip(events[::2], events[1::2], strict=True):
        assert strip(req) == want_req
        assert strip(resp) == want_resp
        assert resp["_env"]["provider"] == ps.PROVIDER_OF[api]


# ---- Go crypto/tls -----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["unstripped", "stripped"])
def goclient(request) -> Path:
    return gobuild.build("goclient", stripped=request.param)


def run_go(obs: Running, server: ps.Server, binary: Path, api: str, stream: bool,
           repeat: int) -> int:
    """Start the Go client, let obs-ssl find it in /proc, then let it make `repeat` requests
    on one connection. Its pid."""
    host = ps.HOST_OF[api]
    proc = subprocess.Popen(
        [as_client(binary), str(server.ca), server.url(host, ps.request_path(api, stream)),
         json.dumps(headers_for(api)), ps.request_body(api, stream).decode(), str(repeat)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GOCLIENT_STEP": "1"})
    assert proc.stdin and proc.stdout
    try:
        wait_for(lambda: f"attached to {binary} " in obs.stderr(), timeout=20,
                 what=f"obs-ssl to attach to {binary}")
        for _ in range(repeat):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n", proc.stderr.read() if proc.stderr else ""
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
def test_go_crypto_tls(obs, server, goclient, api, stream):
    pid = run_go(obs, server, goclient, api, stream, repeat=2)  # two on one keep-alive conn
    check_exchanges(obs, pid, api, stream, 2)
    content = [f for f in obs.of_kind("SslContent") if f["pid"] == pid]
    assert {f["lib"] for f in content} == {str(goclient)}
    assert not any(f["truncated"] for f in content)
    writes = "".join(f["content"] for f in content if not f["is_read"])
    assert writes.count(f"POST {ps.request_path(api, stream)} HTTP/1.1") == 2


def test_go_probes_in_heartbeat(obs, server, goclient):
    run_go(obs, server, goclient, "anthropic", False, repeat=1)
    hb = obs.wait_events("CollectorHeartbeat",
                         lambda f: any(str(goclient) in p for p in f["attached_probes"]))[-1]
    mine = [p for p in hb["attached_probes"] if f":{goclient}:" in p]
    assert f"uprobe:{goclient}:(*Conn).Write" in mine
    assert f"uprobe:{goclient}:(*Conn).Read" in mine
    assert any(p.startswith(f"uprobe:{goclient}:(*Conn).Read:ret@") for p in mine)
    assert not any(p.startswith("uretprobe:") for p in mine)  # never on Go
    assert hb["dropped"] == 0


# ---- GnuTLS and NSS ----------------------------------------------------------------------------

def run_curl(server: ps.Server, stack: str, api: str, stream: bool, repeat: int) -> int:
    """libcurl-<stack> (through ctypes) makes `repeat` requests on one connection. Its pid."""
    host = ps.HOST_OF[api]
    proc = subprocess.Popen(
        [as_client(Path(sys.executable).resolve()), str(CURL_CLIENT), LIBCURL[stack],
         str(server.ca), server.url(host, ps.request_path(api, stream)),
         json.dumps(headers_for(api)), ps.request_body(api, stream).decode(), str(repeat)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return proc.pid


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
@pytest.mark.parametrize("stack", ["gnutls", "nss"])
def test_gnutls_and_nss(obs, server, stack, api, stream):
    if not Path(LIBCURL[stack]).exists():
        pytest.fail(f"{LIBCURL[stack]} missing: deploy/setup-host.sh installs it")
    pid = run_curl(server, stack, api, stream, repeat=2)
    check_exchanges(obs, pid, api, stream, 2)
    content = [f for f in obs.of_kind("SslContent") if f["pid"] == pid]
    assert {Path(f["lib"]).name for f in content} == {LIB_OF[stack]}
    assert not any(f["truncated"] for f in content)


# ---- what cannot be read is named --------------------------------------------------------------

def test_unreadable_stacks_are_named_once(obs):
    """A Go binary without crypto/tls and a program carrying a static TLS stack obs has no
    probes for (rustls, by its marker) are each named once on stderr and counted in the
    heartbeat, however many rescans see them."""
    notls = gobuild.build("gonotls", stripped=True)
    rusty = fakestack.build(b"rustls-0.23.12/src/conn.rs")
    procs = [subprocess.Popen([str(notls), "3"]), subprocess.Popen([str(rusty), "3"])]
    try:
        lines = {notls: f"not read: {notls}: Go (go", rusty: f"not read: {rusty}: rustls: "}
        for line in lines.values():
            wait_for(lambda line=line: line in obs.stderr(), timeout=20, what=line)
        time.sleep(1.5)  # several more rescans (every 0.2 s) while both still run
        seen = time.time_ns()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    err = obs.stderr()
    assert err.count(f"not read: {notls}:") == 1
    assert "without crypto/tls" in err.split(f"not read: {notls}:")[1].splitlines()[0]
    assert err.count(f"not read: {rusty}:") == 1
    hb = obs.wait_events("CollectorHeartbeat", lambda f: f["_env"]["ts"] > seen)[-1]
    assert hb["unreadable"] >= 2  # these two, and whatever else this host runs
