"""A delaying TCP relay: a round trip time for tests on a kernel without netem.

Each accepted connection is connected to `upstream`, and bytes are forwarded both ways: every
chunk read is written `delay` (one way: RTT/2) after it was read, in order, one write per
chunk on a TCP_NODELAY socket (so segment boundaries stay as far as TCP allows); a FIN is
passed on `delay` after it came. At most `max_queue` bytes wait per direction: the relay stops
reading meanwhile, so a fast sender is held back by TCP's own flow control.

What obs sees through it. obs-llm watches the client's socket: its sends, the arrival of each
data segment, and the peer's ack in those segments. Sends and arrivals are as over a path with
that delay — a server's answer arrives one RTT (plus its own time) after the request left, the
handshake's round trip measures the RTT, a ticket or response chunk arrives as a segment of its
own. The ACKs are not: the relay's kernel acknowledges the client's bytes at once, so (1) a
large request's send returns without waiting on the far end (no slow start across the path),
and (2) every arriving segment acks all the client had sent before the relay passed it on, as
if the server had read it. (2) is the harder case for obs: it can no longer tell from the ack
that a segment left the server before the request reached it (TLS 1.3 session tickets), and
only its post-handshake window is left to do so. (3) What the server's sends wait for — a
Nagle server's second session ticket, its congestion window — is clocked by the relay's
acknowledgements on loopback, not by the client's across the delay: over a real path that
ticket waits for the client's delayed ACK and comes about 2 RTT + 40 ms after the client's
Finished; through the relay it came with the first at RTT 50 and 150 ms (and ~40 ms after it
at RTT 0, as without the relay). Which namespace the relay runs in changes none of this; the
client names the provider in its ClientHello (obs classifies by SNI) and connects to the
relay's address, so the relay and the server stay on loopback.

    python -m tests.support.relay --rtt 150 --upstream 127.0.0.1:8443 [--listen 127.0.0.1:0]

prints `PORT <n>` once listening and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

CHUNK = 65536
MAX_QUEUE = 4 << 20


class _Pipe:
    """One direction: a reader thread queues (due, bytes); a writer thread delivers them."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_ns: int, max_queue: int,
                 conn: _Conn):
        self.src, self.dst, self.delay_ns, self.max_queue = src, dst, delay_ns, max_queue
        self.conn = conn
        self.queue: deque[tuple[int, bytes]] = deque()  # b"": the FIN
        self.queued = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.threads = [threading.Thread(target=f, name=f"relay-{f.__name__[1:]}", daemon=True)
                        for f in (self._read, self._write)]

    def _put(self, data: bytes) -> bool:
        with self.cond:
            while self.queued >= self.max_queue and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            self.queue.append((time.monotonic_ns() + self.delay_ns, data))
            self.queued += len(data)
            self.cond.notify_all()
            return True

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            if not self._put(data) or not data:
                return

    def _write(self) -> None:
        try:
            while self._deliver():
                pass
        except OSError:
            self.conn.cut()  # the far end is gone: so is the connection
        self.conn.finished()

    def _deliver(self) -> bool:
        with self.cond:
            while not self.queue and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            due, data = self.queue[0]
        wait = due - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        if data:
            self.dst.sendall(data)
        else:
            self.dst.shutdown(socket.SHUT_WR)
        with self.cond:
            self.queue.popleft()
            self.queued -= len(data)
            self.cond.notify_all()
        return bool(data)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _Conn:
    """A relayed connection: both sockets, both directions; closed when both have ended."""

    def __init__(self, down: socket.socket, up: socket.socket, delay_ns: int, max_queue: int):
        self.socks = (down, up)
        self.pipes = (_Pipe(down, up, delay_ns, max_queue, self),
                      _Pipe(up, down, delay_ns, max_queue, self))
        self.lock = threading.Lock()
        self.running = 2

    def start(self) -> None:
        for p in self.pipes:
            for t in p.threads:
                t.start()

    def cut(self) -> None:
        """Unblock every thread: stop both directions, shut both sockets."""
        for p in self.pipes:
            p.stop()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def finished(self) -> None:
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last:  # both FINs delivered (or cut): nothing more can cross
            self.cut()
            for s in self.socks:
                s.close()

    def alive(self) -> bool:
        return any(t.is_alive() for p in self.pipes for t in p.threads)

    def join(self, timeout: float) -> None:
        for p in self.pipes:
            for t in p.threads:
                t.join(timeout)


def _nodelay(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Relay:
    """Listens on `listen` (port 0: any); forwards to `upstream` with `rtt_ms` / 2 each way."""

    def __init__(self, upstream: tuple[str, int], rtt_ms: float,
                 listen: tuple[str, int] = ("127.0.0.1", 0), max_queue: int = MAX_QUEUE):
        self.upstream, self.delay_ns, self.max_queue = upstream, int(rtt_ms * 1e6 / 2), max_queue
        self.lsock = socket.create_server(listen)
        self.port: int = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: list[_Conn] = []
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    def start(self) -> Relay:
        self.acceptor.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return  # the listener was closed
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                down.close()
                continue
            conn = _Conn(_nodelay(down), _nodelay(up), self.delay_ns, self.max_queue)
            with self.lock:
                if self.closing:
                    for s in conn.socks:
                        s.close()
                    return
                self.conns = [c for c in self.conns if c.alive()]
                self.conns.append(conn)
            conn.start()

    def close(self) -> None:
        """Stop accepting, cut every connection, wait for the threads."""
        with self.lock:
            self.closing = True
            conns, self.conns = self.conns, []
        with contextlib.suppress(OSError):
            self.lsock.shutdown(socket.SHUT_RDWR)
        self.lsock.close()
        self.acceptor.join(5)
        for c in conns:
            c.cut()
        for c in conns:
            c.join(5)
            for s in c.socks:
                s.close()


@contextlib.contextmanager
def relay(upstream: tuple[str, int], rtt_ms: float, listen: tuple[str, int] = ("127.0.0.1", 0),
          max_queue: int = MAX_QUEUE) -> Iterator[Relay]:
    """A running Relay (threads of this process) for the block; `.port` is where to connect."""
    r = Relay(upstream, rtt_ms, listen, max_queue).start()
    try:
        yield r
    finally:
        r.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", type=float, required=True, help="round trip time to add, ms")
    ap.add_argument("--upstream", type=_addr, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen", type=_addr, default=("127.0.0.1", 0), help="HOST:PORT")
    ap.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="bytes held per direction")
    a = ap.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with relay(a.upstream, a.rtt, a.listen, a.max_queue) as r:
        print(f"PORT {r.port}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
