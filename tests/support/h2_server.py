"""A local TLS stand-in for LLM providers over HTTP/2 (ALPN h2, falling back to http/1.1) and
over WebSocket (OpenAI Responses: `wss://…/v1/responses`), answering with provider_server's
bodies, so the same `EXPECTED[(api, stream)]` models and usage hold.

Two ports per address: `h2` (HTTP/2 by the `h2` library's server side; a client that does
not offer h2 gets provider_server's HTTP/1.1 handler) and `ws` (HTTP/1.1 upgrade, then
wsproto with permessage-deflate). On HTTP/2, each stream is answered `?delay_ms=N` after its
request ended (default at once), and streams due together are answered interleaved, piece by
piece, so several streams are in flight at once; each SSE event is its own DATA frame (and
write). Every answered stream is logged with the server's own clock (`Server.streams()`).

Over WebSocket, each `{"type": "response.create", "model": …}` is answered with
response.created, three deltas and response.completed carrying EXPECTED[("openai-responses",
True)]'s usage with the served model `WS_MODEL`.

Runs in its own process (`serving()`): its SSL calls are not the test's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support import provider_server as ps

WS_MODEL = "gpt-5-codex-2025-09-15"


# ---- HTTP/2 ------------------------------------------------------------------------------------

def _pieces(path: str, headers: dict[str, str], raw: bytes) -> tuple[list[tuple[str, str]],
                                                                     list[bytes]]:
    """Response headers and body pieces (one DATA frame each) for a request."""
    found = ps.api_of(path)
    if found is None:
        return [(":status", "404"), ("content-type", "application/json")], [b'{"error": 1}']
    api, stream = found
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = {}
    sse = (stream and "alt=sse" in path) if api == "gemini" else bool(body.get("stream"))
    gz = "gzip" in headers.get("accept-encoding", "")
    if sse:
        pieces, ctype = ps.sse_wire(api), "text/event-stream"
    elif api == "gemini" and stream:
        objs = [json.dumps(d).encode() for _, d in ps.sse_events(api)]
        pieces, ctype = [b"[" + b",\r\n".join(objs) + b"]"], "application/json"
    else:
        pieces, ctype = [json.dumps(ps.json_body(api)).encode()], "application/json"
    out = [(":status", "200"), ("content-type", ctype)]
    if gz:
        out.append(("content-encoding", "gzip"))
        z = zlib.compressobj(wbits=31)
        pieces = [z.compress(p) + z.flush(zlib.Z_SYNC_FLUSH) for p in pieces] + [z.flush()]
    return out, pieces


def delay_of(path: str) -> float:
    """Seconds a request asks the server to wait before answering (`?delay_ms=N`)."""
    ms = parse_qs(urlsplit(path).query).get("delay_ms", ["0"])[0]
    return int(ms) / 1000 if ms.isdigit() else 0.0


class StreamLog:
    """One JSON line per answered stream, on the server's monotonic clock: request headers
    received (`t_head`), request ended (`t_req`), the first and the last response write
    entered (`t_first`, `t_last`) and returned (`t_first_sent`, `t_last_sent`: a loaded
    machine may deschedule the server in between), with the stream id, path and the
    client's port (`$H2_SERVER_LOG`, if set)."""

    def __init__(self, path: str | None) -> None:
        self.file = open(path, "a") if path else None  # noqa: SIM115 (for the process's life)
        self.lock = threading.Lock()

    def write(self, line: dict[str, Any]) -> None:
        if self.file is not None:
            with self.lock:
                self.file.write(json.dumps(line) + "\n")
                self.file.flush()


LOG = StreamLog(os.environ.get("H2_SERVER_LOG"))


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray
    t_head: int
    t_req: int = 0
    due: float = 0.0             # monotonic s at which to answer
    pieces: list[bytes] | None = None
    t_first: int = 0
    t_first_sent: int = 0


def serve_h2(conn: ssl.SSLSocket, port: int) -> None:
    """HTTP/2 on one connection. Each stream is answered `delay_ms` after its request ended,
    so concurrent streams with different delays answer in their own time; streams due at the
    same moment are answered interleaved, one DATA frame each per turn."""
    import h2.config
    import h2.connection
    import h2.events

    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2c.initiate_connection()
    conn.sendall(h2c.data_to_send())
    streams: dict[int, _Stream] = {}
    while True:
        waiting = [st.due for st in streams.values() if st.t_req and st.pieces is None]
        timeout = max(0.0, min(waiting) - time.monotonic()) if waiting else None
        if conn.pending() or select.select([conn], [], [], timeout)[0]:
            data = conn.recv(65536)
            if not data:
                return
            now = time.monotonic_ns()
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    hdrs = {k.decode() if isinstance(k, bytes) else k:
                            v.decode() if isinstance(v, bytes) else v for k, v in event.headers}
                    streams[event.stream_id] = _Stream(hdrs, bytearray(), now)
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id].body.extend(event.data)
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    st = streams[event.stream_id]
                    st.t_req = now
                    st.due = now / 1e9 + delay_of(st.headers.get(":path", "/"))
            conn.sendall(h2c.data_to_send())
        _answer_due(conn, h2c, streams, port)


