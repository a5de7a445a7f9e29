"""tests/support/relay.py, the delaying TCP relay the RTT tests stand on: bytes in order, each
way delayed by at least RTT/2, half-close passed on, the sender held back at max_queue, and no
thread left after close. Timing is asserted only from below (a busy machine only adds)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay import relay


def tcp_max(which: str) -> int:
    return int(Path(f"/proc/sys/net/ipv4/tcp_{which}").read_text().split()[2])


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """An echo server that answers FIN with FIN."""
    ls = socket.create_server(("127.0.0.1", 0))

    def serve(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):  # the relay may cut the connection first
            while data := c.recv(65536):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield ls.getsockname()
    ls.close()


def test_round_trip_takes_the_rtt_and_keeps_order(echo):
    with relay(echo, 60) as r, socket.create_connection(("127.0.0.1", r.port)) as s:
        t0 = time.monotonic()
        s.sendall(b"ping")
        assert s.recv(16) == b"ping"
        assert time.monotonic() - t0 >= 0.060
        data = bytes(range(256)) * 8192  # 2 MiB, more than max_queue below holds
        def write() -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        threading.Thread(target=write, daemon=True).start()
        got = bytearray()
        while chunk := s.recv(1 << 20):  # b"": the echo's FIN came back through the relay
            got += chunk
        assert bytes(got) == data


def test_sender_held_back_at_max_queue(echo):
    with relay(echo, 400, max_queue=256 << 10) as r, \
            socket.create_connection(("127.0.0.1", r.port)) as s:
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 0.2  # well before the first chunk is delivered
        while time.monotonic() < deadline:
            try:
                sent += s.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.01)
        # the relay stopped reading: what was taken is its queue plus at most the kernels'
        # buffers (one socket's send buffer and the other's receive buffer; an unbounded
        # relay took over 100 MB here)
        assert sent <= (256 << 10) + 65536 + tcp_max("wmem") + tcp_max("rmem")


def test_close_leaves_no_threads(echo):
    with relay(echo, 20) as r:
        conns = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(3)]
        for c in conns:
            c.sendall(b"x")
        for c in conns:
            assert c.recv(1) == b"x"
    for c in conns:
        assert c.recv(1) == b""  # cut: the relay closed its side
        c.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("relay-")] == []
