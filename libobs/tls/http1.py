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
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

MAX_BODY = 8 << 20
_MAX_HEAD = 64 << 10  # no real request/response head comes near this
_MAX_LINE = 8 << 10  # chunk-size and trailer lines
_INFLATE_STEP = 256 << 10  # decompress in bounded pieces: a gzip bomb never lands in memory whole

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") +(\S+) +HTTP/1\.([0-9])[ \t]*")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] +([0-9]{3})(?:[ \t].*)?")
_METHOD_PREFIX = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}(?: |\Z)")
_HEADER_NAME = re.compile(_TOKEN)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass
class SseEvent:
    """One dispatched server-sent event. `event` is None for the default "message" type."""

    event: str | None
    data: str
    ts: int = 0


@dataclass
class HttpMessage:
    """A reassembled request or response.

    `body` is de-chunked and content-decoded (gzip/deflate); with another encoding (br, zstd)
    it stays encoded and `undecoded` is set. At most `max_body` bytes are kept: `truncated`
    says some were dropped, `body_len` counts them all. `wire_len` is the message's size on
    the socket (head + framed body). `sse` holds the events of a `text/event-stream`
    response; past the memory budget the middle ones are dropped (`sse_dropped`) and the
    first and last kept, which is where LLM APIs put model and usage. `complete` is False
    only for a message cut short by `HttpStream.close()`. Trailer fields are merged into
    `headers`.
    """

    is_request: bool
    method: str | None = None
    path: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_len: int = 0
    wire_len: int = 0
    truncated: bool = False
    undecoded: bool = False
    decode_error: bool = False
    complete: bool = True
    ts_first: int = 0
    ts_last: int = 0
    sse: list[SseEvent] = field(default_factory=list)
    sse_dropped: int = 0
    stream: int = 0  # HTTP/2 stream id (pairs a response with its request); 0 for HTTP/1.x

    @property
    def is_sse(self) -> bool:
        return self.headers.get("content-type", "").lower().startswith("text/event-stream")


# --- server-sent events (WHATWG HTML, "Interpreting an event stream") -------------------------

_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


class SseDecoder:
    """Incremental event-stream parser over bytes split anywhere (CR/LF/CRLF line ends)."""

    def __init__(self, max_event: int = MAX_BODY) -> None:
        self._max = max_event  # caps a partial line and one event's data
        self._partial = bytearray()
        self._skip_lf = False  # a chunk ended in CR: a LF opening the next one is the same break
        self._first_line = True
        self._event: str | None = None
        self._data: list[str] = []
        self._data_len = 0

    def feed(self, data: bytes, ts: int = 0) -> list[SseEvent]:
        out: list[SseEvent] = []
        if data and self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if end < 0:
            self._add_partial(data)
            return out
        block = bytes(self._partial) + data[: end + 1]
        self._partial.clear()
        self._add_partial(data[end + 1 :])
        self._skip_lf = end == len(data) - 1 and data[end] == 0x0D
        for line in block.splitlines():  # bytes.splitlines breaks on CR, LF, CRLF only
            self.line(line.decode("utf-8", "replace"), ts, out)
        return out

    def _add_partial(self, data: bytes) -> None:
        room = self._max - len(self._partial)
        if room > 0:
            self._partial += data[:room]

    def line(self, line: str, ts: int, out: list[SseEvent]) -> None:
        """Process one complete line (without its line end)."""
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch(ts, out)
        elif line[0] == ":":
            return  # comment
        else:
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._add_data(value)
            elif name == "event":
                self._event = value
            # id and retry only matter to a reconnecting client

    def _add_data(self, value: str) -> None:
        if self._data_len < self._max:
            self._data.append(value)
            self._data_len += len(value) + 1

    def _dispatch(self, ts: int, out: list[SseEvent]) -> None:
        if self._data:
            out.append(SseEvent(self._event or None, "\n".join(self._data), ts))
        self._event = None
        self._data = []
        self._data_len = 0


def parse_sse(text: str) -> list[SseEvent]:
    """All complete events of an event stream; a trailing event without blank line is dropped."""
    decoder = SseDecoder(max_event=len(text) + 1)
    out: list[SseEvent] = []
    for line in _SSE_LINE_END.split(text)[:-1]:  # the last piece has no line end yet
        decoder.line(line, 0, out)
    return out


# --- body sink: cap, content decoding, SSE ---------------------------------------------------


