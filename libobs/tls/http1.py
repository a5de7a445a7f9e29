"""Incremental HTTP/1.1 reassembly of one TLS connection's plaintext, both directions.

obs-ssl sees the plaintext of SSL_write (client -> server, requests) and SSL_read
(server -> client, responses) as chunks cut at arbitrary byte boundaries. `HttpStream`
turns them into whole `HttpMessage`s: content-length, chunked (extensions, trailers) and
close-delimited framing, keep-alive and pipelining, HEAD/1xx/204/304 without body,
gzip/deflate decoding, and SSE events for `text/event-stream` responses.

Written by hand rather than with h11: h11 is a one-role state machine (it parses requests
*or* responses and expects to be the endpoint sending the other half), rejects pipelined
requests, and raises on the first protocol error; here we watch both halves from the side,
may start mid-connection and must degrade rather than raise. Nor on httptools (llhttp), though
it frames 2.5x faster on small calls (tests/bench/bench_http1_parsers.py): it cannot be told
that a response answers HEAD (the next response is swallowed as its body), reports no byte
offsets (no wire lengths, no resuming after a stop) and rejects bare-LF chunk-size lines.

Total by design: any bytes in, messages or nothing out. A direction that stops looking like
HTTP/1.x is marked dead (see `HttpStream.dead`) and ignored from then on. Memory per
message is bounded by `max_body` (body) plus about twice that for retained SSE events.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from enum import IntEnum, auto

from libobs.tls.message import MAX_BODY, Body, HttpMessage, SseEvent

_MAX_HEAD = 64 << 10  # no real request/response head comes near this
_MAX_LINE = 8 << 10  # chunk-size and trailer lines

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") +(\S+) +HTTP/1\.([0-9])[ \t]*")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] +([0-9]{3})(?:[ \t].*)?")
_METHOD_PREFIX = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}(?: |\Z)")
_HEADER_NAME = re.compile(_TOKEN)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")  # a chunk-size line without extensions



class _State(IntEnum):  # ints: a step is looked up per call
    HEAD = auto()
    LENGTH = auto()  # content-length body
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()  # the CRLF after chunk data
    TRAILER = auto()
    UNTIL_CLOSE = auto()
    DEAD = auto()


class _Head(Exception):
    """The message head is not HTTP/1.x."""


SseSink = Callable[[HttpMessage, SseEvent], None]


class _Parser:
    """Framing state machine for one direction of the connection."""

    def __init__(self, is_request: bool, max_body: int, methods: deque[str]) -> None:
        self.is_request = is_request
        self.max_body = max_body
        self.methods = methods  # request methods awaiting a response, oldest first
        self.buf: bytes | bytearray = b""  # bytes not yet parsed (a bytearray when kept)
        self.pos = 0
        self.scan_from = 0  # where the search for the end of the head resumes
        self.state = _State.HEAD
        self.remaining = 0
        self.msg: HttpMessage | None = None
        self.body: Body | None = None
        self.msg_ts: int | None = None
        self.ts = 0
        self.dead_reason: str | None = None
        self.upgraded = False
        self.want_sse = False  # collect SSE events in sse_out (someone takes them)
        self.sse_out: list[tuple[HttpMessage, SseEvent]] = []

    def feed(self, data: bytes, ts: int) -> list[HttpMessage]:
        out: list[HttpMessage] = []
        if self.state is _State.DEAD or not data:
            return out
        self.ts = ts
        if self.buf:
            self.buf += data  # a partial head or line waits in a bytearray
        else:
            self.buf = data  # most calls end on a boundary: parse them in place, uncopied
        steps = _STEPS
        try:
            while self.pos < len(self.buf) and steps[self.state](self, out):
                pass
        except Exception as exc:  # a bug here must not take the tool down: kill the direction
            self.kill(f"internal error: {type(exc).__name__}: {exc}")
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            self.buf = b""
        elif isinstance(buf, bytearray):
            del buf[:pos]
        else:
            self.buf = bytearray(buf[pos:])
        self.scan_from = max(0, self.scan_from - pos)
        self.pos = 0
        return out

    def kill(self, reason: str) -> None:
        if self.state is not _State.DEAD:
            self.state = _State.DEAD
            self.dead_reason = reason
        self.buf = b""
        self.pos = self.scan_from = 0
        self.msg = self.body = None

    # head

    def _head(self, out: list[HttpMessage]) -> bool:
        buf = self.buf
        while self.pos < len(buf) and buf[self.pos] in b"\r\n":  # blank lines between messages
            self.pos += 1
        if self.pos == len(buf):
            return False
        if self.msg_ts is None:
            self.msg_ts = self.ts
        start = max(self.pos, self.scan_from)
        end = _head_end(buf, start)
        if end < 0:
            self.scan_from = max(self.pos, len(buf) - 2)
            return self._check_partial_head()
        raw = bytes(buf[self.pos : end])
        self.pos = self.scan_from = end
        try:
            msg = self._parse_head(raw)
        except _Head as exc:
            self.kill(str(exc))
            return False
        msg.wire_len = len(raw)
        self._start_body(msg, out)
        return True

    def _check_partial_head(self) -> bool:
        """Give up early on bytes that cannot become an HTTP/1.x head."""
        size = len(self.buf) - self.pos
        prefix = bytes(self.buf[self.pos : self.pos + 25])  # not the whole head: called per chunk
        if size > _MAX_HEAD:
            self.kill("head too large")
        elif self.is_request and not _METHOD_PREFIX.match(prefix):
            self.kill("not an HTTP request")
        elif not self.is_request and b"HTTP/1."[: len(prefix)] != prefix[:7]:
            self.kill("not an HTTP/1.x response")
        return False

    def _parse_head(self, raw: bytes) -> HttpMessage:
        nl = raw.find(b"\n")
        start = raw[:nl].rstrip(b"\r")
        first = self.ts if self.msg_ts is None else self.msg_ts
        msg = HttpMessage(is_request=self.is_request, ts_first=first)
        if self.is_request:
            m = _REQUEST_LINE.fullmatch(start)
            if not m:
                raise _Head("not an HTTP/1.x request line")
            msg.method = m.group(1).decode("ascii")
            msg.path = m.group(2).decode("latin-1")
        else:
            m = _STATUS_LINE.fullmatch(start)
            if not m:
                raise _Head("not an HTTP/1.x status line")
            msg.status = int(m.group(1))
        msg.headers = _head_fields(raw, nl + 1)
        return msg

    # framing (RFC 9112 section 6)

    def _start_body(self, msg: HttpMessage, out: list[HttpMessage]) -> None:
        if not self.is_request and msg.status is not None and msg.status < 200 and msg.status != 101:
            self.msg_ts = None  # interim (100 Continue, 103 Early Hints): not a message
            return
        if self.is_request:
            self.methods.append(msg.method or "")
            kind = _request_framing(msg.headers)
        else:
            method = self.methods.popleft() if self.methods else "GET"
            kind = _response_framing(msg, method)
            if kind == "tunnel":
                self.upgraded = True
        self.msg = msg
        self.body = Body(msg, self.max_body)
        if kind == "chunked":
            self.state = _State.CHUNK_SIZE
        elif kind == "close":
            self.state = _State.UNTIL_CLOSE
        elif isinstance(kind, int) and kind > 0:
            self.state, self.remaining = _State.LENGTH, kind
        elif kind == "bad":
            self.kill("unusable message framing")
        else:
            self._finish(out)

    def _data(self, out: list[HttpMessage]) -> bool:
        assert self.msg is not None and self.body is not None
        buf, pos, state = self.buf, self.pos, self.state
        avail = len(buf) - pos
        n = avail if state is _State.UNTIL_CLOSE else min(avail, self.remaining)
        piece = bytes(buf[pos : pos + n])  # the whole of `buf` is the same object, no copy
        self.pos = pos + n
        self.msg.wire_len += n
        self._sse(self.body.write(piece, self.ts))
        if state is _State.UNTIL_CLOSE:
            return True
        self.remaining -= n
        if self.remaining == 0:
            if state is _State.LENGTH:
                self._finish(out)
            elif self.pos + 1 < len(buf) and buf[self.pos] == 0x0D and buf[self.pos + 1] == 0x0A:
                self.pos += 2  # the CRLF ending the chunk's data, when it is here already
                self.msg.wire_len += 2
                self.state = _State.CHUNK_SIZE
            else:
                self.state = _State.CHUNK_END
        return True

    def _line(self) -> bytes | None:
        """The next line without its line end, or None while incomplete."""
        nl = self.buf.find(b"\n", self.pos)
        if nl < 0:
            if len(self.buf) - self.pos > _MAX_LINE:
                self.kill("line too long")
            return None
        line = bytes(self.buf[self.pos : nl])
        assert self.msg is not None
        self.msg.wire_len += nl + 1 - self.pos
        self.pos = nl + 1
        return line.rstrip(b"\r")

    def _chunk_size(self, out: list[HttpMessage]) -> bool:
        m = _CHUNK_LINE.match(self.buf, self.pos)  # the usual "1a2f\r\n"
        if m is not None:
            assert self.msg is not None
            self.remaining = int(m.group(1), 16)
            self.msg.wire_len += m.end() - self.pos
            self.pos = m.end()
            self.state = _State.CHUNK_DATA if self.remaining else _State.TRAILER
            return True
        line = self._line()
        if line is None:
            return False
        size = line.split(b";", 1)[0].strip(b" \t")  # drop chunk extensions
        if not _CHUNK_SIZE.fullmatch(size):
            self.kill("bad chunk size")
            return False
        self.remaining = int(size, 16)
        self.state = _State.CHUNK_DATA if self.remaining else _State.TRAILER
        return True

    def _chunk_end(self, _out: list[HttpMessage]) -> bool:
        buf, pos = self.buf, self.pos
        if buf[pos] == 0x0A:
            self.pos += 1
        elif buf[pos] == 0x0D:
            if pos + 1 == len(buf):
                return False
            if buf[pos + 1] != 0x0A:
                self.kill("chunk data not followed by CRLF")
                return False
            self.pos += 2
        else:
            self.kill("chunk data not followed by CRLF")
            return False
        assert self.msg is not None
        self.msg.wire_len += self.pos - pos
        self.state = _State.CHUNK_SIZE
        return True

    def _trailer(self, out: list[HttpMessage]) -> bool:
        line = self._line()
        if line is None:
            return False
        assert self.msg is not None
        if line:
            self.msg.headers.update(_parse_fields([line], strict=False))
        else:
            self._finish(out)
        return True

    def _finish(self, out: list[HttpMessage], complete: bool = True) -> None:
        msg, body = self.msg, self.body
        if msg is None or body is None:
            return
        self._sse(body.finish(self.ts))
        msg.ts_last = self.ts
        msg.complete = complete
        out.append(msg)
        self.msg = self.body = None
        self.msg_ts = None
        self.state = _State.HEAD
        if self.upgraded:
            self.kill("protocol switched (upgrade or CONNECT tunnel)")

    def _sse(self, events: list[SseEvent]) -> None:
        if events and self.want_sse and self.msg is not None:
            self.sse_out.extend((self.msg, e) for e in events)

    def close(self) -> list[HttpMessage]:
        """End of connection: a close-delimited body ends here, anything else is cut short."""
        out: list[HttpMessage] = []
        if self.msg is not None and self.state is not _State.DEAD:
            try:
                self._finish(out, complete=self.state is _State.UNTIL_CLOSE)
            except Exception as exc:
                self.kill(f"internal error: {type(exc).__name__}: {exc}")
        self.kill("closed")
        return out


def _needs_bytes(_parser: _Parser, _out: list[HttpMessage]) -> bool:
    return False


# Each state's step (indexed by the state): advance once, False when more bytes are needed.
_STEP_OF: dict[_State, Callable[[_Parser, list[HttpMessage]], bool]] = {
    _State.HEAD: _Parser._head, _State.LENGTH: _Parser._data,
    _State.CHUNK_DATA: _Parser._data, _State.UNTIL_CLOSE: _Parser._data,
    _State.CHUNK_SIZE: _Parser._chunk_size, _State.CHUNK_END: _Parser._chunk_end,
    _State.TRAILER: _Parser._trailer, _State.DEAD: _needs_bytes}
_STEPS = tuple(_STEP_OF.get(_State(i), _needs_bytes) if i else _needs_bytes
               for i in range(max(_State) + 1))  # _State counts from 1


def _head_end(buf: bytes | bytearray, start: int) -> int:
    """Index just past the blank line ending a head (CRLF or bare LF lines), or -1."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


