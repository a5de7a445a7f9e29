"""HTTP/2 reassembly of one TLS connection's plaintext, both directions, into HttpMessages.

obs-ssl sees what the client writes (its preface, SETTINGS, HEADERS and DATA of requests) and
what it reads (the server's frames), cut at arbitrary byte boundaries. `Http2Stream` turns them
into one `HttpMessage` per request and per response, each tagged with its stream id, so
libobs.tls.llmapi reads them exactly as it reads HTTP/1.1 ones.

Built on the h2 project's own layers rather than on `h2.connection`: h2 is the state machine of
one endpoint (it validates flow control, stream states and settings acknowledgements and
raises on the first surprise), while a bystander watching both halves needs only the framing
(`hyperframe`) and one HPACK decoder per direction (`hpack`), each direction's dynamic table
sized by the SETTINGS_HEADER_TABLE_SIZE the *other* side announced.

Total and bounded: any bytes in, messages out, never an exception. A direction whose framing
or HPACK state breaks is dead (`dead()`), because every later header block depends on the
dynamic table. Memory per connection is capped: a buffered non-DATA frame (`MAX_FRAME`), one
header block (`MAX_HEADER_BLOCK`), the HPACK table (`MAX_TABLE`), open streams per direction
(`MAX_STREAMS`, oldest dropped and counted) and kept body bytes (`max_body` per message and
`max_conn_body` across the connection's open streams); DATA is never buffered whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpack import Decoder
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from libobs.tls.message import MAX_BODY, HttpMessage
from libobs.tls.message import Body as BodySink  # the HTTP/1.1 path's decoder, cap and SSE

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 1 << 20          # non-DATA frames are buffered whole; real ones are ≤ 16 KiB
MAX_HEADER_BLOCK = 256 << 10  # HEADERS + CONTINUATION fragments of one block
MAX_TABLE = 64 << 10          # HPACK dynamic table, whatever a peer announces
MAX_HEADER_LIST = 256 << 10   # decoded size of one header list
MAX_STREAMS = 128             # open streams tracked per direction
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PUSH, _PING, _GOAWAY, _WINDOW, _CONT = range(10)
_END_STREAM, _PADDED = 0x01, 0x08


class _Broken(Exception):
    """This direction can no longer be decoded."""


@dataclass
class _Half:
    """A request or response in progress on one stream."""

    msg: HttpMessage
    sink: BodySink | None = None  # set once the (final) header block arrived


@dataclass
class _Direction:
    """Frame reader of one direction: bytes in, calls back into Http2Stream."""

    is_read: bool
    buf: bytearray = field(default_factory=bytearray)
    buf_ts: int = 0             # when the first buffered byte arrived
    preface: bool = False       # client direction: the 24-byte preface still expected
    hpack: Decoder = field(default_factory=lambda: Decoder(MAX_HEADER_LIST))
    block: bytearray = field(default_factory=bytearray)  # header block awaiting CONTINUATION
    block_frame: Frame | None = None
    block_ts: int = 0
    data_sid: int = 0           # DATA frame in progress: its stream, payload and padding left
    data_left: int = 0
    pad_left: int = 0
    data_flags: int = 0
    pad_pending: bool = False   # PADDED DATA whose pad-length byte has not arrived
    halves: dict[int, _Half] = field(default_factory=dict)
    dead: str | None = None


class Http2Stream:
    """HTTP/2 reassembly of one connection. Same interface as parse.http.HttpStream —
    `feed(is_read, data, ts)`, `close()`, `dead(is_read)` — plus `bridge(is_read, n)` for
    bytes the capture lost. Writes are the client's (they open with PREFACE)."""

    def __init__(self, max_body: int = MAX_BODY, max_conn_body: int | None = None) -> None:
        self.max_body = max_body
        self.max_conn_body = 4 * max_body if max_conn_body is None else max_conn_body
        self._dirs = (_Direction(False, preface=True), _Direction(True))
        self.streams_dropped = 0  # halves forgotten to keep MAX_STREAMS
        self.errors = 0           # directions killed by bad framing or HPACK
        self.bad_frames = 0       # malformed frames skipped (framing and HPACK intact)
        self._out: list[HttpMessage] = []

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        d = self._dirs[is_read]
        if d.dead or not data:
            return []
        if not d.buf:
            d.buf_ts = ts
        d.buf += data
        try:
            self._run(d, ts, len(data))
        except _Broken as exc:
            self._kill(d, str(exc))
        except Exception as exc:  # a bug here must not take the tool down
            self._kill(d, f"internal error: {type(exc).__name__}: {exc}")
        out, self._out = self._out, []
        return out

    def bridge(self, is_read: bool, n: int, ts: int) -> list[HttpMessage] | None:
        """Account for n bytes the capture lost. Inside a DATA payload the stream's body is
        filled with spaces and marked truncated; anywhere else the framing (and HPACK) is lost
        and None is returned."""
        d = self._dirs[is_read]
        if d.dead or d.buf or n <= 0 or n > d.data_left + d.pad_left or d.pad_pending:
            self._kill(d, "lost bytes outside a DATA payload")
            return None
        half = d.halves.get(d.data_sid)
        if half is not None:
            half.msg.truncated = True
        try:
            self._run(d, ts, 0, filler=n)
        except Exception as exc:
            self._kill(d, f"internal error: {type(exc).__name__}: {exc}")
        out, self._out = self._out, []
        return out

    def close(self) -> list[HttpMessage]:
        """End of connection: streams still open are flushed, marked incomplete."""
        for d in self._dirs:
            for sid in list(d.halves):
                self._end(d, sid, d.buf_ts, complete=False)
            self._kill(d, "closed")
        out, self._out = self._out, []
        return out

    def dead(self, is_read: bool) -> str | None:
        return self._dirs[is_read].dead

    def _kill(self, d: _Direction, reason: str) -> None:
        if d.dead is None:
            d.dead = reason
            if reason != "closed":
                self.errors += 1
        d.buf.clear()
        d.block.clear()
        d.halves.clear()

    # framing

    def _run(self, d: _Direction, ts: int, fresh: int, filler: int = 0) -> None:
        if filler:
            self._data_bytes(d, None, filler, ts)
            return
        buf = d.buf
        if d.preface:
            if bytes(buf[: len(PREFACE)]) != PREFACE[: len(buf)]:
                raise _Broken("no HTTP/2 client preface")
            if len(buf) < len(PREFACE):
                return
            del buf[: len(PREFACE)]
            d.preface = False
        old = len(buf) - fresh  # bytes buffered before this feed: their first came at buf_ts
        pos = 0
        while True:
            fts = d.buf_ts if pos < old else ts  # when the frame's first byte arrived
            if d.data_left or d.pad_left or d.pad_pending:
                pos = self._data_payload(d, pos, ts)
                if d.data_left or d.pad_left or d.pad_pending:
                    break
                continue
            if len(buf) - pos < 9:
                break
            length = int.from_bytes(buf[pos : pos + 3], "big")
            ftype = buf[pos + 3]
            if ftype == _DATA:
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                self._data_start(d, sid, buf[pos + 4], length, ts)
                pos += 9
                continue
            if length > MAX_FRAME:
                raise _Broken(f"frame of {length} bytes")
            if len(buf) - pos < 9 + length:
                break
            # copies, never views: a live view of buf would forbid resizing it
            raw = bytes(buf[pos : pos + 9 + length])
            pos += 9 + length
            try:
                frame, _ = Frame.parse_frame_header(memoryview(raw[:9]))
                frame.parse_body(memoryview(raw[9:]))
            except HyperframeError as exc:
                if ftype in (_HEADERS, _PUSH, _CONT):  # its header block is lost: so is HPACK
                    raise _Broken(f"frame: {type(exc).__name__}: {exc}") from None
                self.bad_frames += 1  # its length was fine: skip it, the framing holds
                continue
            self._frame(d, frame, length, fts, ts)
        del buf[:pos]
        if buf and pos >= old:
            d.buf_ts = ts  # what is left arrived with this feed

    def _data_start(self, d: _Direction, sid: int, flags: int, length: int, ts: int) -> None:
        d.data_sid, d.data_flags = sid, flags
        d.data_left, d.pad_left = length, 0
        d.pad_pending = bool(flags & _PADDED) and length > 0
        half = d.halves.get(sid)
        if half is not None:
            half.msg.wire_len += 9 + length
        if not length and flags & _END_STREAM:
            self._end(d, sid, ts)

    def _data_payload(self, d: _Direction, pos: int, ts: int) -> int:
        buf = d.buf
        if d.pad_pending:
            if pos >= len(buf):
                return pos
            pad = buf[pos]
            pos += 1
            d.data_left -= 1
            if pad > d.data_left:  # malformed, but its length holds: skip it whole
                self.bad_frames += 1
                pad = d.data_left
            d.data_left, d.pad_left, d.pad_pending = d.data_left - pad, pad, False
        n = min(d.data_left, len(buf) - pos)
        if n:
            self._data_bytes(d, bytes(buf[pos : pos + n]), n, ts)
            pos += n
        if not d.data_left:
            skip = min(d.pad_left, len(buf) - pos)
            d.pad_left -= skip
            pos += skip
            if not d.pad_left and d.data_flags & _END_STREAM:
                d.data_flags = 0
                self._end(d, d.data_sid, ts)
        return pos

    def _data_bytes(self, d: _Direction, data: bytes | None, n: int, ts: int) -> None:
        """n payload bytes of the DATA frame in progress (None: lost, filled with spaces)."""
        half = d.halves.get(d.data_sid)
        take = min(n, d.data_left)
        d.data_left -= take
        if half is not None and half.sink is not None:
            sink = half.sink
            if self._kept() >= self.max_conn_body:
                sink.max_body = min(sink.max_body, sink.kept)  # count from here on, keep nothing
            sink.write(data if data is not None else b" " * take, ts)
            half.msg.ts_last = ts
        if data is None:  # bridged: the rest of the gap is padding
            d.pad_left -= n - take
            if not d.data_left and not d.pad_left and d.data_flags & _END_STREAM:
                d.data_flags = 0
                self._end(d, d.data_sid, ts)

    def _kept(self) -> int:
        return sum(h.sink.kept for d in self._dirs for h in d.halves.values() if h.sink)

    def _frame(self, d: _Direction, frame: Frame, length: int, fts: int, ts: int) -> None:
        if d.block_frame is not None and not isinstance(frame, ContinuationFrame):
            raise _Broken("header block interrupted")
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            d.block_frame, d.block_ts = frame, fts
            d.block[:] = frame.data
            self._block_end(d, frame, length)
        elif isinstance(frame, ContinuationFrame):
            if d.block_frame is None or frame.stream_id != d.block_frame.stream_id:
                raise _Broken("CONTINUATION without HEADERS")
            d.block += frame.data
            self._block_end(d, frame, length)
        elif isinstance(frame, RstStreamFrame):
            for side in self._dirs:  # both halves of the stream end here
                if frame.stream_id in side.halves:
                    self._end(side, frame.stream_id, ts, complete=False)
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if size is not None:  # the size the *other* side's encoder may use
                self._dirs[not d.is_read].hpack.max_allowed_table_size = min(size, MAX_TABLE)

    def _block_end(self, d: _Direction, frame: Frame, length: int) -> None:
        if len(d.block) > MAX_HEADER_BLOCK:
            raise _Broken("header block too large")
        if "END_HEADERS" not in frame.flags:
            return
        first = d.block_frame
        assert first is not None
        d.block_frame = None
        try:  # every block is decoded, wanted or not: each one updates the dynamic table
            fields = list(d.hpack.decode(bytes(d.block), raw=True))
        except Exception as exc:  # hpack raises HPACKError, and ValueError/IndexError on junk
            raise _Broken(f"HPACK: {type(exc).__name__}") from None
        finally:
            d.block.clear()
        if isinstance(first, HeadersFrame):
            end = "END_STREAM" in first.flags
            self._headers(d, first.stream_id, fields, end, d.block_ts, length)
        # PUSH_PROMISE: decoded for the table's sake only; pushed responses are not calls

    # messages

    def _headers(self, d: _Direction, sid: int, fields: list[Any], end: bool,
                 ts: int, length: int) -> None:
        pseudo: dict[str, str] = {}
        headers: dict[str, str] = {}
        for name, value in fields:
            key = name.decode("latin-1").lower()
            text = value.decode("utf-8", "replace")
            if key.startswith(":"):
                pseudo[key] = text
            else:
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        half = d.halves.get(sid)
        if half is not None and half.sink is not None:  # trailers
            half.msg.headers.update(headers)
            half.msg.wire_len += 9 + length
            if end:
                self._end(d, sid, ts)
            return
        status = pseudo.get(":status", "")
        numeric = status.isascii() and status.isdigit()  # "¹".isdigit(), but int() refuses it
        if d.is_read and numeric and len(status) == 3 and int(status) < 200:
            return  # 100 Continue, 103 Early Hints: not the response
        if half is None:
            msg = HttpMessage(is_request=not d.is_read, ts_first=ts, ts_last=ts, stream=sid)
            half = self._open(d, sid, msg)
        msg = half.msg
        msg.wire_len += 9 + length
        if msg.is_request:
            msg.method, msg.path = pseudo.get(":method"), pseudo.get(":path")
            if ":authority" in pseudo:
                headers.setdefault("host", pseudo[":authority"])
        elif numeric:
            msg.status = int(status)
        msg.headers = headers
        half.sink = BodySink(msg, self.max_body)
        if end:
            self._end(d, sid, ts)

    def _open(self, d: _Direction, sid: int, msg: HttpMessage) -> _Half:
        while len(d.halves) >= MAX_STREAMS:
            del d.halves[next(iter(d.halves))]  # the oldest: a stream table never grows
            self.streams_dropped += 1
        half = d.halves[sid] = _Half(msg)
        return half

    def _end(self, d: _Direction, sid: int, ts: int, complete: bool = True) -> None:
        half = d.halves.pop(sid, None)
        if half is None:
            return
        msg = half.msg
        if half.sink is None:  # ended before its header block: nothing to report
            return
        half.sink.finish(ts)
        msg.ts_last = max(msg.ts_last, ts) if complete else msg.ts_last
        msg.complete = complete
        self._out.append(msg)
