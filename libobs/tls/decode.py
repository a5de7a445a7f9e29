"""Records of bpf/ssl.bpf.c → SslContent and LlmApi events.

Three stages, each usable alone:

1. `decode_chunk`: one ring-buffer record → `SslChunk` (a piece of one SSL call).
2. `CallAssembler`: chunks → `SslCall`, the bytes one SSL_read/SSL_write call moved.
3. `CallOrder` (libobs.tls.order): each connection's calls in kernel time order (a write's
   record can reach the ring buffer after the reply another thread read).
4. `ApiTracker`: calls → `ApiFact`s, by reassembling each TLS connection (pid, SSL*) into
   HTTP/1.1 messages (libobs.tls.http1), HTTP/2 streams (libobs.tls.http2) or, after an
   upgrade, WebSocket messages (libobs.tls.websocket), and reading LLM API facts from them
   (libobs.tls.llmapi).

`SslDecoder` wires them into the envelope events obs-ssl prints; libobs.tls.attach wires them for
obs-llm.

Missing bytes. Every call carries the stream offset of its first byte, so a gap (a full ring
buffer, or a call larger than --max-capture) has an exact size. The gap is handed to the HTTP
parser as that many filler bytes: Content-Length framing stays intact, and the message that
contained it is marked truncated (llmapi then reads model and stream by pattern). Where the
filler breaks the framing (a chunk-size line, a head), the parser declares the direction dead
and the connection is dropped until the client starts a new request at a call boundary.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from libobs.events import NS, Clock, envelope, text
from libobs.identity import Identities
from libobs.kernel import layout
from libobs.kernel.records import KIND, Hdr
from libobs.providers import classify
from libobs.tls.http1 import HttpStream
from libobs.tls.http2 import PREFACE, Http2Stream
from libobs.tls.llmapi import other_request, request_facts, response_facts
from libobs.tls.message import HttpMessage
from libobs.tls.order import CallOrder
from libobs.tls.redact import redact
from libobs.tls.websocket import WebSocketStream
from libobs.tool.sink import Line, as_line, envelope_middle

_H = layout.read("ssl.h")
K_SSL = KIND["K_SSL"]
CHUNK = _H.constants["CHUNK"]    # data bytes per record at most
_FIXED = ("ssl", "off", "total", "captured", "chunk", "fn", "lib", "read_failed")
REC = _H["ssl_rec"].unpacker(*_FIXED, upto=layout.END)
DATA = _H["ssl_rec"].size        # where a record's data starts
_RECORD = _H["ssl_rec"].unpacker("h", *_FIXED, upto=layout.END)
# FN_* of bpf/ssl.h: which function moved a record's bytes
_FN = {"FN_READ": "SSL_read", "FN_READ_EX": "SSL_read_ex", "FN_WRITE": "SSL_write",
       "FN_WRITE_EX": "SSL_write_ex", "FN_GNUTLS_RECV": "gnutls_record_recv",
       "FN_GNUTLS_SEND": "gnutls_record_send", "FN_PR_READ": "PR_Read", "FN_PR_WRITE": "PR_Write",
       "FN_PR_RECV": "PR_Recv", "FN_PR_SEND": "PR_Send", "FN_GO_READ": "crypto/tls.(*Conn).Read",
       "FN_GO_WRITE": "crypto/tls.(*Conn).Write"}
FN_NAMES = tuple(name for _, name in sorted((_H.constants[k], v) for k, v in _FN.items()))
READ_FNS = frozenset(_H.constants[k] for k in ("FN_READ", "FN_READ_EX", "FN_GNUTLS_RECV",
                                                "FN_PR_READ", "FN_PR_RECV", "FN_GO_READ"))
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                "cache_creation_tokens")

# A write that can open an HTTP/1.x request: where a connection's reassembly may (re)start.
_REQUEST_START = re.compile(rb"[A-Z]{3,10} [^ \r\n]{1,8192} HTTP/1\.[01]\r?\n")
_FILLER_PIECE = 1 << 20
MAX_GAP = 64 << 20               # larger holes are not bridged: the connection restarts
MAX_PENDING_REQUESTS = 64


class SslChunk(NamedTuple):
    h: Hdr
    ssl: int
    off: int          # stream offset of data[0]
    total: int        # bytes the whole call moved
    captured: int     # bytes of the call the kernel copied
    chunk: int        # index within the call
    fn: int
    lib: int
    read_failed: bool
    data: bytes


_new = tuple.__new__  # a named tuple made from a tuple in C, not through its __new__


def _unpack(raw: bytes) -> tuple[Any, ...] | None:
    """A record's header and fixed part in one go (this runs per call): the header's 12
    fields, then ssl, off, total, captured, chunk, fn, lib, read_failed; None for a record
    of another program."""
    if len(raw) < DATA:
        return None
    v = _RECORD.unpack_from(raw, 0)
    return v if v[0] == K_SSL else None


def _data(v: tuple[Any, ...], raw: bytes) -> bytes:
    return bytes(raw[DATA:DATA + min(v[5], len(raw) - DATA, CHUNK)])  # v[5]: the header's len


def _chunk(v: tuple[Any, ...], raw: bytes) -> SslChunk:
    return _new(SslChunk, (_new(Hdr, v[:12]), *v[12:19], v[19] != 0, _data(v, raw)))


def decode_chunk(raw: bytes) -> SslChunk | None:
    """A record of bpf/ssl.bpf.c, or None for any other record."""
    v = _unpack(raw)
    return None if v is None else _chunk(v, raw)


@dataclass(slots=True)
class SslCall:
    """What one SSL_read/SSL_write(_ex) call moved. `data` is the captured prefix: shorter
    than `total` when the call exceeded --max-capture or a record was lost."""

    h: Hdr
    ssl: int
    off: int
    total: int
    fn: int
    lib: int
    data: bytes
    is_read: bool = field(init=False, repr=False, compare=False)  # asked several times a call

    def __init__(self, h: Hdr, ssl: int, off: int, total: int, fn: int, lib: int,
                 data: bytes) -> None:
        self.h, self.ssl, self.off, self.total, self.fn, self.lib, self.data = (
            h, ssl, off, total, fn, lib, data)
        self.is_read = fn in READ_FNS

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.total


@dataclass
class _Pending:
    first: SslChunk
    parts: list[bytes]
    next_chunk: int
    broken: bool
    since: float


class CallAssembler:
    """Joins the chunks of each call. A call's chunks are written by one probe run, in order,
    so they arrive in order; one whose rest was lost is finished as soon as the same thread's
    next call shows up (or by `flush`)."""

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}  # tid -> call in progress

    def feed(self, c: SslChunk, now: float | None = None) -> list[SslCall]:
        out: list[SslCall] = []
        p = self._pending.get(c.h.tid)
        if p is None and c.chunk == 0 and c.captured <= CHUNK:  # most calls: one record
            out.append(SslCall(c.h, c.ssl, c.off, c.total, c.fn, c.lib,
                               b"" if c.read_failed else c.data))
            return out
        if p is not None and (p.first.h.ts != c.h.ts or c.chunk == 0):
            out.append(self._finish(self._pending.pop(c.h.tid)))
            p = None
        if p is None:
            p = _Pending(c, [], 0, False, time.monotonic() if now is None else now)
            self._pending[c.h.tid] = p
        if c.chunk != p.next_chunk or c.read_failed:
            p.broken = True  # keep only the contiguous prefix
        if not p.broken:
            p.parts.append(c.data)
            p.next_chunk += 1
        if c.chunk + 1 >= _chunks(c.captured):
            out.append(self._finish(self._pending.pop(c.h.tid)))
        return out

    def feed_record(self, raw: bytes) -> list[SslCall] | None:
        """feed(decode_chunk(raw)), None for another program's record. A call in one record
        (most are) goes straight to its SslCall: no SslChunk on the way."""
        v = _unpack(raw)
        if v is None:
            return None
        if v[16] != 0 or v[15] > CHUNK or v[2] in self._pending:  # chunk, captured, tid
            return self.feed(_chunk(v, raw))
        return [SslCall(_new(Hdr, v[:12]), v[12], v[13], v[14], v[17], v[18],
                        b"" if v[19] else _data(v, raw))]

    def flush(self, older_than: float | None = None) -> list[SslCall]:
        """Finish calls waiting since before `older_than` (all of them with None)."""
        done = [tid for tid, p in self._pending.items()
                if older_than is None or p.since < older_than]
        return [self._finish(self._pending.pop(tid)) for tid in done]

    @staticmethod
    def _finish(p: _Pending) -> SslCall:
        f = p.first
        return SslCall(f.h, f.ssl, f.off - f.chunk * CHUNK, f.total, f.fn, f.lib,
                       b"".join(p.parts) if f.chunk == 0 else b"")


def _chunks(captured: int) -> int:
    return max(1, -(-captured // CHUNK))


# ---- LLM API facts per connection -----------------------------------------------------------

class Timing(NamedTuple):
    """An exchange as the application saw it through its SSL calls (kernel monotonic ns; a
    write is stamped when it was entered, a read when it returned): the request's last
    byte written, the response's first and last byte read, and each message's size in
    plaintext (HTTP/1.1: head and framed body; HTTP/2: that stream's frames). On a response
    fact only: the request's end is known, the response's first and last byte too."""

    request_end: int
    first_resp: int | None = None
    last_resp: int | None = None
    req_bytes: int = 0
    resp_bytes: int = 0


@dataclass
class ApiFact:
    """One LlmApi fact. `ts` is the kernel's monotonic ns of the message's first byte for a
    request, of its last byte for a response; `request_ts` is the request's first byte in both
    halves of an exchange (the key to join on). `fields` are LlmApi's, without pid/is_request.
    `stream` is the HTTP/2 stream id (0 on HTTP/1.x and WebSocket).
    A request that is not an LLM API call gives a fact too, with `model_call` false and only
    method and path in `fields` (obs-llm --api marks its LlmCall; it is no LlmApi event)."""

    h: Hdr
    ssl: int
    is_request: bool
    ts: int
    request_ts: int
    host: str | None
    fields: dict[str, Any]
    stream: int = 0
    timing: Timing | None = None
    model_call: bool = True

    @property
    def provider(self) -> str | None:
        return provider_of(self.host)


@functools.lru_cache(maxsize=1024)
def provider_of(host: str | None) -> str | None:
    """The provider serving a Host header's host (cached: asked for every event)."""
    return classify(host_name(host))


def host_name(host: str | None) -> str | None:
    """A Host header without its port ("api.x.com:443" → "api.x.com", "[::1]:8443" → "::1")."""
    if not host:
        return None
    host = host.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class _Conn:
    http: HttpStream | Http2Stream | WebSocketStream
    h: Hdr
    seen: float
    next_off: list[int | None] = field(default_factory=lambda: [None, None])  # [write, read]
    gap: list[bool] = field(default_factory=lambda: [False, False])
    requests: deque[tuple[HttpMessage, dict[str, Any] | None]] = field(default_factory=deque)
    host: str | None = None
    upgrade: tuple[str, str | None, str] | None = None  # a 101 to websocket: path, host, exts


class ApiTracker:
    """Per-connection HTTP/1.1 reassembly and LLM facts. Bounded: at most `max_conns`
    connections (least recently used dropped first), idle ones expired by `expire`; a
    message body is kept up to `max_body` (beyond it llmapi reads the head by pattern)."""

    def __init__(self, max_conns: int = 4096, idle_secs: float = 300.0,
                 max_body: int = 4 << 20):
        self.max_conns = max_conns
        self.idle_secs = idle_secs
        self.max_body = max_body
        self._conns: OrderedDict[tuple[int, int], _Conn] = OrderedDict()
        self.resyncs = 0  # connections dropped on unbridgeable gaps or unparseable bytes
        # what HTTP/2 and WebSocket decoders counted on connections that are gone:
        # errors (directions killed), bad_frames (skipped), streams_dropped, dropped (bytes)
        self.problems: Counter[str] = Counter()

    def host_of(self, pid: int, ssl: int) -> str | None:
        conn = self._conns.get((pid, ssl))
        return conn.host if conn else None

    def feed(self, call: SslCall, now: float | None = None) -> list[ApiFact]:
        now = time.monotonic() if now is None else now
        h, is_read = call.h, call.is_read
        key = (h.pid, call.ssl)
        d = 1 if is_read else 0
        facts: list[ApiFact] = []
        conn = self._conns.get(key)
        if conn is not None:
            expected = conn.next_off[d]
            if expected is not None and call.off != expected:
                bridged = self._gap(conn, d, call.off - expected)
                if bridged is None:
                    self._drop(key)
                    conn = None
                else:
                    facts += self._facts(conn, call.ssl, bridged)
        if conn is None:
            http = self._start(call)
            if http is None:
                return facts  # mid-connection: wait for the start of a request
            conn = _Conn(http, call.h, now)
            self._conns[key] = conn
            if len(self._conns) > self.max_conns:
                self._harvest(self._conns.popitem(last=False)[1])  # the least recently used
        else:
            self._conns.move_to_end(key)  # a new one is at the end already
        conn.h, conn.seen = h, now
        conn.next_off[d] = call.off + call.total
        msgs = conn.http.feed(is_read, call.data, h.ts)
        if msgs:
            facts += self._facts(conn, call.ssl, msgs)
        if conn.upgrade is not None:  # the rest of this read is already WebSocket frames
            conn.http, conn.upgrade = WebSocketStream(*conn.upgrade, self.max_body), None
            facts += self._facts(conn, call.ssl,
                                 conn.http.feed(True, _after_101(call.data), h.ts))
        if call.truncated:
            bridged = self._gap(conn, d, call.total - len(call.data))
            facts += self._facts(conn, call.ssl, bridged or [])
        if conn.http.dead(True) or conn.http.dead(False):
            self._drop(key)
        return facts

    def _gap(self, conn: _Conn, d: int, n: int) -> list[HttpMessage] | None:
        """Bridge n missing bytes with filler: the messages that completes, or None when the
        hole cannot be bridged (negative, too large, or the filler broke the framing)."""
        if n <= 0 or n > MAX_GAP:
            return None
        if not isinstance(conn.http, HttpStream):  # framing that filler cannot stand in for
            return conn.http.bridge(bool(d), n, conn.h.ts)
        conn.gap[d] = True
        out: list[HttpMessage] = []
        while n > 0 and not conn.http.dead(bool(d)):
            piece = min(n, _FILLER_PIECE)
            out += conn.http.feed(bool(d), b" " * piece, conn.h.ts)
            n -= piece
        return None if conn.http.dead(bool(d)) else out

    def _facts(self, conn: _Conn, ssl: int, msgs: list[HttpMessage]) -> list[ApiFact]:
        out: list[ApiFact] = []
        for msg in msgs:
            d = int(not msg.is_request)
            if conn.gap[d]:
                msg.truncated = True  # filler inside: llmapi reads the body by pattern
                conn.gap[d] = False
            if msg.is_request:
                out.extend(self._request(conn, ssl, msg))
            else:
                out.extend(self._response(conn, ssl, msg))
        return out

    def _request(self, conn: _Conn, ssl: int, msg: HttpMessage) -> list[ApiFact]:
        conn.host = msg.headers.get("host", conn.host)
        req = request_facts(msg)
        conn.requests.append((msg, req))
        while len(conn.requests) > MAX_PENDING_REQUESTS:
            conn.requests.popleft()
        if req is None:
            other = other_request(msg)
            return [ApiFact(conn.h, ssl, True, msg.ts_first, msg.ts_first, conn.host, other,
                            model_call=False)] if other else []
        fields = {"model": req.get("model"), **dict.fromkeys(TOKEN_FIELDS),
                  "stream": bool(req.get("stream")), "path": req.get("path")}
        return [ApiFact(conn.h, ssl, True, msg.ts_first, msg.ts_first, conn.host, fields,
                        msg.stream, Timing(msg.ts_last or msg.ts_first, req_bytes=msg.wire_len))]

    def _start(self, call: SslCall) -> HttpStream | Http2Stream | None:
        if call.is_read:
            return None
        if call.data.startswith(PREFACE):  # ALPN is not in the plaintext; the preface is
            return Http2Stream(self.max_body)
        return HttpStream(self.max_body) if _REQUEST_START.match(call.data) else None

    def _response(self, conn: _Conn, ssl: int, msg: HttpMessage) -> list[ApiFact]:
        if not conn.requests:
            return []
        if msg.stream:  # HTTP/2: the request of the same stream, wherever it is in the queue
            i = next((i for i, (m, _) in enumerate(conn.requests) if m.stream == msg.stream), -1)
            if i < 0:
                return []
            request, req = conn.requests[i]
            del conn.requests[i]
        else:
            request, req = conn.requests.popleft()
        if msg.status == 101 and msg.headers.get("upgrade", "").lower() == "websocket":
            conn.upgrade = (request.path or "", request.headers.get("host", conn.host),
                            msg.headers.get("sec-websocket-extensions", ""))
        if req is None:
            return []
        resp = response_facts(msg, req)
        if resp is None:
            return []
        fields = {"model": resp.get("model"), **{k: resp.get(k) for k in TOKEN_FIELDS},
                  "stream": bool(resp.get("stream")), "path": req.get("path")}
        host = request.headers.get("host", conn.host)
        last = msg.ts_last or msg.ts_first
        timing = Timing(request.ts_last or request.ts_first, msg.ts_first, last,
                        request.wire_len, msg.wire_len)
        return [ApiFact(conn.h, ssl, False, last, request.ts_first, host, fields, msg.stream,
                        timing)]

    def expire(self, now: float) -> list[ApiFact]:
        """Close connections idle since before now - idle_secs (all of them at now=inf)."""
        out: list[ApiFact] = []
        for key in [k for k, c in self._conns.items() if now - c.seen >= self.idle_secs]:
            conn = self._conns.pop(key)
            self._harvest(conn)
            out += self._facts(conn, key[1], conn.http.close())
        return out

    def _drop(self, key: tuple[int, int]) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            self.resyncs += 1
            self._harvest(conn)

    def _harvest(self, conn: _Conn) -> None:
        for name in ("errors", "bad_frames", "streams_dropped", "dropped"):
            self.problems[name] += getattr(conn.http, name, 0)


def _after_101(data: bytes) -> bytes:
    """What follows the head of a 101 response in the read that carried it."""
    start = data.find(b"HTTP/1.1 101")
    end = data.find(b"\r\n\r\n", max(start, 0))
    return data[end + 4:] if start >= 0 and end >= 0 else b""


# ---- envelope events for obs-ssl ------------------------------------------------------------

Event = dict[str, Any] | Line
CALL_WAIT = 1.0  # seconds a call may wait for chunks that the ring buffer lost
MAX_MIDDLES = 4096  # rendered envelopes kept (one per process, kind and provider)


class SslDecoder:
    """Ring-buffer records in, SslContent (with `content`) and LlmApi (with `api`) out.
    `libs` maps a record's library slot to its path; it may grow while running.
    With `lines`, events come as NDJSON `Line`s (json output): each process's envelope is
    rendered once and reused, not built and serialised again for every SSL call."""

    def __init__(self, clock: Clock, host: str, libs: list[str], *, content: bool = True,
                 api: bool = True, redact_content: bool = True,
                 identities: Identities | None = None, lines: bool = False):
        self.clock = clock
        self.host = host
        self.libs = libs
        self.content = content
        self.api = api
        self.lines = lines
        self.scrub: Callable[[bytes], bytes] = redact if redact_content else bytes
        self.ids = identities or Identities()
        self.calls = CallAssembler()
        self.order = CallOrder()
        self.tracker = ApiTracker()
        self._expired = 0.0
        # (kind, pid, provider) -> (the identity it was rendered with, envelope middle)
        self._middles: dict[tuple[str, int, str | None], tuple[object, bytes]] = {}

    def __call__(self, raw: bytes) -> list[Event]:
        # lists rather than generators: this runs once per SSL call
        calls = self.calls.feed_record(raw)
        if calls is None:
            return []
        out: list[Event] = []
        for call in calls:
            for ordered in self.order.feed(call):
                self._call(ordered, out)
        return out

    def tick(self, now: float) -> list[Event]:
        """now: time.monotonic() taken before the ring buffers were last polled (inf at exit):
        held reads that returned long enough before it go out."""
        out: list[Event] = []
        final = now == float("inf")
        for call in self.calls.flush(None if final else now - CALL_WAIT):
            for ordered in self.order.feed(call):
                self._call(ordered, out)
        for ordered in self.order.flush(None if final else int(now * NS)):
            self._call(ordered, out)
        if self.api and (final or now - self._expired >= 1.0):
            self._expired = now
            out += [self.llm_api(fact) for fact in self.tracker.expire(now) if fact.model_call]
        return out

    def _call(self, call: SslCall, out: list[Event]) -> None:
        facts = self.tracker.feed(call) if self.api else []
        if self.content:
            out.append(self.ssl_content(call))
        for fact in facts:
            if fact.model_call:
                out.append(self.llm_api(fact))

    def ssl_content(self, call: SslCall) -> Event:
        h, data = call.h, call.data
        lib = self.libs[call.lib] if call.lib < len(self.libs) else f"slot {call.lib}"
        fields = {"pid": h.pid, "tid": h.tid, "is_read": call.is_read,
                  "content": text(self.scrub(data)), "len": call.total,
                  "truncated": call.truncated, "lib": lib}
        provider = provider_of(self.tracker.host_of(h.pid, call.ssl))
        return self._event("SslContent", h, h.ts, fields, provider)

    def llm_api(self, fact: ApiFact) -> Event:
        fields = {"pid": fact.h.pid, "is_request": fact.is_request, **fact.fields}
        return self._event("LlmApi", fact.h, fact.ts, fields, fact.provider)

    def _event(self, kind: str, h: Hdr, ts: int, fields: dict[str, Any],
               provider: str | None) -> Event:
        identity, process = self.ids.of(h)
        if not self.lines:
            return envelope(kind, fields, ts=self.clock.wall(ts), host=self.host,
                            identity=identity, process=process, provider=provider)
        # Identities gives a cached process the same objects every time: the same identity
        # object means the same envelope (exec changes comm, a reused pid other objects).
        key = (kind, h.pid, provider)
        hit = self._middles.get(key)
        if hit is not None and hit[0] is identity:
            middle = hit[1]
        else:
            middle = envelope_middle(kind, host=self.host, identity=identity, process=process,
                                     provider=provider)
            if len(self._middles) >= MAX_MIDDLES:
                self._middles.clear()
            self._middles[key] = (identity, middle)
        return as_line(kind, self.clock.wall(ts), middle, fields)