def _is_zlib_header(head: bytes) -> bool:
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class _Body:
    """Receives de-framed body bytes of one message; decodes, caps and splits SSE events."""

    def __init__(self, msg: HttpMessage, max_body: int) -> None:
        self.msg = msg
        self.max_body = max_body
        self.parts: list[bytes] = []
        self.kept = 0
        self.wbits = 0  # 0: not compressed (or not decodable)
        self.zd: zlib._Decompress | None = None
        self.deflate_head = b""  # "deflate" is zlib-wrapped or raw; 2 bytes tell
        self.sse = SseDecoder(max_body) if msg.is_sse else None
        self.events: list[SseEvent] = []
        self.events_size = 0
        self.tail: deque[SseEvent] = deque()
        self.tail_size = 0
        self._set_encoding(msg.headers.get("content-encoding", ""))

    def _set_encoding(self, header: str) -> None:
        coding = header.strip().lower()
        if coding in ("gzip", "x-gzip"):
            self.wbits = 47  # gzip or zlib, detected from the header
            self.zd = zlib.decompressobj(self.wbits)
        elif coding == "deflate":
            self.wbits = 15
        elif coding not in ("", "identity"):
            self.msg.undecoded = True
            self.sse = None

    def write(self, data: bytes, ts: int) -> list[SseEvent]:
        new: list[SseEvent] = []
        if self.wbits:
            self._inflate(data, ts, new)
        else:
            self._emit(data, ts, new)
        return new

    def _inflate(self, data: bytes, ts: int, new: list[SseEvent]) -> None:
        if self.zd is None:
            if self.msg.decode_error or not self._start_deflate(data):
                return
            data, self.deflate_head = self.deflate_head, b""
        try:
            while data and self.zd is not None:
                if self.zd.eof:  # concatenated gzip members
                    self.zd = zlib.decompressobj(self.wbits)
                before = len(data)
                piece = self.zd.decompress(data, _INFLATE_STEP)
                self._emit(piece, ts, new)
                data = self.zd.unused_data if self.zd.eof else self.zd.unconsumed_tail
                if not piece and len(data) >= before and not self.zd.eof:
                    break  # no progress: never spin
        except zlib.error:
            self._decode_failed()

    def _start_deflate(self, data: bytes) -> bool:
        self.deflate_head += data
        if len(self.deflate_head) < 2:
            return False
        wbits = self.wbits if _is_zlib_header(self.deflate_head) else -15
        self.zd = zlib.decompressobj(wbits)
        self.wbits = wbits
        return True

    def _decode_failed(self) -> None:
        self.msg.decode_error = True
        self.zd = None

    def _emit(self, data: bytes, ts: int, new: list[SseEvent]) -> None:
        if not data:
            return
        self.msg.body_len += len(data)
        room = self.max_body - self.kept
        if room > 0:
            piece = data if len(data) <= room else data[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        if len(data) > room:
            self.msg.truncated = True
        if self.sse is not None:
            for event in self.sse.feed(data, ts):
                self._keep_event(event)
                new.append(event)

    def _keep_event(self, event: SseEvent) -> None:
        """Keep the first events up to max_body, then a rolling tail of about max_body."""
        size = len(event.data)
        if not self.tail and self.events_size + size <= self.max_body:
            self.events.append(event)
            self.events_size += size
            return
        self.tail.append(event)
        self.tail_size += size
        while self.tail_size > self.max_body and len(self.tail) > 1:
            self.tail_size -= len(self.tail.popleft().data)
            self.msg.sse_dropped += 1
            self.msg.truncated = True

    def finish(self, ts: int) -> list[SseEvent]:
        new: list[SseEvent] = []
        if self.zd is not None and not self.zd.eof:
            try:
                self._emit(self.zd.flush(), ts, new)
            except zlib.error:
                self._decode_failed()
        self.msg.body = b"".join(self.parts)
        self.msg.sse = self.events + list(self.tail)
        return new


# --- one direction ----------------------------------------------------------------------------


class _State(Enum):
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
        self.buf = bytearray()
        self.pos = 0
        self.scan_from = 0  # where the search for the end of the head resumes
        self.state = _State.HEAD
        self.remaining = 0
        self.msg: HttpMessage | None = None
        self.body: _Body | None = None
        self.msg_ts: int | None = None
        self.ts = 0
        self.dead_reason: str | None = None
        self.upgraded = False
        self.sse_out: list[tuple[HttpMessage, SseEvent]] = []

    def feed(self, data: bytes, ts: int) -> list[HttpMessage]:
        out: list[HttpMessage] = []
        if self.state is _State.DEAD or not data:
            return out
        self.ts = ts
        self.buf += data
        try:
            while self.pos < len(self.buf) and self._step(out):
                pass
        except Exception as exc:  # a bug here must not take the tool down: kill the direction
            self.kill(f"internal error: {type(exc).__name__}: {exc}")
        del self.buf[: self.pos]
        self.scan_from = max(0, self.scan_from - self.pos)
        self.pos = 0
        return out

    def kill(self, reason: str) -> None:
        if self.state is not _State.DEAD:
            self.state = _State.DEAD
            self.dead_reason = reason
        self.buf.clear()
        self.pos = self.scan_from = 0
        self.msg = self.body = None

    def _step(self, out: list[HttpMessage]) -> bool:
        """Advance once; False when more bytes are needed."""
        state = self.state
        if state is _State.HEAD:
            return self._head(out)
        if state in (_State.LENGTH, _State.CHUNK_DATA, _State.UNTIL_CLOSE):
            return self._data(out)
        if state is _State.CHUNK_SIZE:
            return self._chunk_size(out)
        if state is _State.CHUNK_END:
            return self._chunk_end()
        if state is _State.TRAILER:
            return self._trailer(out)
        return False

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
        lines = raw.split(b"\n")
        start = lines[0].rstrip(b"\r")
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
        msg.headers = _parse_fields(lines[1:], strict=True)
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
        self.body = _Body(msg, self.max_body)
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
        avail = len(self.buf) - self.pos
        n = avail if self.state is _State.UNTIL_CLOSE else min(avail, self.remaining)
        piece = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        self.msg.wire_len += n
        self._sse(self.body.write(piece, self.ts))
        if self.state is _State.UNTIL_CLOSE:
            return True
        self.remaining -= n
        if self.remaining == 0:
            if self.state is _State.LENGTH:
                self._finish(out)
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

    def _chunk_end(self) -> bool:
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
        if events and self.msg is not None:
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


def _head_end(buf: bytearray, start: int) -> int:
    """Index just past the blank line ending a head (CRLF or bare LF lines), or -1."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


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

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        parser = self._responses if is_read else self._requests
        out = parser.feed(data, ts)
        if parser.upgraded:  # the other direction speaks the new protocol too
            self._requests.kill("protocol switched (upgrade or CONNECT tunnel)")
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