def _answer_due(conn: ssl.SSLSocket, h2c: Any, streams: dict[int, _Stream], port: int) -> None:
    now = time.monotonic()
    due = sorted(sid for sid, st in streams.items()
                 if st.t_req and st.pieces is None and st.due <= now)
    for sid in due:
        st = streams[sid]
        head, st.pieces = _pieces(st.headers.get(":path", "/"), st.headers, bytes(st.body))
        h2c.send_headers(sid, head)
        st.t_first = time.monotonic_ns()
        conn.sendall(h2c.data_to_send())
        st.t_first_sent = time.monotonic_ns()
    while due:  # round-robin: every due stream advances one piece per turn
        for sid in list(due):
            st = streams[sid]
            assert st.pieces is not None
            h2c.send_data(sid, st.pieces.pop(0), end_stream=not st.pieces)
            t_last = time.monotonic_ns()
            conn.sendall(h2c.data_to_send())
            if not st.pieces:
                due.remove(sid)
                del streams[sid]
                LOG.write({"stream": sid, "path": st.headers.get(":path"), "client_port": port,
                           "t_head": st.t_head, "t_req": st.t_req, "t_first": st.t_first,
                           "t_first_sent": st.t_first_sent, "t_last": t_last,
                           "t_last_sent": time.monotonic_ns()})


# ---- WebSocket ---------------------------------------------------------------------------------

def ws_events(model: str) -> list[dict[str, Any]]:
    e = ps.EXPECTED[("openai-responses", True)]
    usage = {"input_tokens": e["prompt_tokens"], "output_tokens": e["completion_tokens"],
             "total_tokens": e["prompt_tokens"] + e["completion_tokens"],
             "input_tokens_details": {"cached_tokens": e["cache_read_tokens"]}}
    resp = {"id": "resp_ws", "object": "response", "model": WS_MODEL}
    return [{"type": "response.created", "response": dict(resp, status="in_progress",
                                                          usage=None)},
            *[{"type": "response.output_text.delta", "delta": w} for w in ("Hel", "lo", "!")],
            {"type": "response.completed", "response": dict(resp, status="completed",
                                                            usage=usage)}]


def serve_ws(conn: ssl.SSLSocket) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    ws = WSConnection(ConnectionType.SERVER)
    text = ""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                conn.sendall(ws.send(AcceptConnection(extensions=[PerMessageDeflate()])))
            elif isinstance(event, TextMessage):
                text += event.data
                if not event.message_finished:
                    continue
                msg, text = json.loads(text), ""
                if msg.get("type") == "response.create":
                    for out in ws_events(msg.get("model", "")):
                        conn.sendall(ws.send(TextMessage(json.dumps(out))))
            elif isinstance(event, Ping):
                conn.sendall(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                conn.sendall(ws.send(event.response()))
                return


# ---- listening ---------------------------------------------------------------------------------

def _http1(conn: ssl.SSLSocket, addr: Any) -> None:
    ps.Handler(conn, addr, None)  # type: ignore[arg-type]  # it only needs the socket


def _accept(ctx: ssl.SSLContext, raw: socket.socket, addr: Any, ws: bool) -> None:
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError, ssl.SSLError, ValueError):
        conn = ctx.wrap_socket(raw, server_side=True)
        with conn:
            if ws:
                serve_ws(conn)
            elif conn.selected_alpn_protocol() == "h2":
                serve_h2(conn, addr[1])
            else:
                _http1(conn, addr)
    raw.close()


def _listen(ctx: ssl.SSLContext, addr: str, ws: bool) -> int:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, 0))
    lsock.listen(64)

    def loop() -> None:
        while True:
            raw, peer = lsock.accept()
            threading.Thread(target=_accept, args=(ctx, raw, peer, ws), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return int(lsock.getsockname()[1])


def serve(cert: Path, key: Path, addrs: list[str]) -> None:
    import h2.connection  # noqa: F401  (now, not on the first connection: ~90 ms of a stream)

    contexts = {}
    for ws, alpn in ((False, ["h2", "http/1.1"]), (True, ["http/1.1"])):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(alpn)
        contexts[ws] = ctx
    ports = {addr: {"h2": _listen(contexts[False], addr, False),
                    "ws": _listen(contexts[True], addr, True)} for addr in addrs}
    print("ready", json.dumps(ports), flush=True)
    sys.stdin.read()  # until the parent closes our stdin


# ---- the test side -----------------------------------------------------------------------------

@dataclass
class Server:
    ca: Path
    pid: int
    ports: dict[str, dict[str, int]]  # address -> {"h2": port, "ws": port}
    log: Path                          # StreamLog's lines: one per answered HTTP/2 stream

    def streams(self) -> list[dict[str, Any]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(ln) for ln in text.splitlines() if ln.endswith("}")]

    def port(self, host: str, kind: str = "h2") -> int:
        return self.ports[ps.HOSTS[host]][kind]

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port(host)}{path}"

    def ws_url(self, path: str = "/v1/responses") -> str:
        return f"wss://api.openai.com:{self.port('api.openai.com', 'ws')}{path}"


@contextlib.contextmanager
def serving() -> Iterator[Server]:
    """The server on provider_server.HOSTS' addresses, the names mapped in /etc/hosts."""
    from tests.support.hosts import mapped

    with tempfile.TemporaryDirectory(prefix="h2-server-") as tmp:
        ca, cert, key = ps.write_certs(Path(tmp))
        args = [sys.executable, "-m", "tests.support.h2_server", "--cert", str(cert),
                "--key", str(key)]
        for addr in dict.fromkeys(ps.HOSTS.values()):
            args += ["--addr", addr]
        log = Path(tmp) / "streams.jsonl"
        env = {**os.environ, "PYTHONPATH": str(ps.REPO), "H2_SERVER_LOG": str(log)}
        with ps.server_process(args, "h2 server", cwd=ps.REPO, env=env) as (pid, ports), \
                mapped(ps.HOSTS):
            yield Server(ca, pid, json.loads(ports), log)


if __name__ == "__main__":
    ps.serve_main(serve, __doc__)
