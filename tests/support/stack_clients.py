"""Clients on the TLS stacks besides OpenSSL, run against the provider stand-in
(tests/support/provider_server.py): the Go client (tests/support/goclient) and libcurl built
with GnuTLS or NSS (tests/support/curl_ctypes.py). Each runs under the comm COMM, for obs-ssl's
--comm filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import provider_server as ps
from tests.support.tools import Running, wait_for

COMM = "obs-stack-cli"
_LINKS = Path(tempfile.mkdtemp(prefix="obs-stack-clients-"))
CURL_CLIENT = Path(__file__).resolve().parent / "curl_ctypes.py"
LIBCURL = {"gnutls": "/usr/lib/x86_64-linux-gnu/libcurl-gnutls.so.4",
           "nss": "/usr/lib/x86_64-linux-gnu/libcurl-nss.so.4"}


def as_client(target: Path, name: str = COMM) -> str:
    link = _LINKS / target.name / name
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)
    return str(link)


def headers_for(api: str) -> dict[str, str]:
    return {**ps.request_headers(api), "Content-Type": "application/json",
            "Accept-Encoding": "gzip"}


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
        # attached as it started, or at obs-ssl's start (a program met before is remembered)
        wait_for(lambda: f"{binary} (Go crypto/tls" in obs.stderr(), timeout=20,
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
