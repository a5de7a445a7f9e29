"""Request/response exchanges on TLS connections, from TCP-level facts → LlmCall events.

The kernel reports, per tracked connection, every send (bytes, when the syscall entered and
returned, the sequence number after it, the first bytes the application wrote) and every
arriving data segment (bytes, arrival time, its seq and the peer's ack_seq). From those alone:

- The TLS handshake is not an exchange. A send whose first record is a handshake (22),
  change_cipher_spec (20) or alert (21) record is handshake/control traffic; so is the first
  application-data send right after the server answered a ClientHello (TLS 1.3 without the
  middlebox-compatibility CCS sends its Finished as an application-data record). When a
  client writes its request together with the Finished, only the bytes after the Finished
  record belong to the request.
- An exchange is a run of application-data sends (the request: start = first send's entry,
  end = last send's return) and the data that arrives after it. A send after response data
  has arrived starts the next exchange — one per HTTP/1.1 request, keep-alive or not.
- A segment is response data only if the server sent it after receiving the whole request
  (its ack_seq covers the request's last byte), and, on TLS 1.3, if it did not arrive within
  1.5 handshake round trips + 20 ms of the client's Finished: the server writes its
  NewSessionTickets (and an HTTP/2 server its SETTINGS) as soon as it reads the Finished,
  and they often arrive after the request, acking it when the client sent both back to back.
  The round trip is measured on the connection (ClientHello sent → server's first flight).
- ttft = from the request's end to the first response segment's arrival; latency = from the
  request's start to the last response segment's arrival; req_bytes/resp_bytes = TCP payload bytes of the exchange
  (retransmitted bytes counted once).
- An exchange is emitted when the next one starts, when the connection leaves ESTABLISHED
  (close(), process exit or kill, peer close), or `idle` after its last response byte.
  Exchanges without response data are not LLM calls and are dropped. A send of at most
  CONTROL_MAX bytes after response data (a TLS alert or KeyUpdate, an HTTP/2 control frame)
  neither ends an exchange nor starts one. When the peer closes, one trailing alert-sized
  segment (its close_notify) is not counted as response.

- A server with Nagle on sends its first session ticket at once and holds the rest until the
  client acknowledges the first; a client done sending delays that ACK (40 ms or more), so
  they arrive after the request, outside the window, acking it, like a fast answer's first
  segment: TLS 1.3 encrypts the record type. What sets them apart: Nagle let exactly one
  segment through in the window (before the request or after it); the tickets of one server are records of one length, so the
  late segment is a whole number of that segment's size; and more data follows. Such a
  segment, arriving within 2 handshake round trips + LATE_TICKET_NS of the Finished, is held
  like an in-window one: tickets if more data comes, the response if nothing does. Known
  limit: a real first response segment of exactly that size, followed by more within that
  time, is taken for a ticket (ttft then ends at the next segment); obs-llm --api corrects
  it from the plaintext (libobs.net.apijoin).

`Connection` is pure (records in, `Exchange`s out) and tested without root;
`LlmCallDecoder` wires it to bpf/net.bpf.c records and the event envelope.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from libobs.events import NS, Clock, duration, envelope
from libobs.identity import Identities
from libobs.net.decode import (
    K_DATA,
    K_HELLO,
    K_SEND,
    K_STATE,
    TCP_ESTABLISHED,
    Connect,
    Payload,
    TcpRec,
    decode,
    hello_sni,
)
from libobs.providers import Rules

TLS_CCS, TLS_ALERT, TLS_HANDSHAKE, TLS_APPDATA = 20, 21, 22, 23
# The largest TLS alert record with an AEAD cipher (TLS 1.2 GCM: 5 + 8 + 2 + 16): a server's
# close_notify.
ALERT_MAX = 31
# Client sends this small neither start nor end an exchange: TLS alerts and KeyUpdates, and
# HTTP/2's SETTINGS ACK, WINDOW_UPDATE, PING and RST_STREAM frames (9-17 bytes + TLS 1.2's 29).
# The smallest HTTP/1.1 request with a Host header is larger; an LLM API call far larger.
CONTROL_MAX = 48
_SEQ = 1 << 32
# Post-handshake window after a TLS 1.3 Finished: 1.5 handshake round trips + this slack,
# and at most this many bytes (tickets are ~250 B each; a big burst is a response). The slack
# absorbs a busy server writing its tickets late (a Python server waits up to its 5 ms GIL
# switch interval) and network jitter; no LLM API answers that fast.
POST_HS_SLACK_NS = 20_000_000
POST_HS_MAX_BYTES = 4096
# A Nagle server's held-back tickets come when the client's delayed ACK releases them: within
# Linux's largest delayed-ACK time (200 ms) and some slack of 2 handshake round trips from
# the Finished; one segment of at most this many tickets.
LATE_TICKET_NS = 250_000_000
LATE_TICKETS_MAX = 8
# Arrivals closer than this are one burst (obs-llm --api's join; see Exchange.bursts).
BURST_GAP_NS = 10_000_000
MAX_BURSTS = 64


def seq_before(a: int, b: int) -> bool:
    """a < b in TCP sequence space (modulo 2^32)."""
    return 0 < (b - a) % _SEQ < _SEQ // 2


def record_kind(head: bytes | None) -> str:
    """What a send starts with: "hello" (a ClientHello, possibly after a compatibility CCS),
    "handshake" (other handshake / change_cipher_spec records), "alert", or "app" (application
    data, and anything unknown)."""
    if not head:
        return "app"
    if head[0] == TLS_CCS and len(head) >= 12 and head[6] == TLS_HANDSHAKE and head[11] == 1:
        return "hello"  # CCS + ClientHello: TLS 1.3's second hello after a HelloRetryRequest
    if head[0] == TLS_HANDSHAKE:
        return "hello" if len(head) >= 6 and head[5] == 1 else "handshake"
    if head[0] == TLS_CCS:
        return "handshake"
    if head[0] == TLS_ALERT:
        return "alert"
    return "app"


def tls13_finished(head: bytes | None) -> bool:
    """A change_cipher_spec record followed by an application-data record: TLS 1.3's client
    Finished in middlebox-compatibility mode (TLS 1.2 follows its CCS with a handshake
    record)."""
    return head is not None and len(head) >= 7 and head[0] == TLS_CCS and head[6] == TLS_APPDATA


def record_end(head: bytes | None, off: int, default: int) -> int:
    """Where the TLS record whose header is at head[off:] ends (default when not visible)."""
    if head is None or len(head) < off + 5:
        return default
    return off + 5 + int.from_bytes(head[off + 3:off + 5], "big")


@dataclass(frozen=True)
class Send:
    ts: int              # when the send returned (monotonic ns)
    nbytes: int
    seq_end: int         # the socket's write_seq after it
    start_ts: int = 0    # when the send entered the kernel (0: unknown)
    head: bytes | None = None


@dataclass(frozen=True)
class Segment:
    ts: int              # arrival (monotonic ns)
    nbytes: int
    seq: int
    ack: int             # what the peer had received of ours when it sent this


@dataclass(frozen=True)
class Closed:
    ts: int
    by_peer: bool        # the peer's FIN came first (else: close() / exit / reset here)


@dataclass
class Exchange:
    index: int           # 1-based, per connection
    start_ts: int
    req_end_ts: int
    req_bytes: int
    req_seq: int
    first_resp_ts: int | None = None
    last_resp_ts: int | None = None
    resp_bytes: int = 0
    resp_segments: int = 0
    _tail: tuple[int, int] = (0, 0)  # (bytes, previous last_resp_ts) of the last segment
    # In-window segments acking the request (ts, bytes): tickets if a response follows later,
    # else they were the response of a server faster than the window (settle()).
    held: list[tuple[int, int]] = field(default_factory=list)
    # [first, last] arrival of each run of data segments less than BURST_GAP apart, of every
    # segment that arrived while this exchange was current (for obs-llm --api's join: when
    # the bytes a TLS read returned had arrived); only the first MAX_BURSTS runs
    bursts: list[list[int]] = field(default_factory=list)
    bursts_cut: bool = False
    until: int = 0  # when it stopped being the connection's current exchange

    def arrived(self, ts: int) -> None:
        if self.bursts and ts - self.bursts[-1][1] <= BURST_GAP_NS:
            self.bursts[-1][1] = ts
        elif len(self.bursts) < MAX_BURSTS:
            self.bursts.append([ts, ts])
        else:
            self.bursts_cut = True

    @property
    def ttft_ns(self) -> int:
        return (self.first_resp_ts or self.req_end_ts) - self.req_end_ts

    @property
    def latency_ns(self) -> int:
        return (self.last_resp_ts or self.req_end_ts) - self.start_ts

    def answered(self) -> bool:
        self.settle()
        return self.first_resp_ts is not None and self.req_bytes > CONTROL_MAX

    def settle(self) -> None:
        """No data came after the post-handshake window: what came inside it, after the
        server had the whole request, was the response."""
        if self.first_resp_ts is None and self.held:
            self.first_resp_ts, self.last_resp_ts = self.held[0][0], self.held[-1][0]
            self.resp_bytes = sum(n for _, n in self.held)
            self.resp_segments = len(self.held)
            self._tail = (self.held[-1][1], self.held[-2][0] if len(self.held) > 1
                          else self.held[0][0])
        self.held = []

    def drop_trailing_alert(self) -> None:
        nbytes, prev = self._tail
        if self.resp_segments >= 2 and 0 < nbytes <= ALERT_MAX:
            self.resp_bytes -= nbytes
            self.resp_segments -= 1
            self.last_resp_ts = prev
            self._tail = (0, prev)


@dataclass
class Connection:
    """One TLS connection's exchanges. Feed sends, segments and the close in arrival order."""

    handshaking: bool = True
    hello_answered: bool | None = None  # None: last handshake send was not a ClientHello
    hello_ts: int = 0
    hs_rtt: int = 0                     # ClientHello sent → server's first flight arrived
    post_hs_until: int = 0              # TLS 1.3: end of the post-handshake window
    post_hs_bytes: int = 0
    ticket_len: int = 0                 # the only in-window segment's bytes (a ticket); -1: more
    late_until: int = 0                 # a held-back ticket can arrive until then
    current: Exchange | None = None
    count: int = 0
    rcv_end: int | None = None          # highest sequence number received + 1
    last_ts: int = 0
    bursts: bool = False                # record Exchange.bursts (obs-llm --api only)

    def _finished(self, ts: int) -> None:
        """The client's TLS 1.3 Finished left at ts: the server's answer to it is coming."""
        self.post_hs_until = ts + self.hs_rtt * 3 // 2 + POST_HS_SLACK_NS
        self.late_until = ts + self.hs_rtt * 2 + LATE_TICKET_NS

    def _post_handshake(self, ts: int, nbytes: int) -> bool:
        """Whether a segment is in the window after our TLS 1.3 Finished: the server's answer
        to it (session tickets)… (counted; the caller decides what else it may be)."""
        if ts > self.post_hs_until or self.post_hs_bytes + nbytes > POST_HS_MAX_BYTES:
            return False
        self.post_hs_bytes += nbytes
        self.ticket_len = -1 if self.ticket_len else nbytes  # Nagle lets only one through
        return True

    def _late_ticket(self, ts: int, nbytes: int) -> bool:
        """Whether a segment after the window may be tickets a Nagle server held back (at
        most one such segment per connection)."""
        unit, self.ticket_len = self.ticket_len, 0
        return (unit > 0 and ts <= self.late_until and nbytes % unit == 0
                and nbytes // unit <= LATE_TICKETS_MAX)

    def send(self, s: Send) -> list[Exchange]:
        self.last_ts = s.ts
        kind = record_kind(s.head)
        if self.handshaking:
            rest = self._handshake_send(s, kind)
            if rest <= 0:
                return []
            # the request went out in the same write as the Finished (Node does this when
            # it resumes a session): only its bytes belong to the exchange
            self.handshaking = False
            s, kind = replace(s, nbytes=rest), "app"
        if kind != "app":
            return []  # alerts, renegotiation: not part of a request
        done = []
        cur = self.current
        if cur is not None and cur.first_resp_ts is None:
            cur.req_end_ts, cur.req_seq = s.ts, s.seq_end
            cur.req_bytes += s.nbytes
            return []
        if s.nbytes <= CONTROL_MAX:
            return []  # close_notify, an HTTP/2 WINDOW_UPDATE mid-response: not a request
        if cur is not None and cur.answered():
            cur.until = s.start_ts or s.ts
            done.append(cur)
        self.count += 1
        self.current = Exchange(self.count, s.start_ts or s.ts, s.ts, s.nbytes, s.seq_end)
        return done

    def _handshake_send(self, s: Send, kind: str) -> int:
        """Bytes at the end of a handshake-time send that are application data."""
        if kind == "hello":
            self.hello_answered, self.hello_ts = False, s.ts
            return 0
        if kind == "app":
            if not self.hello_answered:
                return s.nbytes
            self.hello_answered = None  # TLS 1.3 Finished without a compatibility CCS
            self._finished(s.ts)
            return s.nbytes - record_end(s.head, 0, s.nbytes)
        self.hello_answered = None
        if tls13_finished(s.head):
            self._finished(s.ts)
        if s.head is not None and s.head[0] == TLS_CCS:  # CCS, Finished, maybe the request
            return s.nbytes - record_end(s.head, 6, s.nbytes)
        return 0

    def segment(self, seg: Segment) -> list[Exchange]:
        self.last_ts = seg.ts
        end = (seg.seq + seg.nbytes) % _SEQ
        new = seg.nbytes
        if self.rcv_end is not None:
            if not seq_before(self.rcv_end, end):
                return []  # a retransmission of bytes already seen
            if seq_before(seg.seq, self.rcv_end):
                new = (end - self.rcv_end) % _SEQ
        self.rcv_end = end
        if self.handshaking:
            if self.hello_answered is False:
                self.hello_answered, self.hs_rtt = True, seg.ts - self.hello_ts
            else:  # after our Finished, before the request: the server's tickets
                self._post_handshake(seg.ts, new)
            return []
        cur = self.current
        if cur is not None and self.bursts:
            cur.arrived(seg.ts)
        if self._post_handshake(seg.ts, new):
            if cur is not None and cur.first_resp_ts is None and not seq_before(seg.ack,
                                                                                cur.req_seq):
                cur.held.append((seg.ts, new))  # …or a very fast server's response
            return []
        if cur is None or seq_before(seg.ack, cur.req_seq):
            return []  # unsolicited, or sent before the server had the whole request
        if cur.first_resp_ts is None:
            if self._late_ticket(seg.ts, new):
                cur.held = [(seg.ts, new)]  # tickets if more comes, else the response
                return []
            cur.held = []  # data after the window: what came inside it was tickets
            cur.first_resp_ts = seg.ts
        cur._tail = (new, cur.last_resp_ts or seg.ts)
        cur.last_resp_ts = seg.ts
        cur.resp_bytes += new
        cur.resp_segments += 1
        return []

    def close(self, c: Closed) -> list[Exchange]:
        cur, self.current = self.current, None
        if cur is None or not cur.answered():
            return []
        cur.until = c.ts or self.last_ts
        if c.by_peer:
            cur.drop_trailing_alert()
        return [cur]

    def idle(self, now_ns: int, idle_ns: int) -> list[Exchange]:
        """The current exchange once no response byte came for idle_ns."""
        cur = self.current
        if cur is not None and cur.held and now_ns - cur.held[-1][0] >= idle_ns:
            cur.settle()
        if cur is None or cur.last_resp_ts is None or now_ns - cur.last_resp_ts < idle_ns:
            return []
        self.current = None
        cur.until = now_ns
        return [cur] if cur.answered() else []


class SocketView(NamedTuple):
    """An emitted exchange's connection and instants (wall ns), for the plaintext join:
    which connection it was on, and when its request started and ended and its response's
    first and last segment arrived."""

    conn: tuple[int, int]  # (sock pointer, connect time): one connection, reuse or not
    start: int
    request_end: int
    first_resp: int
    last_resp: int
    bursts: tuple[tuple[int, int], ...]  # Exchange.bursts
    bursts_cut: bool
    until: int  # every arrival before this instant is in bursts (unless bursts_cut)

    def arrived_by(self, t: int, whole: bool) -> int:
        """When the bytes a TLS read returned at t had all arrived: the last segment arrival
        at or before t — or t itself where the socket cannot say. `whole`: every byte such a
        read can return came in this exchange (HTTP/1.1); else (HTTP/2) only arrivals up to
        the exchange's last one are known."""
        if not self.bursts:
            return t
        if (self.bursts_cut and t > self.bursts[-1][1]) or (t > self.until and not whole):
            return t  # segments the exchange did not see may have come before t
        before = [end for start, end in self.bursts if start <= t]
        return min(t, before[-1]) if before else t


SOCKET_KEY = "_socket"  # envelope key of the SocketView; the join removes it before output


# ---- records → events --------------------------------------------------------------------------

@dataclass
class _Tracked:
    conn: Connect
    sni: str | None
    provider: str | None
    exchanges: Connection = field(default_factory=Connection)


class LlmCallDecoder:
    """bpf/net.bpf.c records (built with SNI and LLM) → LlmCall events.

    A connection is followed once its first write is a ClientHello whose SNI classifies as
    an LLM provider (or any ClientHello with all_tls); any other is untracked in the kernel
    through `untrack(sk)` so its packets cost nothing more."""

    MAX_CONNS = 16384
    STALE_NS = 3600 * NS  # forget a connection silent for an hour

    def __init__(self, clock: Clock, host: str, rules: Rules, untrack: Callable[[int], None],
                 all_tls: bool = False, idle: float = 10.0,
                 identities: Identities | None = None, instants: bool = False):
        self.clock = clock
        self.instants = instants  # add SOCKET_KEY for libobs.net.apijoin (obs-llm --api)
        self.host = host
        self.rules = rules
        self.untrack = untrack
        self.all_tls = all_tls
        self.idle_ns = int(idle * NS)
        self.ids = identities or Identities()
        self.pending: OrderedDict[int, Connect] = OrderedDict()  # connected, no write yet
        self.tracked: OrderedDict[int, _Tracked] = OrderedDict()

    def __call__(self, raw: bytes) -> Iterator[dict[str, Any]]:
        rec = decode(raw)
        if isinstance(rec, Connect):
            yield from self._connect(rec)
        elif isinstance(rec, Payload) and rec.kind == K_HELLO:
            self._hello(rec)
        elif isinstance(rec, TcpRec):
            yield from self._tcp(rec)

    def _connect(self, c: Connect) -> Iterator[dict[str, Any]]:
        if c.proto != "tcp":
            return
        old = self.tracked.pop(c.sk, None)  # the kernel reused the socket: the old one ended
        if old is not None:
            yield from self._events(old, old.exchanges.close(Closed(c.h.ts, False)))
        self.pending[c.sk] = c
        self.pending.move_to_end(c.sk)
        while len(self.pending) > self.MAX_CONNS:
            sk, _ = self.pending.popitem(last=False)
            self.untrack(sk)

    def _hello(self, p: Payload) -> None:
        conn = self.pending.pop(p.sk, None)
        if conn is None:
            return
        is_tls, sni = hello_sni(p.data)
        provider = self.rules.classify(sni)
        if not is_tls or (provider is None and not self.all_tls):
            self.untrack(p.sk)
            return
        self.tracked[p.sk] = _Tracked(conn, sni, provider,
                                      Connection(last_ts=p.h.ts, bursts=self.instants))
        while len(self.tracked) > self.MAX_CONNS:
            sk, _ = self.tracked.popitem(last=False)
            self.untrack(sk)

    def _tcp(self, r: TcpRec) -> Iterator[dict[str, Any]]:
        t = self.tracked.get(r.sk)
        if t is None:
            if r.kind == K_STATE and r.length != TCP_ESTABLISHED:
                self.pending.pop(r.sk, None)
            return
        ex = t.exchanges
        if r.kind == K_SEND:
            done = ex.send(Send(r.ts, r.length, r.seq, r.ts_start, r.head))
        elif r.kind == K_DATA:
            done = ex.segment(Segment(r.ts, r.length, r.seq, r.ack))
        elif r.kind == K_STATE and r.length != TCP_ESTABLISHED:
            # left ESTABLISHED: CLOSE_WAIT (8) is the peer's FIN; anything else is ours
            done = ex.close(Closed(r.ts, by_peer=r.length == 8))
            del self.tracked[r.sk]
        else:
            return
        yield from self._events(t, done)

    def _events(self, t: _Tracked, done: list[Exchange]) -> Iterator[dict[str, Any]]:
        for e in done:
            yield self.event(t, e)

    def event(self, t: _Tracked, e: Exchange) -> dict[str, Any]:
        c = t.conn
        fields = {"pid": c.h.pid, "sni": t.sni, "peer": c.peer.addr, "port": c.peer.port,
                  "req_bytes": e.req_bytes, "resp_bytes": e.resp_bytes,
                  "latency": duration(e.latency_ns), "ttft": duration(e.ttft_ns),
                  "exchange": e.index}
        identity, process = self.ids.of(c.h)
        ev = envelope("LlmCall", fields, ts=self.clock.wall(e.start_ts), host=self.host,
                      identity=identity, process=process, provider=t.provider)
        if self.instants:
            wall = self.clock.wall
            ev[SOCKET_KEY] = SocketView((c.sk, c.h.ts), wall(e.start_ts), wall(e.req_end_ts),
                                        wall(e.first_resp_ts or e.req_end_ts),
                                        wall(e.last_resp_ts or e.req_end_ts),
                                        tuple((wall(a), wall(b)) for a, b in e.bursts),
                                        e.bursts_cut, wall(e.until or e.last_resp_ts or 0))
        return ev

    def live(self) -> dict[int, list[int]]:
        """Processes with a followed connection open now → wall-clock starts of their
        exchanges in progress (calls not reported yet)."""
        out: dict[int, list[int]] = {}
        for t in self.tracked.values():
            cur = t.exchanges.current
            out.setdefault(t.conn.h.pid, []).extend(
                [self.clock.wall(cur.start_ts)] if cur is not None else [])
        return out

    def tick(self, now: float) -> Iterator[dict[str, Any]]:
        """Exchanges idle for `idle` (now: monotonic s; inf flushes every open exchange)."""
        if now == float("inf"):
            for t in self.tracked.values():
                yield from self._events(t, t.exchanges.close(Closed(0, False)))
            self.tracked.clear()
            return
        now_ns = int(now * NS)
        for sk, t in list(self.tracked.items()):
            yield from self._events(t, t.exchanges.idle(now_ns, self.idle_ns))
            if now_ns - t.exchanges.last_ts > self.STALE_NS and t.exchanges.current is None:
                del self.tracked[sk]
                self.untrack(sk)