# A field line as most are written: no folding, no CR inside, nothing odd. A head whose every
# field line is one of these is read line by line through a cache (a client repeats its
# lines: Host, Authorization, Content-Type...); any other head goes through _parse_fields.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb")[ \t]*:[ \t]*"
                         rb"((?:[^\r\n \t](?:[^\r\n]*[^\r\n \t])?)?)[ \t]*\r?")
_FIELD_CACHE: dict[bytes, tuple[str, str]] = {}  # plain line -> (lowercased name, value)
_FIELD_CACHE_MAX = 4096
# Lines kept: short ones (the cache stays under ~1 MiB), and no credentials (they are not
# kept in the tool's memory longer than the message that carried them).
_FIELD_CACHE_LINE = 256
_SECRET_FIELDS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key",
                            "x-goog-api-key", "cookie", "set-cookie"})


def _head_fields(raw: bytes, start: int) -> dict[str, str]:
    """The fields of a head from raw[start:], which runs to its blank line: one line each."""
    lines = raw[start:].split(b"\n")  # the last two: the blank line and what follows it
    fields: dict[str, str] = {}
    cache = _FIELD_CACHE
    for line in lines[:-2]:
        field = cache.get(line)
        if field is None:
            m = _FIELD_LINE.fullmatch(line)
            if m is None:
                return _parse_fields(lines, strict=True)
            field = (m.group(1).lower().decode("ascii"), m.group(2).decode("latin-1"))
            if len(line) <= _FIELD_CACHE_LINE and field[0] not in _SECRET_FIELDS:
                if len(cache) >= _FIELD_CACHE_MAX:
                    cache.clear()
                cache[line] = field
        fields[field[0]] = field[1]
    return fields


