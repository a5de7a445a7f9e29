"""Structured fuzzing of the HTTP/2 and WebSocket decoders: well-formed frames with hostile
contents (random types, flags, stream ids, HPACK blocks that grow the table, bodies claiming
gzip, deflate-compressed and fragmented messages), checked after every call for the two
promises — nothing escapes as an exception and memory per connection stays bounded."""

from __future__ import annotations

import zlib

import hpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from libobs.tls import http2, websocket
from libobs.tls.http2 import PREFACE, Http2Stream
from libobs.tls.websocket import WebSocketStream

MAX_BODY, MAX_CONN_BODY = 2000, 5000

names = st.sampled_from([":method", ":path", ":status", ":authority", "content-type",
                         "content-encoding", "x-a", "x-b"])
values = st.one_of(st.sampled_from(["POST", "/v1/messages", "200", "100", "gzip", "deflate",
                                    "text/event-stream", "application/json"]),
                   st.text(max_size=300))
header_list = st.lists(st.tuples(names, values), max_size=8)
raw_frame = st.tuples(st.sampled_from([0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 200]),
                      st.integers(0, 255), st.sampled_from([0, 1, 3, 5, 7, 2**31 - 1]),
                      st.binary(max_size=400))
h2_step = st.tuples(st.booleans(), st.one_of(
    st.tuples(st.just("raw"), raw_frame),
    st.tuples(st.just("headers"), st.tuples(st.sampled_from([1, 3, 5, 7]), st.booleans(),
                                            header_list)),
    st.tuples(st.just("table"), st.integers(0, 1 << 20)),  # SETTINGS_HEADER_TABLE_SIZE
    st.tuples(st.just("cut"), st.integers(1, 30)),         # the next frame split in two calls
))


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + \
        payload


def _check_h2(s: Http2Stream, fed: int) -> None:
    for d in s._dirs:
        assert not (d.dead or "").startswith("internal"), d.dead
        assert len(d.buf) <= 9 + http2.MAX_FRAME + fed
        assert len(d.block) <= http2.MAX_HEADER_BLOCK
        assert len(d.halves) <= http2.MAX_STREAMS
        assert d.hpack.header_table.maxsize <= http2.MAX_TABLE
        assert d.hpack.header_table._current_size <= http2.MAX_TABLE
    assert s._kept() <= MAX_CONN_BODY + MAX_BODY


@settings(max_examples=300, deadline=None)
@given(st.lists(h2_step, max_size=40))
@example([(False, ("table", 1)), (True, ("headers", (1, False, [(":status", "¹")])))])
def test_http2_hostile_frames(steps: list) -> None:
    s = Http2Stream(max_body=MAX_BODY, max_conn_body=MAX_CONN_BODY)
    s.feed(False, PREFACE, 1)
    encoders = (hpack.Encoder(), hpack.Encoder())  # one per direction, like real peers
    cut = 0
    for ts, (is_read, (kind, arg)) in enumerate(steps):
        if kind == "cut":
            cut = arg
            continue
        if kind == "raw":
            data = _frame(*arg)
        elif kind == "headers":
            sid, end, fields = arg
            block = encoders[is_read].encode(fields)
            data = _frame(1, 4 | (1 if end else 0), sid, block)
        else:  # the other side may now use a table this large
            encoders[not is_read].header_table_size = min(arg, 1 << 16)
            data = _frame(4, 0, 0, (1).to_bytes(2, "big") + arg.to_bytes(4, "big"))
        for piece in (data[:cut], data[cut:]) if cut else (data,):
            s.feed(is_read, piece, ts)
            _check_h2(s, len(piece))
        cut = 0
    s.close()


ws_frame = st.tuples(st.booleans(),                       # FIN
                     st.booleans(),                       # RSV1 (compressed)
                     st.sampled_from([0, 1, 1, 2, 8, 9, 10, 3]),
                     st.one_of(st.binary(max_size=300),
                               st.sampled_from([b'{"type": "response.create", "model": "m"}',
                                                b'{"type": "response.in_progress"}',
                                                b'{"type": "response.completed", "response": '
                                                b'{"usage": {"input_tokens": 1}}}'])),
                     st.booleans())                       # compress the payload for real


def _ws_frame(fin: bool, rsv1: bool, opcode: int, payload: bytes, deflate: bool,
              masked: bool, z: zlib._Compress) -> bytes:
    if deflate:
        payload = (z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    size = n if n < 126 else 126 if n < 65536 else 127
    head += bytes([(0x80 if masked else 0) | size])
    head += n.to_bytes(2, "big") if size == 126 else n.to_bytes(8, "big") if size == 127 else b""
    return head + (b"\0\0\0\0" + payload if masked else payload)  # zero mask: payload as is


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), ws_frame, st.integers(0, 20)), max_size=40),
       st.booleans())
def test_websocket_hostile_frames(steps: list, deflate: bool) -> None:
    s = WebSocketStream("/v1/responses", None, "permessage-deflate" if deflate else "",
                        max_message=MAX_BODY)
    zs = (zlib.compressobj(wbits=-15), zlib.compressobj(wbits=-15))
    for ts, (is_read, (fin, rsv1, opcode, payload, squeeze), cut) in enumerate(steps):
        data = _ws_frame(fin, rsv1, opcode, payload, squeeze and rsv1, not is_read, zs[is_read])
        for piece in (data[:cut], data[cut:]):
            s.feed(is_read, piece, ts)
            for d in s._dirs:
                assert not (d.dead or "").startswith("internal"), d.dead
                assert sum(len(p) for p in d.parts) <= MAX_BODY
            if s.response is not None:
                assert len(s.response.sse) <= websocket._MAX_EVENTS
                assert sum(len(e.data) for e in s.response.sse) <= 2 * MAX_BODY
    s.close()


def test_websocket_endless_progress_events_stay_bounded() -> None:
    s = WebSocketStream("/v1/responses", None, max_message=MAX_BODY)
    s.feed(False, _ws_frame(True, False, 1, b'{"type": "response.create", "model": "m"}', False,
                            True, zlib.compressobj()), 1)
    event = _ws_frame(True, False, 1, b'{"type": "response.in_progress", "pad": "' + b"x" * 900
                      + b'"}', False, False, zlib.compressobj())
    for ts in range(10_000):
        s.feed(True, event, ts)
    assert s.response is not None and len(s.response.sse) <= websocket._MAX_EVENTS
    assert s.response.sse_dropped > 9_000
