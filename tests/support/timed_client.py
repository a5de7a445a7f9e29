"""An HTTPS client that knows the truth at its socket, to compare obs-llm's LlmCalls with.

It speaks HTTP/1.1 to tests/support/tls_server.py through ssl.MemoryBIO on a raw socket, so it
stamps with its own monotonic clock exactly what obs-llm measures: when each request's bytes
went into the socket (before the first send; after the last one returned), when the read
that brought the first and the last response bytes returned, and how many raw bytes crossed
each way (bytes before the first application data were TLS 1.3 session tickets).

Its stamps are late by however long the scheduler keeps it from running: a send of 1 MB that
wakes the reader at the other end was seen to return to the client 1-9 ms after the syscall
ended (bpftrace: sys_exit_sendto against the stamp), on a 2-core machine with one core busy.
`--fifo N` runs it SCHED_FIFO at priority N (root), so nothing of the normal class preempts
it on its way back from a syscall, and its wake-ups are immediate.

    python -m tests.support.timed_client PORT CAFILE --host NAME [--conns 3,1,1] [--delay 250]
        [--body 3000] [--mode sendall|writev|nonblock] [--row 0] [--addr 127.0.0.1] [--fifo 10]

`--conns 3,1,1`: three connections, the first with three keep-alive requests. One JSON line per
request: pid, conn, req_bytes, resp_bytes, ttft and latency (ns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import ssl
import time
from typing import Any


def _read_app(tls: ssl.SSLObject) -> bytes:
    out = b""
    while True:
        try:
            chunk = tls.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            return out
        if not chunk:
            return out
        out += chunk


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


IOV_MAX = 1024


def tls_records(raw: bytes) -> list[bytes]:
    """TLS records of a flight, one buffer each (the last one whole or cut, as it came)."""
    out, i = [], 0
    while i < len(raw):
        n = 5 + int.from_bytes(raw[i + 3:i + 5], "big") if len(raw) - i >= 5 else len(raw) - i
        out.append(raw[i:i + n])
        i += n
    return out


def send(sock: socket.socket, raw: bytes, mode: str) -> None:
    """Write a request as the client kinds of issue 13 do."""
    if mode == "sendall":
        sock.sendall(raw)
    elif mode == "writev":  # one iovec per record, up to IOV_MAX a call (rustls, vectored)
        bufs = tls_records(raw)
        while bufs:
            sent = os.writev(sock.fileno(), bufs[:IOV_MAX])
            while bufs and sent >= len(bufs[0]):
                sent -= len(bufs.pop(0))
            if sent:
                bufs[0] = bufs[0][sent:]
    else:  # "nonblock": what the kernel takes now, then wait until it takes more
        sock.setblocking(False)
        view = memoryview(raw)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                select.select([], [sock], [])
        sock.setblocking(True)


def _connect(a: argparse.Namespace) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO,
                                              ssl.MemoryBIO]:
    ctx = ssl.create_default_context(cafile=a.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection((a.addr, a.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=a.host)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())  # the client Finished
    return sock, tls, incoming, outgoing


def _request(a: argparse.Namespace, sock: socket.socket, tls: ssl.SSLObject,
             incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> dict[str, Any]:
    payload = b'{"model":"bench","prompt":"' + b"x" * a.body + b'"}'
    tls.write(f"POST /v1/messages?row={a.row}&delay={a.delay}&chunks={a.chunks}"
              f"&interval={a.interval}&size={a.size} HTTP/1.1\r\nHost: {a.host}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
              .encode() + payload)
    raw = outgoing.read()
    t_start = time.monotonic_ns()
    send(sock, raw, a.mode)
    t_end = time.monotonic_ns()
    data, first, last, resp_bytes = b"", 0, 0, 0
    while not _complete(data):
        chunk = sock.recv(262144)
        t = time.monotonic_ns()
        if not chunk:
            raise SystemExit("server closed the connection")
        incoming.write(chunk)
        app = _read_app(tls)
        if app and not first:
            first = t
        if first:  # raw bytes before the first application data were session tickets
            resp_bytes += len(chunk)
            last = t
        data += app
    return {"req_bytes": len(raw), "resp_bytes": resp_bytes, "ttft": first - t_end,
            "latency": last - t_start}


def run(a: argparse.Namespace) -> None:
    if a.fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(a.fifo))
    for conn, n in enumerate(int(c) for c in a.conns.split(",")):
        sock, tls, incoming, outgoing = _connect(a)
        for _ in range(n):
            got = _request(a, sock, tls, incoming, outgoing)
            print(json.dumps({"pid": os.getpid(), "conn": conn, **got}), flush=True)
        with contextlib.suppress(ssl.SSLError):
            tls.unwrap()
        sock.sendall(outgoing.read())  # close_notify
        sock.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("cafile")
    ap.add_argument("--host", required=True, help="server name (SNI, Host)")
    ap.add_argument("--addr", default="127.0.0.1", help="where to connect")
    ap.add_argument("--conns", default="1", help="requests per connection, comma-separated")
    ap.add_argument("--delay", type=int, default=250, help="server delay, ms")
    ap.add_argument("--chunks", type=int, default=5, help="response body pieces")
    ap.add_argument("--interval", type=int, default=40, help="ms between pieces")
    ap.add_argument("--size", type=int, default=40_000, help="response body bytes")
    ap.add_argument("--body", type=int, default=3_000, help="request body bytes")
    ap.add_argument("--row", type=int, default=0, help="tag for the server's log")
    ap.add_argument("--mode", choices=("sendall", "writev", "nonblock"), default="sendall")
    ap.add_argument("--fifo", type=int, default=0, help="SCHED_FIFO priority (0: normal class)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