def _parse_fields(lines: list[bytes], strict: bool) -> dict[str, str]:
    """Header or trailer lines to {lowercased name: value}; the last of repeated names wins."""
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in lines:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:  # obsolete line folding
            fields[last] += " " + line.strip(b" \t").decode("latin-1")
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # "Name : value" is invalid but harmless
        if not colon or not _HEADER_NAME.fullmatch(name):
            if strict:
                raise _Head("malformed header line")
            continue
        last = name.decode("ascii").lower()
        fields[last] = value.strip(b" \t").decode("latin-1")
    return fields


Framing = int | str  # a content length, or "chunked" / "close" / "tunnel" / "bad"


def _content_length(headers: dict[str, str]) -> int | None | str:
    value = headers.get("content-length")
    if value is None:
        return None
    if value.isdigit() and value.isascii() and len(value) <= 18:  # the usual one number
        return int(value)
    values = {v.strip() for v in value.split(",")}  # "42, 42" from joined duplicates is fine
    if len(values) != 1:
        return "bad"
    only = values.pop()
    ok = only.isascii() and only.isdigit() and len(only) <= 18
    return int(only) if ok else "bad"


def _is_chunked(headers: dict[str, str]) -> bool | None:
    """True if chunked is the final transfer coding, False for another one, None if absent."""
    te = headers.get("transfer-encoding")
    if te is None:
        return None
    return te.rsplit(",", 1)[-1].strip().lower() == "chunked"


