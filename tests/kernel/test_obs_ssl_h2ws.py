"""obs-ssl against the real kernel over HTTP/2 and WebSocket: curl --http2, httpx (http2=True)
and Node's http2 client, alone and with several streams in flight on one connection, and a
`websockets` client speaking the Responses API over wss; exact models and tokens per stream
and per response."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.test_obs_ssl import (
    expected_request,
    expected_response,
    headers_for,
    node_path,
    node_skip_reason,
    strip,
)
from tests.support import h2_server as hs
from tests.support import provider_server as ps
from tests.support.tools import Running, running

pytestmark = pytest.mark.kernel
# A comm of this module's own (test_obs_ssl's clients may run at the same time elsewhere):
# obs-ssl filters on it, and every client runs under it through a symlink.
COMM = "obs-ssl-h2ws"
_CLIENT_DIR = Path(tempfile.mkdtemp(prefix="obs-ssl-h2ws-"))
# Clients run through a symlink to the real interpreter (for their comm), which does not see
# this venv's packages (httpx, websockets) by itself.
VENV_PACKAGES = {"PYTHONPATH": os.pathsep.join(site.getsitepackages())}

# Each program sends a JSON list of [path, headers, body] concurrently on one connection.
HTTPX_CLIENT = r"""
import asyncio, json, ssl, sys, httpx
origin, ca, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
async def main():
    async with httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cafile=ca)) as c:
        rs = await asyncio.gather(*[c.post(origin + p, headers=h, content=b.encode())
                                    for p, h, b in requests])
    assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in rs), rs
asyncio.run(main())
"""

NODE_CLIENT = r"""
const http2 = require('http2');
const [origin, requests] = [process.argv[1], JSON.parse(process.argv[2])];
const session = http2.connect(origin);
session.on('error', (e) => { console.error(e); process.exit(2); });
let left = requests.length;
for (const [path, headers, body] of requests) {
  const req = session.request({':method': 'POST', ':path': path, ...headers});
  req.on('response', (h) => { if (h[':status'] !== 200) process.exit(3); });
  req.resume();
  req.on('end', () => { if (--left === 0) session.close(); });
  req.end(body);
}
"""

# websockets' asyncio client: its sync client reads in a thread of its own while the caller
# writes, two threads in one OpenSSL session at once, which OpenSSL forbids (it hung here once
# in ~8 loaded runs, waiting for a reply the server had sent).
WS_CLIENT = r"""
import asyncio, json, ssl, sys
from websockets.asyncio.client import connect
url, ca, compression, models = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

async def main():
    ctx = ssl.create_default_context(cafile=ca)
    async with connect(url, ssl=ctx,
                       compression=None if compression == "none" else compression) as ws:
        for model in models:  # one response at a time, as the Responses API allows
            await ws.send(json.dumps({"type": "response.create", "model": model,
                                      "input": [{"role": "user", "content": "Say hello."}]}))
            while json.loads(await ws.recv())["type"] != "response.completed":
                pass

