"""A local HTTPS server speaking LLM providers' wire formats, with known models and usage.

Anthropic Messages, OpenAI Chat Completions and Responses, Gemini generateContent and
streamGenerateContent, each as JSON and as SSE (`"stream": true`, or Gemini's
`streamGenerateContent?alt=sse`; without alt=sse Gemini streams a JSON array). Framing and
encoding follow the client: `Accept-Encoding: gzip` gets a gzip body (SSE compressed event by
event with sync flushes), identity JSON has a Content-Length, everything else is chunked.
Every SSE event goes out in its own write (its own TLS record, so its own SSL_read), and the
event carrying the final usage is split mid-JSON across two writes. `GET /big?size=N` answers
N bytes of numbered lines (`big_body`).

The server runs in its own process (`serving()` starts it): its SSL calls are not the test's.
Responses report the `EXPECTED[(api, stream)]` facts; the response model differs from the
request's (`REQUEST_MODEL`) so a test can tell which one was read.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[2]

HOSTS = {"api.anthropic.com": "127.0.0.50", "api.openai.com": "127.0.0.51",
         "generativelanguage.googleapis.com": "127.0.0.52"}
APIS = ("anthropic", "openai-chat", "openai-responses", "gemini")
HOST_OF = {"anthropic": "api.anthropic.com", "openai-chat": "api.openai.com",
           "openai-responses": "api.openai.com", "gemini": "generativelanguage.googleapis.com"}
PROVIDER_OF = {"anthropic": "Anthropic", "openai-chat": "OpenAi", "openai-responses": "OpenAi",
               "gemini": "Gemini"}
REQUEST_MODEL = {"anthropic": "claude-sonnet-4-5", "openai-chat": "gpt-4o",
                 "openai-responses": "gpt-4.1", "gemini": "gemini-2.5-flash"}
SERVED_MODEL = {"anthropic": "claude-sonnet-4-5-20250929", "openai-chat": "gpt-4o-2024-08-06",
                "openai-responses": "gpt-4.1-2025-04-14", "gemini": "gemini-2.5-flash-001"}


def _expected(api: str, stream: bool) -> dict[str, Any]:
    base = {"anthropic": 1200, "openai-chat": 3100, "openai-responses": 4100,
            "gemini": 5100}[api] + (500 if stream else 0)
    return {"model": SERVED_MODEL[api], "prompt_tokens": base + 1, "completion_tokens": base // 10 + 7,
            "cache_read_tokens": base // 100 + 3,
            "cache_creation_tokens": base // 50 + 11 if api == "anthropic" else None}


EXPECTED = {(api, stream): _expected(api, stream) for api in APIS for stream in (False, True)}


def request_path(api: str, stream: bool) -> str:
    if api == "anthropic":
        return "/v1/messages"
    if api == "openai-chat":
        return "/v1/chat/completions"
    if api == "openai-responses":
        return "/v1/responses"
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{REQUEST_MODEL[api]}:{verb}"


def request_body(api: str, stream: bool) -> bytes:
    prompt = [{"role": "user", "content": "Say hello."}]
    if api == "gemini":
        return json.dumps({"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}
                          ).encode()
    body: dict[str, Any] = {"model": REQUEST_MODEL[api], "max_tokens": 64}
    if api == "openai-responses":
        body["input"] = "Say hello."
    else:
        body["messages"] = prompt
    if stream:
        body["stream"] = True
        if api == "openai-chat":
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def request_headers(api: str) -> dict[str, str]:
    """Credential headers as each SDK sends them (their values must be redacted)."""
    if api == "anthropic":
        return {"x-api-key": "sk-ant-api03-" + "A" * 40, "anthropic-version": "2023-06-01"}
    if api == "gemini":
        return {"x-goog-api-key": "AIza" + "B" * 35}
    return {"Authorization": "Bearer sk-proj-" + "C" * 40}


def big_body(size: int) -> bytes:
    line = b"%08d abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\n"
    n = len(line % 0)
    return b"".join(line % i for i in range(size // n + 1))[:size]


# ---- response bodies ---------------------------------------------------------------------------

def _usage(api: str, e: dict[str, Any]) -> dict[str, Any]:
    if api == "anthropic":
        return {"input_tokens": e["prompt_tokens"], "output_tokens": e["completion_tokens"],
                "cache_read_input_tokens": e["cache_read_tokens"],
                "cache_creation_input_tokens": e["cache_creation_tokens"]}
    if api == "openai-chat":
        return {"prompt_tokens": e["prompt_tokens"], "completion_tokens": e["completion_tokens"],
                "total_tokens": e["prompt_tokens"] + e["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": e["cache_read_tokens"]}}
    if api == "openai-responses":
        return {"input_tokens": e["prompt_tokens"], "output_tokens": e["completion_tokens"],
                "total_tokens": e["prompt_tokens"] + e["completion_tokens"],
                "input_tokens_details": {"cached_tokens": e["cache_read_tokens"]}}
    return {"promptTokenCount": e["prompt_tokens"], "candidatesTokenCount": e["completion_tokens"],
            "totalTokenCount": e["prompt_tokens"] + e["completion_tokens"],
            "cachedContentTokenCount": e["cache_read_tokens"]}


def json_body(api: str) -> dict[str, Any]:
    e = EXPECTED[(api, False)]
    usage = _usage(api, e)
    if api == "anthropic":
        return {"id": "msg_01", "type": "message", "role": "assistant", "model": e["model"],
                "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                "usage": usage}
    if api == "openai-chat":
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": e["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                             "finish_reason": "stop"}], "usage": usage}
    if api == "openai-responses":
        return {"id": "resp_1", "object": "response", "model": e["model"], "status": "completed",
                "output": [{"type": "message", "content": [{"type": "output_text",
                                                            "text": "Hello!"}]}],
                "usage": usage}
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello!"}]}}],
            "usageMetadata": usage, "modelVersion": e["model"]}


def sse_events(api: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) in order; the last one with usage is split on the wire."""
    e = EXPECTED[(api, True)]
    usage = _usage(api, e)
    words = ["Hel", "lo", "!"]
    if api == "anthropic":
        start_usage = dict(usage, output_tokens=1)
        return [("message_start", {"type": "message_start", "message": {
                    "id": "msg_02", "type": "message", "role": "assistant", "model": e["model"],
                    "content": [], "usage": start_usage}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("ping", {"type": "ping"}),
                *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": w}})
                  for w in words],
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                   "usage": {"output_tokens": e["completion_tokens"]}}),
                ("message_stop", {"type": "message_stop"})]
    if api == "openai-chat":
        chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": e["model"]}
        return [*[(None, dict(chunk, choices=[{"index": 0, "delta": {"content": w}}], usage=None))
                  for w in words],
                (None, dict(chunk, choices=[], usage=usage))]
    if api == "openai-responses":
        resp = {"id": "resp_2", "object": "response", "model": e["model"]}
        return [("response.created", {"type": "response.created",
                                      "response": dict(resp, status="in_progress", usage=None)}),
                *[("response.output_text.delta", {"type": "response.output_text.delta",
                                                  "delta": w}) for w in words],
                ("response.completed", {"type": "response.completed",
                                        "response": dict(resp, status="completed", usage=usage)})]
    partial = {"promptTokenCount": e["prompt_tokens"], "candidatesTokenCount": 1}
    return [*[(None, {"candidates": [{"content": {"role": "model", "parts": [{"text": w}]}}],
                      "usageMetadata": partial, "modelVersion": e["model"]}) for w in words[:-1]],
            (None, {"candidates": [{"content": {"role": "model", "parts": [{"text": words[-1]}]},
                                    "finishReason": "STOP"}],
                    "usageMetadata": usage, "modelVersion": e["model"]})]


