"""obs-ssl on the TLS stacks besides OpenSSL, against the real kernel: a Go client built here
(Go's crypto/tls: unstripped, stripped, position-independent), libcurl built with GnuTLS and
with NSS, each talking to the local provider stand-in; exact models and token counts. And the
stacks obs cannot read are named, once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import fakeboringssl, fakestack, gobuild
from tests.support import provider_server as ps
from tests.support.stack_clients import COMM, LIBCURL, run_curl, run_go
from tests.support.tools import Running, running, wait_for

pytestmark = pytest.mark.kernel
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")
LIB_OF = {"gnutls": "libgnutls.so.30", "nss": "libnspr4.so"}


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

@pytest.fixture(scope="module", params=[(False, False), (True, False), (False, True)],
                ids=["unstripped", "stripped", "pie"])
def goclient(request) -> Path:
    stripped, pie = request.param
    return gobuild.build("goclient", stripped=stripped, pie=pie)


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
    listed = {u["path"]: u for u in hb["unreadable_files"]}
    assert len(listed) == hb["unreadable"]
    assert listed[str(rusty)]["stack"] == "rustls"
    assert listed[str(notls)]["stack"].startswith("Go (go")


# ---- BoringSSL linked in statically, stripped (Claude Code's shape) ----------------------------

BSSL_BODY = b'{"model":"claude-x","max_tokens":5,"messages":[]}'
BSSL_REQUEST = (b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(BSSL_BODY), BSSL_BODY))
BSSL_ANSWER = (b'{"model":"claude-x-1","usage":{"input_tokens":11,"output_tokens":7,'
               b'"cache_read_input_tokens":3,"cache_creation_input_tokens":2}}')
BSSL_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(BSSL_ANSWER), BSSL_ANSWER))


@pytest.mark.parametrize("how", ["lib", "exec"])
@pytest.mark.parametrize("variant", ["abi5-exec", "abi4-pie"])
def test_static_boringssl_at_located_addresses(variant, how):
    """A program shaped like BoringSSL linked in statically: obs-ssl attaches at the addresses
    libobs.tls.boringssl locates — named with --lib, or judged when the program starts (no
    rescan would come in time: --rescan 3600) — reads an Anthropic exchange with model and
    tokens, and counts a write retried after -1 (handshake not done) once."""
    exe = fakeboringssl.build(variant)
    request, response = BSSL_REQUEST, BSSL_RESPONSE
    args = ["--lib", str(exe)] if how == "lib" else ["--rescan", "3600"]
    with running("obs-ssl", *args, "--comm", exe.name) as obs:
        attached = f"{exe} (BoringSSL (static): SSL_read via SSL_read@0x"
        # "exec": no rescan comes within the hour, only the program's start can attach it
        proc = subprocess.Popen([str(exe), request.decode(), response.decode(),
                                 *(["1"] if how == "exec" else [])], stderr=subprocess.PIPE)
        wait_for(lambda: attached in obs.stderr(), timeout=10, what=attached)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and b" 226 " in err  # the -1: SSL_R_UNINITIALIZED
        events = obs.wait_events("LlmApi", lambda f: f["pid"] == proc.pid, count=2)
    content = [f for f in obs.of_kind("SslContent") if f["pid"] == proc.pid]
    assert [(f["is_read"], f["len"]) for f in content] == [(False, len(request)),
                                                          (True, len(response))]
    assert [strip(e) for e in events] == [
        {"is_request": True, "model": "claude-x", "stream": False, "path": "/v1/messages",
         **dict.fromkeys(TOKENS)},
        {"is_request": False, "model": "claude-x-1", "stream": False, "path": "/v1/messages",
         "prompt_tokens": 11, "completion_tokens": 7, "cache_read_tokens": 3,
         "cache_creation_tokens": 2}]


# ---- a program met after the start is attached at the next one ---------------------------------

def test_a_program_met_after_the_start_is_read_from_its_first_request_next_time(server, tmp_path):
    """obs-ssl attaches to a program it met only when it exec'd (its first requests can come
    before that); the next start attaches to it at once, before it runs — here with exec-time
    attaching off (--rescan 0), so only that can read it. A changed file is not attached."""
    env = {"OBS_CACHE_DIR": str(tmp_path / "cache")}
    binary = tmp_path / "goclient-met"
    shutil.copy2(gobuild.build("goclient"), binary)
    api = ps.APIS[0]
    with running("obs-ssl", "--rescan", "0.2", "--comm", COMM, env=env) as r:
        assert str(binary) not in r.stderr()
        pid = run_go(r, server, binary, api, False, repeat=1)  # waits for the exec-time attach
        check_exchanges(r, pid, api, False, 1)
    assert r.status == 0, r.stderr()
    with running("obs-ssl", "--rescan", "0", "--comm", COMM, env=env) as r:
        assert f"{binary} (Go crypto/tls" in r.stderr(), r.stderr()
        check_exchanges(r, run_go(r, server, binary, api, False, repeat=1), api, False, 1)
    assert r.status == 0, r.stderr()
    os.utime(binary)  # another file now, as far as obs can tell
    with running("obs-ssl", "--rescan", "0", "--comm", COMM, env=env) as r:
        pass
    assert r.status == 0 and str(binary) not in r.stderr(), r.stderr()
