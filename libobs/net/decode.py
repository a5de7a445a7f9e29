"""Records of bpf/net.bpf.c → Egress and Dns events (obs-net), and the decoded records obs-llm
builds on.

Offsets below mirror the structs in bpf/net.bpf.c (checked against the compiled program by
tests/kernel/test_obs_net.py).

Egress policy: ONE event per connection. UDP: at connect() (not to port 0: getaddrinfo()
probes source addresses that way and sends nothing). TCP: when the first payload write
shows whether it is a TLS ClientHello (then `sni` is set), else when the connection closes or
`hold` passes after it was established without a write (`sni` null). The event's `ts` is the
connect() time either way.

Dns policy: one event per query, joined with its reply by (pid, DNS id); a query without a
reply after `dns_timeout` is emitted with `answers: null` (an empty list means the server
answered with no A/AAAA/CNAME records).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from libobs.events import NS, Clock, envelope
from libobs.identity import Identities
from libobs.kernel import layout
from libobs.kernel.records import KIND, Hdr, hdr
from libobs.net.clienthello import is_client_hello, parse_sni
from libobs.net.dns import parse_query, parse_response
from libobs.providers import Rules

_H = layout.read("net.h")
K_CONNECT, K_HELLO, K_DNS, K_SEND, K_DATA, K_STATE = (
    KIND[k] for k in ("K_CONNECT", "K_HELLO", "K_DNS", "K_SEND", "K_DATA", "K_STATE"))
HELLO_CAP = _H.constants["HELLO_CAP"]
SOCK_STREAM, SOCK_DGRAM = 1, 2
AF_INET, AF_INET6 = 2, 10
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE = 1, 2, 7

CONN = _H["conn_rec"].unpacker("fd", "ret", "sk", "peer", "proto", "state", upto=layout.END)
PAYLOAD = _H["payload_rec"].unpacker("fd", "cap", "sk", "total", "dir", "proto", "peer",
                                     upto="data")
PAYLOAD_DATA = _H["payload_rec"].offset("data")
TCP = _H["tcp_rec"].unpacker("kind", "len", "ts", "sk", "ts_start", "seq", "ack", "flags", "head",
                             upto=layout.END)

_MIN_SIZE = {K_CONNECT: CONN.offset + CONN.size, K_HELLO: PAYLOAD_DATA, K_DNS: PAYLOAD_DATA,
             K_SEND: TCP.size, K_DATA: TCP.size, K_STATE: TCP.size}

Event = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    addr: str     # IPv4-mapped IPv6 addresses are reported as the IPv4 address they are
    port: int
    family: str   # "ipv4" | "ipv6"


class Connect(NamedTuple):
    h: Hdr
    fd: int
    ret: int
    sk: int
    peer: Peer
    proto: str    # "tcp" | "udp"
    state: int    # TCP state when connect() returned


class Payload(NamedTuple):
    h: Hdr
    kind: int     # K_HELLO or K_DNS
    fd: int
    sk: int
    outgoing: bool
    proto: str
    peer: Peer
    data: bytes


class TcpRec(NamedTuple):
    kind: int     # K_SEND, K_DATA or K_STATE
    ts: int
    sk: int
    length: int   # SEND: bytes; DATA: payload bytes; STATE: new state
    ts_start: int  # SEND: syscall entry (0: unknown)
    seq: int      # SEND: write_seq after it; DATA: segment seq; STATE: old state
    ack: int      # DATA: the segment's ack_seq
    head: bytes | None  # SEND: first bytes the application wrote


def peer(family: int, addr: bytes, port_raw: int) -> Peer | None:
    """A sockaddr's address as the kernel stored it (port in network byte order)."""
    port = ((port_raw & 0xFF) << 8) | (port_raw >> 8)
    if family == AF_INET:
        return Peer(str(ipaddress.IPv4Address(addr[:4])), port, "ipv4")
    if family == AF_INET6:
        v6 = ipaddress.IPv6Address(addr[:16])
        if v6.ipv4_mapped is not None:
            return Peer(str(v6.ipv4_mapped), port, "ipv4")
        return Peer(str(v6), port, "ipv6")
    return None


