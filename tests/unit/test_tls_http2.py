"""HTTP/2 reassembly (libobs.tls.http2) on wire bytes made by the h2 library's own endpoints:
streams, HPACK, DATA, trailers, timing, lost bytes, caps, and any bytes never raising."""

from __future__ import annotations

import gzip
import json
import zlib

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import DataFrame, HeadersFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls import http2
from libobs.tls.http2 import PREFACE, Http2Stream
from libobs.tls.llmapi import request_facts, response_facts

AUTH = "api.openai.com"


class Wire:
    """A real client and server connection; `writes`/`reads` collect what each one sent, in
    the order the client saw it."""

    def __init__(self, table: int | None = None) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, validate_inbound_headers=False))
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.chunks: list[tuple[bool, bytes]] = []
        if table is not None:  # the server's encoder may then grow its table to this size
            self.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table})
        self.pump()
        self.pump()

    def pump(self) -> None:
        for is_read, src, dst in ((False, self.client, self.server),
                                  (True, self.server, self.client)):
            data = src.data_to_send()
            if data:
                self.chunks.append((is_read, data))
                dst.receive_data(data)

    def request(self, sid: int, body: bytes, path: str = "/v1/chat/completions",
                extra: list[tuple[str, str]] | None = None) -> None:
        self.client.send_headers(sid, [(":method", "POST"), (":path", path),
                                       (":authority", AUTH), (":scheme", "https"),
                                       ("content-type", "application/json"), *(extra or [])])
        self.client.send_data(sid, body, end_stream=True)
        self.pump()

    def respond(self, sid: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                trailers: list[tuple[str, str]] | None = None, pieces: int = 1) -> None:
        self.server.send_headers(sid, [(":status", "200"), *(headers or [])])
        step = max(1, -(-len(body) // pieces))
        for i in range(0, len(body), step):
            last = i + step >= len(body) and not trailers
            self.server.send_data(sid, body[i:i + step], end_stream=last)
            self.pump()
        if trailers:
            self.server.send_headers(sid, trailers, end_stream=True)
        self.pump()

    def feed(self, stream: Http2Stream | None = None, ts: int = 5) -> list:
        stream = stream or Http2Stream()
        return [m for is_read, data in self.chunks for m in stream.feed(is_read, data, ts)]


def chat(model: str) -> bytes:
    return json.dumps({"model": model, "stream": True, "messages": []}).encode()


def sse(model: str, prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return (b'data: {"model": "%s", "choices": []}\n\n' % model.encode()
            + b"data: " + json.dumps({"model": model, "usage": usage}).encode() + b"\n\n"
            + b"data: [DONE]\n\n")


SSE_HEADERS = [("content-type", "text/event-stream")]


def test_concurrent_streams_answered_out_of_order() -> None:
    w = Wire()
    w.request(1, chat("gpt-4o"))
    w.request(3, chat("gpt-4o-mini"))
    w.respond(3, sse("mini-served", 30, 3), SSE_HEADERS)
    w.respond(1, gzip.compress(sse("4o-served", 10, 1)), SSE_HEADERS + [("content-encoding", "gzip")])
    msgs = w.feed()
    assert [(m.stream, m.is_request) for m in msgs] == [(1, True), (3, True), (3, False),
                                                      (1, False)]
    req1, req3, resp3, resp1 = msgs
    assert (req1.method, req1.path, req1.headers["host"]) == ("POST", "/v1/chat/completions", AUTH)
    assert request_facts(req3) == {"model": "gpt-4o-mini", "stream": True,
                                   "path": "/v1/chat/completions"}
    facts = response_facts(resp1, request_facts(req1))
    assert facts is not None
    assert (facts["model"], facts["prompt_tokens"], facts["completion_tokens"]) == (
        "4o-served", 10, 1)
    facts = response_facts(resp3, request_facts(req3))
    assert facts is not None
    assert (facts["model"], facts["prompt_tokens"]) == ("mini-served", 30)
    assert all(m.complete and not m.truncated for m in msgs)


def test_hpack_dynamic_table_across_streams_and_big_tables() -> None:
    # the second request's headers are mostly indexed references into the dynamic table
    w = Wire(table=65536)
    token = [("authorization", "Bearer " + "k" * 3000), ("x-custom", "v" * 200)]
    for sid in (1, 3, 5):
        w.request(sid, chat(f"model-{sid}"), extra=token)
        w.respond(sid, b'{"usage": {"prompt_tokens": %d}}' % sid,
                  [("content-type", "application/json"), ("x-big", "b" * 3000)])
    msgs = w.feed()
    assert [m.headers["x-custom"] for m in msgs if m.is_request] == ["v" * 200] * 3
    assert [m.headers["x-big"] for m in msgs if not m.is_request] == ["b" * 3000] * 3
    assert [request_facts(m)["model"] for m in msgs if m.is_request] == [  # type: ignore[index]
        "model-1", "model-3", "model-5"]


def test_continuation_frames_and_trailers() -> None:
    w = Wire()
    w.request(1, chat("gpt-4o"), extra=[(f"x-h{i}", "y" * 1000) for i in range(40)])
    w.respond(1, b'{"model": "m"}', [("content-type", "application/json")],
              trailers=[("grpc-status", "0"), ("x-usage", "7")])
    assert any(b[3] == 9 for _, data in w.chunks for b in [data[i:i + 9]
               for i in range(len(data) - 9)])  # a CONTINUATION frame is on the wire
    req, resp = w.feed()
    assert req.headers["x-h39"] == "y" * 1000
    assert resp.headers["grpc-status"] == "0" and resp.headers["x-usage"] == "7"
    assert resp.body == b'{"model": "m"}'


def test_byte_at_a_time_and_timing() -> None:
    w = Wire()
    w.request(1, chat("a"))
    w.request(3, chat("b"))
    w.respond(1, b"x" * 100, pieces=4)
    whole = w.feed()
    s = Http2Stream()
    ts = 0
    one: list = []
    for is_read, data in w.chunks:
        for i in range(len(data)):
            ts += 1
            one += s.feed(is_read, data[i:i + 1], ts)
    assert [(m.stream, m.is_request, m.body) for m in one] == [
        (m.stream, m.is_request, m.body) for m in whole]
    assert [m.wire_len for m in one] == [m.wire_len for m in whole]
    for m in one:
        assert 0 < m.ts_first < m.ts_last
    # a message's last byte is the END_STREAM frame's last one: here the capture's last byte
    assert one[-1].ts_last == sum(len(d) for _, d in w.chunks)


def test_padding_priority_and_informational_responses() -> None:
    s = Http2Stream()
    w = Wire()
    w.request(1, b"{}")
    msgs = [m for is_read, data in w.chunks for m in s.feed(is_read, data, 1)]
    hdr = w.server.encoder.encode([(":status", "100")])
    final = w.server.encoder.encode([(":status", "200"), ("content-type", "application/json")])
    frames = [HeadersFrame(1, hdr, flags=["END_HEADERS"]),
              HeadersFrame(1, final, flags=["END_HEADERS", "PADDED", "PRIORITY"], pad_length=9),
              DataFrame(1, b'{"a":', flags=["PADDED"], pad_length=200),
              DataFrame(1, b"1}", flags=["PADDED", "END_STREAM"], pad_length=0)]
    for f in frames:
        msgs += s.feed(True, f.serialize(), 2)
    assert [(m.is_request, m.status, m.body) for m in msgs] == [(True, None, b"{}"),
                                                                (False, 200, b'{"a":1}')]


def test_rst_stream_ends_both_halves_incomplete() -> None:
    w = Wire()
    w.client.send_headers(1, [(":method", "POST"), (":path", "/v1/responses"),
                              (":authority", AUTH), (":scheme", "https")])
    w.client.send_data(1, b'{"model": "gpt-4.1"')
    w.pump()
    w.client.reset_stream(1)
    w.pump()
    [req] = w.feed()
    assert (req.stream, req.complete, req.body) == (1, False, b'{"model": "gpt-4.1"')


def test_lost_bytes_inside_data_are_bridged_elsewhere_fatal() -> None:
    w = Wire()
    w.request(1, b"{}")
    s = Http2Stream()
    for is_read, data in w.chunks:
        s.feed(is_read, data, 1)
    frame = DataFrame(1, b"A" * 1000, flags=["END_STREAM"]).serialize()
    head = w.server.encoder.encode([(":status", "200")])
    assert s.feed(True, HeadersFrame(1, head, flags=["END_HEADERS"]).serialize(), 2) == []
    assert s.feed(True, frame[:109], 3) == []
    assert s.bridge(True, 500, 4) == []
    [resp] = s.feed(True, frame[609:], 5)
    assert resp.body == b"A" * 100 + b" " * 500 + b"A" * 400 and resp.truncated
    assert s.bridge(True, 10, 6) is None  # between frames: framing and HPACK are lost
    assert s.dead(True) and s.feed(True, frame, 7) == []


def test_garbage_and_missing_preface_kill_only_what_they_must() -> None:
    s = Http2Stream()
    assert s.feed(False, b"GET / HTTP/1.1\r\n\r\n", 1) == []
    assert s.dead(False) == "no HTTP/2 client preface"
    s = Http2Stream()
    s.feed(False, PREFACE, 1)
    s.feed(True, b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff", 2)  # bad HPACK
    assert (s.dead(True) or "").startswith("HPACK") and s.dead(False) is None
    assert s.errors == 1


def test_malformed_frames_of_known_length_are_skipped() -> None:
    w = Wire()
    w.request(1, b'{"model": "a"}')
    w.chunks.insert(2, (False, b"\x00\x00\x03\x08\x00\x00\x00\x00\x01abc"))  # WINDOW_UPDATE: 3 bytes
    w.chunks.insert(2, (False, b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x"))  # DATA: pad > frame
    w.request(3, b'{"model": "b"}')
    s = Http2Stream()
    msgs = w.feed(s)
    assert [m.body for m in msgs] == [b'{"model": "a"}', b'{"model": "b"}']
    assert s.bad_frames == 2 and s.dead(False) is None


def test_stream_table_is_capped() -> None:
    s = Http2Stream()
    s.feed(False, PREFACE, 1)
    enc = h2.connection.H2Connection().encoder
    for sid in range(1, 2 * 1000, 2):  # 1,000 streams opened, none ever ended
        block = enc.encode([(":method", "POST"), (":path", "/v1/messages")])
        s.feed(False, HeadersFrame(sid, block, flags=["END_HEADERS"]).serialize(), 2)
    assert len(s._dirs[0].halves) == http2.MAX_STREAMS
    assert s.streams_dropped == 1000 - http2.MAX_STREAMS
    assert len(s.close()) == http2.MAX_STREAMS


def test_decompression_bomb_and_connection_budget() -> None:
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB in about 64 KiB
    s = Http2Stream(max_body=1 << 20, max_conn_body=3 << 20)
    s.feed(False, PREFACE, 1)
    enc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False)).encoder
    for sid in (1, 3, 5, 7, 9):
        head = enc.encode([(":status", "200"), ("content-encoding", "deflate")])
        s.feed(True, HeadersFrame(sid, head, flags=["END_HEADERS"]).serialize(), 2)
        for i in range(0, len(bomb), 16384):
            s.feed(True, DataFrame(sid, bomb[i:i + 16384]).serialize(), 3)
        assert s._kept() <= 3 << 20
    out = [m for sid in (1, 3, 5, 7, 9)
           for m in s.feed(True, DataFrame(sid, b"", flags=["END_STREAM"]).serialize(), 4)]
    assert [m.body_len for m in out] == [64 << 20] * 5
    assert all(m.truncated for m in out)
    assert sum(len(m.body) for m in out) <= 3 << 20


def test_oversized_frames_and_header_blocks_are_refused() -> None:
    s = Http2Stream()
    s.feed(False, PREFACE, 1)
    s.feed(False, b"\xff\xff\xff\x01\x04\x00\x00\x00\x01", 2)
    assert "frame of" in (s.dead(False) or "")
    s = Http2Stream()
    s.feed(False, PREFACE, 1)
    s.feed(False, HeadersFrame(1, b"\x00" * 16000).serialize(), 2)  # no END_HEADERS
    for _ in range(20):
        s.feed(False, b"\x00\x3e\x80\x09\x00\x00\x00\x00\x01" + b"\x00" * 16000, 3)
    assert s.dead(False) == "header block too large"


# --- any bytes in, messages or a dead direction out ------------------------------------------

def _capture() -> list[tuple[bool, bytes]]:
    w = Wire()
    w.request(1, chat("gpt-4o"))
    w.request(3, chat("o3"))
    w.respond(3, gzip.compress(sse("o3", 5, 6)), SSE_HEADERS + [("content-encoding", "gzip")],
              pieces=3)
    w.respond(1, sse("gpt-4o", 1, 2), SSE_HEADERS, trailers=[("x-t", "1")])
    return w.chunks


CAPTURE = _capture()


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.integers(1, 64))
def test_random_bytes_never_raise(writes: bytes, reads: bytes, size: int) -> None:
    s = Http2Stream()
    s.feed(False, PREFACE, 1)
    for i in range(0, max(len(writes), len(reads)), size):
        s.feed(False, writes[i:i + size], 2)
        s.feed(True, reads[i:i + size], 3)
        assert not (s.dead(False) or "").startswith("internal")
        assert not (s.dead(True) or "").startswith("internal")
    s.close()


@settings(max_examples=200)
@given(st.data())
def test_mutated_capture_never_raises(data: st.DataObject) -> None:
    s = Http2Stream()
    for is_read, chunk in CAPTURE:
        raw = bytearray(chunk)
        for _ in range(data.draw(st.integers(0, 3))):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        s.feed(is_read, bytes(raw[:cut]), 1)
        s.feed(is_read, bytes(raw[cut:]), 2)
        for d in (True, False):
            assert not (s.dead(d) or "").startswith("internal"), s.dead(d)
    s.close()


@given(st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_any_split_gives_the_same_messages(sizes: list[int]) -> None:
    ref = Http2Stream()
    whole = [(m.stream, m.body, m.sse) for is_read, d in CAPTURE for m in ref.feed(is_read, d, 1)]
    s = Http2Stream()
    got = []
    for is_read, d in CAPTURE:
        pos, i = 0, 0
        while pos < len(d):
            n = sizes[i % len(sizes)]
            got += [(m.stream, m.body, m.sse) for m in s.feed(is_read, d[pos:pos + n], 1)]
            pos, i = pos + n, i + 1
    assert got == whole and len(whole) == 4
