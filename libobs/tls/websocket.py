"""WebSocket frames of one upgraded TLS connection, both directions, turned into HttpMessages
for the OpenAI Responses API over WebSocket (`wss://…/v1/responses`).

The client sends `{"type": "response.create", "model": …}` (one call each) and the server
answers with `response.*` events, ending in `response.completed` (its `response` carries model
and usage), `response.failed`, `response.incomplete` or `error`. Each `response.create` becomes
a request message (method POST, the upgrade request's path, a JSON body with the model) and
each answered one a response message whose `sse` holds the lifecycle events — the shapes
libobs.tls.llmapi already reads for Responses over SSE. Responses arrive in the order of
their requests, as on an HTTP/1.1 keep-alive connection.

Frames are parsed by wsproto's `FrameDecoder` (masked client frames, unmasked server ones, one
decoder per direction); permessage-deflate is a wsproto extension of ours that inflates in
bounded steps (`MAX_MESSAGE` kept per message, the rest inflated only to keep the shared
window) because wsproto's own inflates a frame whole. Total: any bytes in, messages out; a
direction whose framing breaks is dead.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, Opcode, ParseFailed, RsvBits

from libobs.tls.message import HttpMessage, SseEvent

MAX_MESSAGE = 4 << 20
_INFLATE_STEP = 256 << 10
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: stripped from each compressed message
_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([^"\\]{1,64})"')  # as the first key
_KEEP = {"response.created", "response.in_progress", "response.completed", "response.failed",
         "response.incomplete", "error"}  # the events with model or usage; deltas are skipped
_MAX_EVENTS = 8  # kept per response
_TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


class _Deflate(Extension):
    """permessage-deflate for a bystander: inflate one direction, keep at most `cap` bytes
    per message, count (never raise on) what is beyond it."""

    name = "permessage-deflate"

    def __init__(self, no_context_takeover: bool, cap: int) -> None:
        self.reset = no_context_takeover
        self.cap = cap
        self.zd = zlib.decompressobj(-zlib.MAX_WBITS)
        self.message: bool | None = None  # compressed? (None between messages)
        self.frame = False                # the current frame's payload is to be inflated
        self.kept = 0
        self.dropped = 0

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return self.name

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            self.frame = False
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        if opcode is not Opcode.CONTINUATION:
            self.message, self.kept = rsv.rsv1, 0
        elif rsv.rsv1:
            return CloseReason.PROTOCOL_ERROR
        self.frame = bool(self.message)
        return RsvBits(self.frame, False, False)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        return self._inflate(data) if self.frame else data

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if not (self.frame and fin):
            return None
        out = self._inflate(_TAIL)
        self.message = None
        if self.reset:
            self.zd = zlib.decompressobj(-zlib.MAX_WBITS)
        return out

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        out: list[bytes] = []
        try:
            while data:
                piece = self.zd.decompress(data, _INFLATE_STEP)
                data = self.zd.unconsumed_tail
                room = self.cap - self.kept
                if room > 0:
                    out.append(piece[:room])
                    self.kept += min(room, len(piece))
                self.dropped += max(0, len(piece) - max(room, 0))
                if not piece and data:
                    break  # no progress: never spin
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return b"".join(out)


def parse_extensions(header: str) -> tuple[bool, bool, bool]:
    """(deflate, client_no_context_takeover, server_no_context_takeover) from the 101's
    Sec-WebSocket-Extensions."""
    for offer in header.split(","):
        params = [p.strip().lower() for p in offer.split(";")]
        if params[0] == "permessage-deflate":
            return True, "client_no_context_takeover" in params, \
                "server_no_context_takeover" in params
    return False, False, False


@dataclass
class _Direction:
    frames: FrameDecoder
    deflate: _Deflate | None
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    wire: int = 0
    truncated: bool = False
    ts_first: int = 0
    dead: str | None = None


class WebSocketStream:
    """An upgraded connection: `feed(is_read, data, ts)` → HttpMessages, `close()`,
    `dead(is_read)`, `bridge()` (lost bytes: the framing is gone, always None).
    `path` and `host` are those of the upgrade request; `extensions` the 101's header."""

    def __init__(self, path: str, host: str | None, extensions: str = "",
                 max_message: int = MAX_MESSAGE) -> None:
        self.path, self.host, self.max_message = path, host, max_message
        deflate, client_nct, server_nct = parse_extensions(extensions)
        self._dirs = tuple(self._direction(is_read, deflate, server_nct if is_read else client_nct)
                           for is_read in (False, True))
        self.pending = 0  # response.create frames not yet answered
        self.response: HttpMessage | None = None
        self.errors = 0
        self.dropped = 0  # message bytes beyond max_message

    def _direction(self, is_read: bool, deflate: bool, reset: bool) -> _Direction:
        ext = _Deflate(reset, self.max_message) if deflate else None
        # client=True decodes what a client receives: unmasked server frames
        return _Direction(FrameDecoder(client=is_read, extensions=[ext] if ext else []), ext)

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        d = self._dirs[is_read]
        out: list[HttpMessage] = []
        if d.dead or not data:
            return out
        try:
            d.frames.receive_bytes(data)
            while (frame := d.frames.process_buffer()) is not None:
                self._frame(d, is_read, frame, ts, out)
        except ParseFailed as exc:
            self._kill(d, f"websocket: {exc}")
        except Exception as exc:  # a bug here must not take the tool down
            self._kill(d, f"internal error: {type(exc).__name__}: {exc}")
        d.wire += len(data)
        return out

    def bridge(self, is_read: bool, n: int, ts: int) -> list[HttpMessage] | None:
        self._kill(self._dirs[is_read], "lost bytes inside a WebSocket stream")
        return None

    def close(self) -> list[HttpMessage]:
        out = []
        if self.response is not None:
            self.response.complete = False
            out.append(self.response)
            self.response = None
        for d in self._dirs:
            self._kill(d, "closed")
        return out

    def dead(self, is_read: bool) -> str | None:
        return self._dirs[is_read].dead

    def _kill(self, d: _Direction, reason: str) -> None:
        if d.dead is None:
            d.dead = reason
            self.errors += reason != "closed"
        d.parts.clear()

    def _frame(self, d: _Direction, is_read: bool, frame: Any, ts: int,
               out: list[HttpMessage]) -> None:
        if frame.opcode.iscontrol():
            if frame.opcode is Opcode.CLOSE:
                d.dead = "closed by peer"  # nothing follows a close frame
            return
        if not d.parts and not d.size:
            d.ts_first = ts
        payload = frame.payload
        room = self.max_message - d.size
        if room > 0:
            d.parts.append(payload[:room])
        if len(payload) > room or (d.deflate and d.deflate.dropped):
            d.truncated = True
        d.size += len(payload)
        if not (frame.frame_finished and frame.message_finished):  # wsproto sets the latter
            return                                                  # from FIN on every piece
        text, truncated = b"".join(d.parts), d.truncated
        if d.deflate:
            self.dropped += d.deflate.dropped
            d.deflate.dropped = 0
        self.dropped += max(0, d.size - self.max_message)
        d.parts, d.size, d.truncated = [], 0, False
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONTINUATION:
            (self._server if is_read else self._client)(text, truncated, d.ts_first, ts, out)

    def _client(self, text: bytes, truncated: bool, first: int, ts: int,
                out: list[HttpMessage]) -> None:
        kind = _event_type(text)
        if kind != "response.create":
            return
        obj = _json(text)
        inner = obj.get("response")
        model = obj.get("model", inner.get("model") if isinstance(inner, dict) else None)
        if not isinstance(model, str) and truncated:
            m = re.search(rb'"model"\s*:\s*"([^"\\]{1,256})"', text[:65536])
            model = m.group(1).decode("utf-8", "replace") if m else None
        body = orjson.dumps({"model": model if isinstance(model, str) else None, "stream": True})
        headers = {"content-type": "application/json"} | ({"host": self.host} if self.host else {})
        self.pending += 1
        out.append(HttpMessage(is_request=True, method="POST", path=self.path, headers=headers,
                               body=body, body_len=len(text), wire_len=len(text),
                               truncated=truncated, ts_first=first, ts_last=ts))

    def _server(self, text: bytes, truncated: bool, first: int, ts: int,
                out: list[HttpMessage]) -> None:
        if not self.pending:
            return  # not an answer to a response.create we saw
        kind = _event_type(text)
        if self.response is None:
            self.response = HttpMessage(is_request=False, status=200, ts_first=first,
                                        headers={"content-type": "text/event-stream"})
        msg = self.response
        msg.wire_len += len(text)
        msg.body_len += len(text)
        msg.truncated |= truncated
        msg.ts_last = ts
        if kind in _KEEP:
            msg.sse.append(SseEvent(kind, text.decode("utf-8", "replace"), ts))
            self._bound(msg)
        if kind in _TERMINAL:
            out.append(msg)
            self.response = None
            self.pending -= 1


    def _bound(self, msg: HttpMessage) -> None:
        """Keep the first event and the latest ones within max_message: a server repeating
        response.in_progress must not grow the list (llmapi reads the last values anyway)."""
        size = sum(len(e.data) for e in msg.sse)
        while len(msg.sse) > 2 and (len(msg.sse) > _MAX_EVENTS or size > self.max_message):
            size -= len(msg.sse.pop(1).data)
            msg.sse_dropped += 1


def _event_type(text: bytes) -> str | None:
    """The event's "type" — usually its first key, so found without parsing the rest."""
    m = _TYPE.match(text)
    if m:
        return m.group(1).decode("ascii", "replace")
    kind = _json(text).get("type")
    return kind if isinstance(kind, str) else None


def _json(text: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