def _proto(sock_type: int) -> str:
    return "tcp" if sock_type == SOCK_STREAM else "udp"


def decode(raw: bytes) -> Connect | Payload | TcpRec | None:
    """One ring-buffer record of bpf/net.bpf.c, or None for anything else (also truncated)."""
    kind = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else -1
    if len(raw) < _MIN_SIZE.get(kind, 1 << 30):
        return None
    if kind in (K_SEND, K_DATA, K_STATE):
        k, length, ts, sk, ts_start, seq, ack, flags, head = TCP.at(raw)
        return TcpRec(k, ts, sk, length, ts_start, seq, ack, bytes(head) if flags & 1 else None)
    if kind == K_CONNECT:
        h = hdr(raw)
        fd, ret, sk, addr, family, port, sock_type, state = CONN.at(raw)
        p = peer(family, addr, port)
        return None if p is None else Connect(h, fd, ret, sk, p, _proto(sock_type), state)
    if kind in (K_HELLO, K_DNS):
        h = hdr(raw)
        fd, cap, sk, _total, direction, sock_type, addr, family, port = PAYLOAD.at(raw)
        data = bytes(raw[PAYLOAD_DATA:PAYLOAD_DATA + min(cap, HELLO_CAP)])
        p = peer(family, addr, port) or Peer("", 0, "")
        return Payload(h, kind, fd, sk, direction == 0, _proto(sock_type), p, data)
    return None


def egress_fields(c: Connect, sni: str | None) -> Event:
    return {"pid": c.h.pid, "peer": c.peer.addr, "port": c.peer.port, "family": c.peer.family,
            "sni": sni, "proto": c.proto}


def hello_sni(data: bytes) -> tuple[bool, str | None]:
    """(is a TLS ClientHello, its server name)."""
    return (True, parse_sni(data)) if is_client_hello(data) else (False, None)


def dns_messages(buf: bytearray) -> Iterator[bytes]:
    """Complete DNS-over-TCP messages (with their 2-byte length prefix) taken off a stream."""
    while len(buf) >= 2:
        size = int.from_bytes(buf[:2], "big")
        if len(buf) < 2 + size:
            return
        msg = bytes(buf[:2 + size])
        del buf[:2 + size]
        yield msg


@dataclass
class _Held:
    conn: Connect
    deadline: int  # monotonic ns


@dataclass
class _Query:
    h: Hdr
    query: str
    qtype: str
    server: str
    proto: str