def _has_usage(data: dict[str, Any]) -> bool:
    return bool(data.get("usage") or (data.get("response") or {}).get("usage")
                or data.get("usageMetadata"))


def sse_wire(api: str) -> list[bytes]:
    """The event stream as the pieces the server writes one by one: one per event, but the
    last event with usage in two halves."""
    events = sse_events(api)
    split = max(i for i, (_, data) in enumerate(events) if _has_usage(data))
    pieces: list[bytes] = []
    for i, (name, data) in enumerate(events):
        raw = ((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n").encode()
        pieces += [raw[: len(raw) // 2], raw[len(raw) // 2:]] if i == split else [raw]
    if api == "openai-chat":
        pieces.append(b"data: [DONE]\n\n")
    return pieces


# ---- the server --------------------------------------------------------------------------------

def api_of(path: str) -> tuple[str, bool] | None:
    """(api, stream-by-path) for a request path."""
    route = urlsplit(path).path
    if route == "/v1/messages":
        return "anthropic", False
    if route == "/v1/chat/completions":
        return "openai-chat", False
    if route == "/v1/responses":
        return "openai-responses", False
    if route.startswith("/v1beta/models/") and ":" in route:
        return "gemini", route.endswith(":streamGenerateContent")
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "provider-server"

    def setup(self) -> None:
        super().setup()
        # Each SSE event is its own write: without NODELAY, Nagle holds it for the client's
        # delayed ACK (40 ms a piece).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _gzip(self) -> bool:
        return "gzip" in self.headers.get("Accept-Encoding", "").lower()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/big":
            return self._not_found()
        size = int(parse_qs(url.query).get("size", ["102400"])[0])
        body = big_body(size)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b""
        found = api_of(self.path)
        if found is None:
            return self._not_found()
        api, stream = found
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if api == "gemini":
            sse = stream and "alt=sse" in self.path
            array = stream and not sse
        else:
            sse, array = bool(body.get("stream")), False
        if sse:
            self._send_sse(api)
        elif array:
            self._send_json_array(api)
        else:
            self._send_json(api)

    def _send_json(self, api: str) -> None:
        data = json.dumps(json_body(api)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self._gzip():
            data = gzip.compress(data)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(data[: len(data) // 2])
            self._chunk(data[len(data) // 2:])
            self._end_chunks()
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _send_json_array(self, api: str) -> None:
        objs = [d for _, d in sse_events(api)]
        pieces = [b"[" + json.dumps(objs[0]).encode()]
        pieces += [b",\r\n" + json.dumps(o).encode() for o in objs[1:]] + [b"]"]
        self._stream(pieces, "application/json")

    def _send_sse(self, api: str) -> None:
        self._stream(sse_wire(api), "text/event-stream")

    def _stream(self, pieces: list[bytes], ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        gz = self._gzip()
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        z = zlib.compressobj(wbits=31) if gz else None
        for piece in pieces:
            self._chunk(z.compress(piece) + z.flush(zlib.Z_SYNC_FLUSH) if z else piece)
        if z:
            self._chunk(z.flush())
        self._end_chunks()

    def _not_found(self) -> None:
        data = b'{"error": "not found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(cert: Path, key: Path, addrs: list[str]) -> None:
    """Listen on a free port of each address; print `ready {addr: port}` once listening."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    servers = []
    ports = {}
    for addr in addrs:
        httpd = ThreadingHTTPServer((addr, 0), Handler)  # 0: concurrent test runs coexist
        httpd.daemon_threads = True
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        ports[addr] = httpd.server_address[1]
        servers.append(httpd)
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready", json.dumps(ports), flush=True)
    sys.stdin.read()  # until the parent closes our stdin


# ---- the test side -----------------------------------------------------------------------------

@dataclass
class Server:
    ca: Path          # PEM of the CA that signed the server certificate
    pid: int
    ports: dict[str, int]  # listening address -> port

    def port(self, host: str) -> int:
        return self.ports[HOSTS[host]]

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port(host)}{path}"


def write_certs(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem) for every HOSTS name, from a fresh trustme CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*HOSTS, "localhost")
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


@contextlib.contextmanager
def serving(lib_dir: Path | None = None) -> Iterator[Server]:
    """The server on HOSTS' addresses (a free port each), the names mapped in /etc/hosts.
    `lib_dir` goes first on the server's LD_LIBRARY_PATH (a private libssl copy: a server whose
    SSL calls no probe sees, like a remote one)."""
    from tests.support.hosts import mapped

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)

    with tempfile.TemporaryDirectory(prefix="provider-server-") as tmp:
        ca, cert, key = write_certs(Path(tmp))
        args = [sys.executable, "-m", "tests.support.provider_server", "--cert", str(cert),
                "--key", str(key)]
        for addr in dict.fromkeys(HOSTS.values()):
            args += ["--addr", addr]
        with server_process(args, "provider server", cwd=REPO, env=env) as (pid, ports), \
                mapped(HOSTS):
            yield Server(ca, pid, json.loads(ports))


@contextlib.contextmanager
def server_process(args: list[str], what: str, **popen: Any) -> Iterator[tuple[int, bytes]]:
    """A stand-in server process that prints `ready [info]` once it listens and exits when
    its stdin closes: yields (pid, info), then closes stdin and reaps it (killed after 5 s)."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen)
    try:
        assert proc.stdout is not None
        word, _, info = proc.stdout.readline().strip().partition(b" ")
        if word != b"ready":
            raise RuntimeError(f"{what} did not start (exit {proc.wait()})")
        yield proc.pid, info
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_main(serve: Any, doc: str) -> None:
    """The command line of a stand-in server module: certificate, key, addresses."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--addr", action="append", required=True)
    a = ap.parse_args()
    serve(a.cert, a.key, a.addr)


if __name__ == "__main__":
    serve_main(serve, __doc__)