asyncio.run(main())
"""


def run(cmd: list[str], env: dict[str, str] | None = None, comm: str = COMM) -> int:
    """Run a client to completion under the comm `comm`; its pid."""
    target = Path(shutil.which(cmd[0]) or cmd[0]).resolve()
    link = _CLIENT_DIR / target.name / comm
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)
    proc = subprocess.Popen([str(link), *cmd[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{cmd[0]} failed: {err.decode(errors='replace')}"
    return proc.pid


@pytest.fixture(scope="module")
def server():
    with hs.serving() as s:
        yield s


@pytest.fixture(scope="module")
def obs(server):
    with running("obs-ssl", "--heartbeat-interval", "1", "--comm", COMM) as r:
        yield r
    assert r.status == 0, r.stderr()


def request_of(api: str, stream: bool, encoding: str = "gzip") -> list[Any]:
    return [ps.request_path(api, stream), headers_for(api, encoding),
            ps.request_body(api, stream).decode()]


def run_h2(client: str, server: hs.Server, host: str, requests: list[list[Any]],
           comm: str = COMM) -> int:
    origin = f"https://{host}:{server.port(host)}"
    if client == "curl":  # the same request n times, multiplexed (--parallel) on one connection
        path, headers, body = requests[0]
        cmd = ["curl", "-sS", "--fail", "--http2", "--cacert", str(server.ca), "--parallel",
               "--parallel-max", "10", "--data-binary", body]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        for other, _, _ in requests:  # the paths may differ (query), the rest may not
            cmd += ["-o", "/dev/null", origin + other]
        return run(cmd, comm=comm)
    if client == "httpx":
        return run([sys.executable, "-c", HTTPX_CLIENT, origin, str(server.ca),
                    json.dumps(requests)], env=VENV_PACKAGES, comm=comm)
    reason = node_skip_reason()
    if reason:
        pytest.skip(reason)
    node = node_path()
    assert node
    return run([node, "-e", NODE_CLIENT, origin, json.dumps(requests)],
               env={"NODE_EXTRA_CA_CERTS": str(server.ca)}, comm=comm)


def assert_http2(obs: Running, pid: int) -> None:
    writes = [f["content"] for f in obs.of_kind("SslContent") if f["pid"] == pid
              and not f["is_read"]]
    assert writes and writes[0].startswith("PRI * HTTP/2.0"), writes[:1]


def frozen(d: dict[str, Any]) -> tuple:
    return tuple(sorted(d.items()))


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
@pytest.mark.parametrize("client", ["curl", "httpx", "node"])
def test_http2_llm_api_facts(obs, server, client, api, stream, encoding):
    pid = run_h2(client, server, ps.HOST_OF[api], [request_of(api, stream, encoding)])
    req, resp = obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2)
    assert strip(req) == expected_request(api, stream)
    assert strip(resp) == expected_response(api, stream)
    for ev in (req, resp):
        assert ev["_env"]["provider"] == ps.PROVIDER_OF[api]
    assert req["_env"]["ts"] <= resp["_env"]["ts"]
    assert len([f for f in obs.of_kind("LlmApi") if f["pid"] == pid]) == 2
    assert_http2(obs, pid)


@pytest.mark.parametrize("client", ["curl", "httpx", "node"])
def test_http2_concurrent_streams_one_connection(obs, server, client):
    calls = [("openai-chat", True), ("openai-responses", True), ("openai-chat", False),
             ("openai-responses", False), ("openai-chat", True)]
    if client == "curl":
        calls = [("openai-chat", True)] * 4
    pid = run_h2(client, server, "api.openai.com", [request_of(a, s) for a, s in calls])
    events = obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2 * len(calls))
    assert len(events) == 2 * len(calls)
    requests = Counter(frozen(strip(e)) for e in events if e["is_request"])
    responses = Counter(frozen(strip(e)) for e in events if not e["is_request"])
    # a response paired with the wrong stream's request would mix one call's path and stream
    # flag with another's tokens: every response must be exactly one of the expected ones
    assert requests == Counter(frozen(expected_request(a, s)) for a, s in calls)
    assert responses == Counter(frozen(expected_response(a, s)) for a, s in calls)
    assert_http2(obs, pid)


@pytest.mark.parametrize("compression", ["deflate", "none"])
def test_websocket_responses_api(obs, server, compression):
    models = ["gpt-5-codex", "gpt-5-mini"]
    pid = run([sys.executable, "-c", WS_CLIENT, server.ws_url(), str(server.ca), compression,
               json.dumps(models)], env=VENV_PACKAGES)
    events = obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=4)
    assert len(events) == 4
    e = ps.EXPECTED[("openai-responses", True)]
    for model, (req, resp) in zip(models, zip(events[::2], events[1::2], strict=True),
                                  strict=True):
        assert strip(req) == {"is_request": True, "model": model, "stream": True,
                              "path": "/v1/responses", **dict.fromkeys(
                                  ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                                   "cache_creation_tokens"))}
        assert strip(resp) == {"is_request": False, "model": hs.WS_MODEL, "stream": True,
                               "path": "/v1/responses", "prompt_tokens": e["prompt_tokens"],
                               "completion_tokens": e["completion_tokens"],
                               "cache_read_tokens": e["cache_read_tokens"],
                               "cache_creation_tokens": None}
        assert req["_env"]["provider"] == resp["_env"]["provider"] == "OpenAi"
        assert req["_env"]["ts"] <= resp["_env"]["ts"]


def test_http11_fallback_on_the_same_stand_in(obs, server):
    """A client that offers only http/1.1 by ALPN gets provider_server's HTTP/1.1 answers from
    the same port; obs-ssl reads it with the HTTP/1.1 reassembly."""
    api, stream = "anthropic", True
    path, headers, body = request_of(api, stream)
    cmd = ["curl", "-sS", "--fail", "--http1.1", "--cacert", str(server.ca), "-o", "/dev/null",
           "--data-binary", body, server.url(ps.HOST_OF[api], path)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    pid = run(cmd)
    req, resp = obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2)
    assert strip(req) == expected_request(api, stream)
    assert strip(resp) == expected_response(api, stream)
    writes = [f["content"] for f in obs.of_kind("SslContent") if f["pid"] == pid
              and not f["is_read"]]
    assert writes[0].startswith("POST /v1/messages HTTP/1.1")