class NetDecoder:
    """Records → Egress and Dns events. Stateful only to hold an Egress until its ClientHello
    (or its end) and a query until its reply; both are bounded."""

    MAX_HELD = 65536
    MAX_STREAMS = 4096
    MAX_STREAM_BYTES = 65536 + 2
    SYN_WAIT_NS = 75 * NS  # a connect still in SYN_SENT is reported after this at the latest

    def __init__(self, clock: Clock, host: str, rules: Rules, hold: float = 0.3,
                 dns_timeout: float = 5.0, identities: Identities | None = None):
        self.clock = clock
        self.host = host
        self.rules = rules
        self.hold_ns = int(hold * NS)
        self.dns_timeout_ns = int(dns_timeout * NS)
        self.ids = identities or Identities()
        self.held: OrderedDict[int, _Held] = OrderedDict()
        self.queries: OrderedDict[tuple[int, int], tuple[int, _Query]] = OrderedDict()
        self.streams: OrderedDict[tuple[int, int, bool], bytearray] = OrderedDict()

    # ---- events
    def _event(self, kind: str, h: Hdr, fields: Event, provider: str | None) -> Event:
        identity, process = self.ids.of(h)
        return envelope(kind, fields, ts=self.clock.wall(h.ts), host=self.host,
                        identity=identity, process=process, provider=provider)

    def _egress(self, c: Connect, sni: str | None) -> Event:
        return self._event("Egress", c.h, egress_fields(c, sni), self.rules.classify(sni))

    def _dns(self, q: _Query, answers: list[str] | None) -> Event:
        fields = {"pid": q.h.pid, "query": q.query, "qtype": q.qtype, "server": q.server,
                  "answers": answers, "proto": q.proto}
        return self._event("Dns", q.h, fields, self.rules.classify(q.query))

    # ---- records
    def __call__(self, raw: bytes) -> Iterator[Event]:
        rec = decode(raw)
        if isinstance(rec, Connect):
            yield from self._connect(rec)
        elif isinstance(rec, Payload):
            if rec.kind == K_HELLO:
                held = self.held.pop(rec.sk, None)
                if held is not None:
                    yield self._egress(held.conn, hello_sni(rec.data)[1])
            else:
                yield from self._dns_payload(rec)
        elif isinstance(rec, TcpRec) and rec.kind == K_STATE:
            held = self.held.get(rec.sk)
            if held is None:
                return
            if rec.length == TCP_ESTABLISHED:
                held.deadline = rec.ts + self.hold_ns
            else:  # closed, refused or reset before any write
                del self.held[rec.sk]
                yield self._egress(held.conn, None)

    def _connect(self, c: Connect) -> Iterator[Event]:
        old = self.held.pop(c.sk, None)
        if old is not None:  # the socket was reused: its earlier connection is over
            yield self._egress(old.conn, None)
        if c.proto != "tcp":
            if c.peer.port:  # port 0: glibc's getaddrinfo() probing source addresses, no traffic
                yield self._egress(c, None)
            return
        deadline = c.h.ts + (self.SYN_WAIT_NS if c.state == TCP_SYN_SENT else self.hold_ns)
        self.held[c.sk] = _Held(c, deadline)
        if len(self.held) > self.MAX_HELD:
            _, oldest = self.held.popitem(last=False)
            yield self._egress(oldest.conn, None)

    def _dns_payload(self, p: Payload) -> Iterator[Event]:
        if p.proto == "tcp":
            key = (p.h.pid, p.fd, p.outgoing)
            buf = self.streams.setdefault(key, bytearray())
            self.streams.move_to_end(key)
            buf += p.data
            msgs = list(dns_messages(buf))
            if len(buf) > self.MAX_STREAM_BYTES:
                buf.clear()  # not DNS after all, or we lost track: start over
            while len(self.streams) > self.MAX_STREAMS:
                self.streams.popitem(last=False)
        else:
            msgs = [p.data]
        tcp = p.proto == "tcp"
        for msg in msgs:
            if p.outgoing:
                q = parse_query(msg, tcp=tcp)
                if q is None or (p.h.pid, q.id) in self.queries:
                    continue  # not DNS, or a retransmission of a query already waiting
                self.queries[(p.h.pid, q.id)] = (p.h.ts, _Query(p.h, q.query, q.qtype,
                                                                  p.peer.addr, p.proto))
            else:
                a = parse_response(msg, tcp=tcp)
                if a is None:
                    continue
                waiting = self.queries.get((p.h.pid, a.id))
                if waiting is None or waiting[1].query != a.query:
                    continue
                del self.queries[(p.h.pid, a.id)]
                yield self._dns(waiting[1], a.answers)
        while len(self.queries) > self.MAX_HELD:
            _, (_, oldest) = self.queries.popitem(last=False)
            yield self._dns(oldest, None)

    def tick(self, now: float) -> Iterator[Event]:
        """Egress whose hold ran out and queries whose reply did not come (now: monotonic s;
        inf flushes everything)."""
        flush_all = now == float("inf")
        now_ns = 0 if flush_all else int(now * NS)
        for sk in [sk for sk, h in self.held.items()
                   if flush_all or h.deadline <= now_ns]:
            yield self._egress(self.held.pop(sk).conn, None)
        while self.queries:
            key, (ts, q) = next(iter(self.queries.items()))
            if not flush_all and ts + self.dns_timeout_ns > now_ns:
                break
            del self.queries[key]
            yield self._dns(q, None)


def untracker(table: Any) -> Callable[[int], None]:
    """Stop the kernel's per-send and per-segment records for a struct sock * (bcc table
    `sks`). The entry stays until the connection closes: a repeated connect() on the socket
    is then still known as the same connection."""
    import contextlib
    import ctypes

    def untrack(sk: int) -> None:
        key = ctypes.c_uint64(sk)
        with contextlib.suppress(KeyError):
            leaf = table[key]
            leaf.flags = 0
            table[key] = leaf
    return untrack
