"""A local HTTPS server for tests and benches: HTTP/1.1 keep-alive, a per-request delay before
the first response byte, then the body streamed in chunks; trustme certificates valid for
several hostnames and for the listening address.

The server runs in its own process (`python -m tests.support.tls_server`), so a client in the
test process does not share a GIL with it and its timing is the server's alone. Each request
is shaped by its query string:

    /any/path?delay=300&chunks=5&interval=20&size=10000

delay     ms between the request's last byte arriving and the first response byte (headers and
          first chunk are written together)
chunks    body pieces (default 1), written `interval` ms apart (default 0)
size      body bytes (default 64)
close     1: answer with `Connection: close` and close after the response

Each answered request is appended to the log file as one JSON line (monotonic ns timestamps of
request end, first and last response write, body sizes), for benches that want the server's
view of the truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[2]
MAX_HEAD = 64 << 10


# ---- server side (runs in the child process) -------------------------------------------------

def _read_request(conn: ssl.SSLSocket, buf: bytearray) -> tuple[bytes, dict[str, str], bytes] | None:
    """(request line, headers, body) of the next request, or None when the peer closed."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    need = int(headers.get("content-length", "0") or 0)
    body = bytearray(rest)
    while len(body) < need:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    buf[:] = body[need:]
    return lines[0], headers, bytes(body[:need])


def _param(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(query.get(name, [str(default)])[0])
    except ValueError:
        return default


def _serve_conn(conn: ssl.SSLSocket, log: Any, lock: threading.Lock) -> None:
    buf = bytearray()
    with contextlib.suppress(OSError, ssl.SSLError), conn:
        while True:
            req = _read_request(conn, buf)
            if req is None:
                return
            t_req = time.monotonic_ns()
            line, headers, body = req
            parts = line.split(b" ")
            target = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            query = parse_qs(urlsplit(target).query)
            delay, chunks = _param(query, "delay", 0), max(1, _param(query, "chunks", 1))
            interval, size = _param(query, "interval", 0), _param(query, "size", 64)
            close = _param(query, "close", 0) == 1 or headers.get("connection", "") == "close"
            payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            pieces = [payload[i * size // chunks:(i + 1) * size // chunks] for i in range(chunks)]
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()
            time.sleep(delay / 1000)
            t_first = time.monotonic_ns()
            conn.sendall(head + pieces[0])
            for piece in pieces[1:]:
                time.sleep(interval / 1000)
                conn.sendall(piece)
            t_last = time.monotonic_ns()
            with lock:
                log.write(json.dumps({"target": target, "req_body": len(body), "t_req": t_req,
                                      "t_first": t_first, "t_last": t_last, "size": size}) + "\n")
                log.flush()
            if close:
                with contextlib.suppress(OSError, ssl.SSLError):
                    conn.unwrap()
                return


def serve(addr: str, port: int, cert: str, key: str, log_path: str, tickets: int,
          nagle: bool = False) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.num_tickets = tickets
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(128)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    lock = threading.Lock()
    with open(log_path, "a") as log:
        while True:
            raw, _ = lsock.accept()
            if not nagle:  # with Nagle a second ticket waits for the client's delayed ACK
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_accept_tls, args=(ctx, raw, log, lock), daemon=True).start()


def _accept_tls(ctx: ssl.SSLContext, raw: socket.socket, log: Any, lock: threading.Lock) -> None:
    try:
        conn = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    _serve_conn(conn, log, lock)


# ---- parent side -----------------------------------------------------------------------------

@dataclass
class TlsServer:
    addr: str
    port: int
    cafile: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def url(self, host: str, path: str = "/v1/messages", **params: int) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"https://{host}:{self.port}{path}" + (f"?{query}" if query else "")

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def requests(self) -> list[dict[str, Any]]:
        """The server's log: one dict per answered request."""
        if not self.log_path.exists():
            return []
        return [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]


@contextlib.contextmanager
def tls_server(hostnames: list[str], addr: str = "127.0.0.1", tickets: int = 2,
               port: int = 0, nagle: bool = False) -> Iterator[TlsServer]:
    """An HTTPS server on addr with a fresh test CA; certificates name every host in
    `hostnames` and the address itself. `tickets`: TLS 1.3 session tickets sent after the
    handshake (OpenSSL's default is 2); `nagle`: leave Nagle on (many servers do)."""
    import trustme  # test dependency only

    tmp = Path(tempfile.mkdtemp(prefix="obs-tls-"))
    ca = trustme.CA()
    leaf = ca.issue_cert(*hostnames, addr)
    cafile, cert, key = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca.cert_pem.write_to_path(str(cafile))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        with open(cert, "ab") as f:
            f.write(extra.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    log = tmp / "requests.ndjson"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.tls_server", "--addr", addr, "--port", str(port),
         "--cert", str(cert), "--key", str(key), "--log", str(log), "--tickets", str(tickets)]
        + (["--nagle"] if nagle else []),
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"TLS server did not start (exit {proc.poll()})")
        yield TlsServer(addr, int(line.split()[1]), cafile, log, proc)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--tickets", type=int, default=2)
    ap.add_argument("--nagle", action="store_true")
    a = ap.parse_args()
    serve(a.addr, a.port, a.cert, a.key, a.log, a.tickets, a.nagle)


if __name__ == "__main__":
    main()