def _request_framing(headers: dict[str, str]) -> Framing:
    chunked = _is_chunked(headers)
    if chunked is not None:
        return "chunked" if chunked else "bad"
    length = _content_length(headers)
    return 0 if length is None else length


def _response_framing(msg: HttpMessage, method: str) -> Framing:
    status = msg.status or 0
    if status == 101 or (method == "CONNECT" and 200 <= status < 300):
        return "tunnel"
    if method == "HEAD" or status in (204, 304):
        return 0
    chunked = _is_chunked(msg.headers)
    if chunked is not None:
        return "chunked" if chunked else "close"
    length = _content_length(msg.headers)
    return "close" if length is None else length


# --- the connection ---------------------------------------------------------------------------


class HttpStream:
    """HTTP/1.1 reassembly of one TLS connection (one pid and SSL* pointer).

    `feed(is_read, data, ts)` takes each plaintext chunk in order and returns the messages
    it completed: writes are requests, reads responses. SSE events come two ways: on the
    finished response (`HttpMessage.sse`) and, as soon as each event is complete, through
    the optional `on_sse(message_in_progress, event)` callback, which runs after parsing so
    an exception it raises is the caller's own. `close()` flushes at connection end.
    """

    def __init__(self, max_body: int = MAX_BODY, on_sse: SseSink | None = None) -> None:
        methods: deque[str] = deque()
        self._requests = _Parser(True, max_body, methods)
        self._responses = _Parser(False, max_body, methods)
        self._on_sse = on_sse
        self._requests.want_sse = self._responses.want_sse = on_sse is not None

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        parser = self._responses if is_read else self._requests
        out = parser.feed(data, ts)
        if parser.upgraded:  # the other direction speaks the new protocol too
            self._requests.kill("protocol switched (upgrade or CONNECT tunnel)")
        if parser.sse_out:
            self._deliver_sse(parser)
        return out

    def close(self) -> list[HttpMessage]:
        out = self._requests.close() + self._responses.close()
        self._deliver_sse(self._responses)
        return out

    def dead(self, is_read: bool) -> str | None:
        """Why a direction stopped being parsed, or None while it is alive."""
        return (self._responses if is_read else self._requests).dead_reason

    def _deliver_sse(self, parser: _Parser) -> None:
        events, parser.sse_out = parser.sse_out, []
        if self._on_sse is not None:
            for msg, event in events:
                self._on_sse(msg, event)
