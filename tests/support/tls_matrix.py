"""What obs-ssl sees, measured: every TLS client kind this host has makes one streamed
Anthropic request to the provider stand-in under obs-ssl, and the README's table of stacks is
printed as Markdown (and, with ``--readme``, put in README.md) with what came out — whether the model asked for and the model and tokens
served were exact, and which file the plaintext came from. Stacks obs cannot read are run too:
their row says whether they were named (stderr and the heartbeat's `unreadable`).

    sudo .venv/bin/python -m tests.support.tls_matrix [--readme]   # or: nox -s tls_matrix
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import fakestack, gobuild, readme
from tests.support import provider_server as ps
from tests.support.stack_clients import COMM, LIBCURL, as_client, headers_for, run_curl, run_go
from tests.support.tools import Running, running

API, STREAM = "anthropic", True


def _run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen([as_client(Path(shutil.which(cmd[0]) or cmd[0]).resolve()),
                             *cmd[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    _, err = proc.communicate(timeout=60)
    if proc.returncode:
        raise RuntimeError(err.decode(errors="replace"))
    return proc.pid


def clients(server: ps.Server, obs: Running) -> list[tuple[str, str, Callable[[], int]]]:
    """(client, stack, run → pid) for every kind of client this host can run."""
    url = server.url(ps.HOST_OF[API], ps.request_path(API, STREAM))
    body = ps.request_body(API, STREAM).decode()
    hdrs = headers_for(API)
    curl = ["curl", "-sS", "--fail", "--http1.1", "--cacert", str(server.ca), "-o", "/dev/null",
            url, "--data-binary", body, *[a for k, v in hdrs.items() for a in ("-H", f"{k}: {v}")]]
    py = ("import json, sys, urllib.request, ssl\n"
          "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
          "req = urllib.request.Request(sys.argv[2], sys.argv[4].encode(), json.loads(sys.argv[3]))\n"
          "urllib.request.urlopen(req, context=ctx).read()\n")
    node = ("fetch(process.argv[1], {method: 'POST', headers: JSON.parse(process.argv[2]), "
            "body: process.argv[3]}).then(r => r.arrayBuffer()).catch(e => process.exit(2))")
    out: list[tuple[str, str, Callable[[], int]]] = [
        ("curl", "OpenSSL (libssl)", lambda: _run(curl)),
        ("python urllib", "OpenSSL (libssl)",
         lambda: _run([sys.executable, "-c", py, str(server.ca), url, json.dumps(hdrs), body])),
    ]
    if shutil.which("node"):
        out.append(("node fetch", "OpenSSL (in node)",
                    lambda: _run(["node", "-e", node, url, json.dumps(hdrs), body],
                                 {"NODE_EXTRA_CA_CERTS": str(server.ca)})))
    for stripped in (False, True):
        binary = gobuild.build("goclient", stripped)
        out.append((f"Go net/http{' (stripped)' if stripped else ''}", "Go crypto/tls",
                    lambda b=binary: run_go(obs, server, b, API, STREAM, 1)))
    for stack in ("gnutls", "nss"):
        if Path(LIBCURL[stack]).exists():
            out.append((f"libcurl-{stack}", {"gnutls": "GnuTLS", "nss": "NSS (NSPR)"}[stack],
                        lambda s=stack: run_curl(server, s, API, STREAM, 1)))
    return out


def row(obs: Running, pid: int) -> tuple[str, str, str]:
    deadline = time.monotonic() + 15
    facts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(facts) < 2:
        facts = [f for f in obs.of_kind("LlmApi") if f["pid"] == pid]
        time.sleep(0.1)
    req = next((f for f in facts if f["is_request"]), None)
    resp = next((f for f in facts if not f["is_request"]), None)
    want = ps.EXPECTED[(API, STREAM)]
    asked = "exact" if req and req["model"] == ps.REQUEST_MODEL[API] else "missing"
    served = "exact" if resp and all(resp[k] == v for k, v in want.items()) else "missing"
    libs = sorted({Path(f["lib"]).name for f in obs.of_kind("SslContent") if f["pid"] == pid})
    return asked, served, ", ".join(libs) or "none"


def main() -> int:
    lines = ["| client | TLS stack | model asked | model + tokens served | plaintext from |",
             "|---|---|---|---|---|"]
    failed = False
    with ps.serving() as server, running("obs-ssl", "--rescan", "0.2", "--comm", COMM,
                                         "--heartbeat-interval", "1") as obs:
        for name, stack, go in clients(server, obs):
            asked, served, libs = row(obs, go())
            failed |= "missing" in (asked, served)
            lines.append(f"| {name} | {stack} | {asked} | {served} | {libs} |")
        for name, binary in (("Go program without crypto/tls", gobuild.build("gonotls", True)),
                             ("program with static rustls", fakestack.build(b"rustls-0.23"))):
            proc = subprocess.Popen([str(binary), "2"])
            deadline = time.monotonic() + 10
            while f"not read: {binary}:" not in obs.stderr() and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.wait()
            named = f"not read: {binary}:" in obs.stderr()
            time.sleep(1.2)  # the next heartbeat
            beats = obs.of_kind("CollectorHeartbeat")
            counted = bool(beats) and beats[-1]["unreadable"] >= 1
            failed |= not (named and counted)
            lines.append(f"| {name} | not readable | — | — | "
                         f"{'named on stderr' if named else 'NOT NAMED'}, "
                         f"{'counted in the heartbeat' if counted else 'NOT COUNTED'} |")
    print("\n".join(lines))
    if "--readme" in sys.argv:
        readme.write("tls-matrix", "\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
