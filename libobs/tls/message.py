"""HTTP messages as every reassembler here yields them (HTTP/1.1, HTTP/2 streams, WebSocket
responses), their bodies decoded in bounded pieces, and SSE events.

A `Body` decodes content-encoding (gzip, zlib or raw deflate, detected from the first bytes)
in pieces of at most 256 KiB, so a decompression bomb never lands in memory whole, caps what it
keeps at `max_body`, and splits `text/event-stream` bodies into SSE events as they arrive.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from dataclasses import dataclass, field

MAX_BODY = 8 << 20
_INFLATE_STEP = 256 << 10  # decompress in bounded pieces: a gzip bomb never lands in memory whole


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
        if self._partial:
            block = bytes(self._partial) + data[: end + 1]
            self._partial.clear()
        else:
            block = data[: end + 1]  # all of data (no copy) when it ends with a line end
        if end + 1 < len(data):
            self._add_partial(data[end + 1 :])
        self._skip_lf = end == len(data) - 1 and data[end] == 0x0D
        # Decoded at once: a line end is ASCII, so no bad sequence spans one, and decoding the
        # lines one by one would give the same text.
        text = block.decode("utf-8", "replace")
        lines = _SSE_LINE_END.split(text) if "\r" in text else text.split("\n")
        lines.pop()  # what follows the last line end: nothing
        self._lines(lines, ts, out)
        return out

    def _add_partial(self, data: bytes) -> None:
        room = self._max - len(self._partial)
        if room > 0:
            self._partial += data[:room]

    def line(self, line: str, ts: int, out: list[SseEvent]) -> None:
        """Process one complete line (without its line end)."""
        self._lines([line], ts, out)

    def _lines(self, lines: list[str], ts: int, out: list[SseEvent]) -> None:
        """Process complete lines (without their line ends); one call for all of a chunk's."""
        if self._first_line and lines:
            self._first_line = False
            lines[0] = lines[0].removeprefix("\ufeff")
        for line in lines:
            if not line:
                self._dispatch(ts, out)
            elif line[0] == ":":
                continue  # comment
            else:
                name, colon, value = line.partition(":")
                if colon and value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    if self._data_len < self._max:
                        self._data.append(value)
                        self._data_len += len(value) + 1
                elif name == "event":
                    self._event = value
                # id and retry only matter to a reconnecting client

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
    decoder._lines(_SSE_LINE_END.split(text)[:-1], 0, out)  # the last piece has no line end yet
    return out


# --- body sink: cap, content decoding, SSE ---------------------------------------------------


def _is_zlib_header(head: bytes) -> bool:
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class Body:
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
