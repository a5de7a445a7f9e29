"""HTTP/1.1 reassembly: framing, decoding, SSE, splits at any byte, garbage and truncation."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls import http1
from libobs.tls.http1 import HttpStream
from libobs.tls.message import HttpMessage, SseDecoder, SseEvent, parse_sse

# --- wire builders (also used by test_parse_llmapi) -------------------------------------------


def chunked(body: bytes, size: int = 64, ext: bool = True, trailer: bool = True) -> bytes:
    """Chunked transfer coding; the first chunk carries an extension, the end a trailer."""
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x%s\r\n%s\r\n" % (len(piece), b';name="v"' if ext and i == 0 else b"", piece)
    return out + (b"0\r\nX-Trailer: done\r\n\r\n" if trailer else b"0\r\n\r\n")


def framed_head(start: bytes, headers: Sequence[tuple[str, str]], body: bytes,
                use_chunked: bool, gz: bool) -> bytes:
    """A start line, headers and a body framed by content-length or chunked, maybe gzip'ed."""
    hdrs = list(headers)
    if gz:
        body = gzip.compress(body, mtime=0)
        hdrs.append(("Content-Encoding", "gzip"))
    if use_chunked:
        hdrs.append(("Transfer-Encoding", "chunked"))
        body = chunked(body)
    else:
        hdrs.append(("Content-Length", str(len(body))))
    head = start + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs) + b"\r\n"
    return head + body


def request_bytes(path: str, body: bytes, headers: Sequence[tuple[str, str]] = (),
                  use_chunked: bool = False, gz: bool = False, method: str = "POST") -> bytes:
    base = [("Host", "api.example.com"), ("Content-Type", "application/json"), *headers]
    return framed_head(f"{method} {path} HTTP/1.1".encode(), base, body, use_chunked, gz)


def response_bytes(body: bytes, content_type: str = "application/json",
                   use_chunked: bool = False, gz: bool = False, status: int = 200) -> bytes:
    base = [("Date", "Tue, 01 Jul 2025 10:00:00 GMT"), ("Content-Type", content_type)]
    return framed_head(f"HTTP/1.1 {status} OK".encode(), base, body, use_chunked, gz)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=40)


def feed_all(stream: HttpStream, chunks: Iterable[tuple[bool, bytes]], ts: int = 7) -> list[HttpMessage]:
    out: list[HttpMessage] = []
    for is_read, data in chunks:
        out += stream.feed(is_read, data, ts)
    return out


def one_by_one(stream: HttpStream, is_read: bool, data: bytes) -> list[HttpMessage]:
    return feed_all(stream, ((is_read, data[i : i + 1]) for i in range(len(data))))


def assert_alive(stream: HttpStream) -> None:
    assert stream.dead(True) is None and stream.dead(False) is None


def assert_no_internal_error(stream: HttpStream) -> None:
    for is_read in (True, False):
        assert not (stream.dead(is_read) or "").startswith("internal"), stream.dead(is_read)


# --- framing --------------------------------------------------------------------------------

SIMPLE_REQ = b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
SIMPLE_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def test_content_length_request_and_response() -> None:
    s = HttpStream()
    [req] = s.feed(False, SIMPLE_REQ, 10)
    assert (req.is_request, req.method, req.path, req.body) == (True, "POST", "/v1/x?a=1", b"hello")
    assert req.headers == {"host": "h", "content-length": "5"}
    assert (req.wire_len, req.body_len, req.complete) == (len(SIMPLE_REQ), 5, True)
    [resp] = s.feed(True, SIMPLE_RESP, 20)
    assert (resp.is_request, resp.status, resp.body, resp.method) == (False, 200, b"ok", None)
    assert_alive(s)


def test_byte_at_a_time_equals_whole() -> None:
    whole = HttpStream().feed(False, SIMPLE_REQ, 7)
    assert one_by_one(HttpStream(), False, SIMPLE_REQ) == whole


def test_timestamps_first_and_last_chunk() -> None:
    s = HttpStream()
    assert s.feed(False, SIMPLE_REQ[:10], 100) == []
    assert s.feed(False, SIMPLE_REQ[10:-1], 200) == []
    # the next request starts inside the chunk that ends this one
    [first] = s.feed(False, SIMPLE_REQ[-1:] + SIMPLE_REQ[:3], 300)
    [second] = s.feed(False, SIMPLE_REQ[3:], 400)
    assert (first.ts_first, first.ts_last) == (100, 300)
    assert (second.ts_first, second.ts_last) == (300, 400)


def test_chunked_with_extensions_and_trailers() -> None:
    body = b"0123456789" * 30
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, size=7)
    [msg] = HttpStream().feed(True, wire, 7)
    assert msg.body == body and msg.body_len == 300 and msg.wire_len == len(wire)
    assert msg.headers["x-trailer"] == "done"
    assert one_by_one(HttpStream(), True, wire) == [msg]


def test_chunked_hex_upper_and_bare_lf() -> None:
    wire = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nA \n0123456789\n0\n\n"
    [msg] = HttpStream().feed(True, wire, 1)
    assert msg.body == b"0123456789"


def test_close_delimited_response_ends_at_close() -> None:
    s = HttpStream()
    assert s.feed(True, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc", 1) == []
    assert s.feed(True, b"def", 2) == []
    [msg] = s.close()
    assert (msg.body, msg.complete, msg.ts_first, msg.ts_last) == (b"abcdef", True, 1, 2)
    assert s.feed(True, b"more", 3) == [] and s.dead(True) == "closed"


def test_cut_short_message_flushed_incomplete() -> None:
    s = HttpStream()
    assert s.feed(True, SIMPLE_RESP[:-1], 1) == []
    [msg] = s.close()
    assert (msg.body, msg.complete) == (b"o", False)


def test_head_204_304_have_no_body() -> None:
    s = HttpStream()
    reqs = b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n"
    assert [m.method for m in s.feed(False, reqs, 1)] == ["HEAD", "GET", "GET", "GET"]
    resps = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # HEAD: length of what GET would send
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"
    )
    msgs = s.feed(True, resps, 2)
    assert [(m.status, m.body) for m in msgs] == [(200, b""), (204, b""), (304, b""), (200, b"xyz")]


def test_interim_responses_are_skipped() -> None:
    s = HttpStream()
    s.feed(False, b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 1)
    wire = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert s.feed(True, wire[:30], 5) == []
    [resp] = s.feed(True, wire[30:], 6)
    assert (resp.status, resp.body, resp.ts_first) == (201, b"ok", 6)  # its own first byte
    assert "link" not in resp.headers
    [req] = s.feed(False, b"hi", 7)
    assert req.body == b"hi"


def test_keep_alive_and_pipelining() -> None:
    s = HttpStream()
    two = SIMPLE_REQ + b"\r\n" + SIMPLE_REQ  # a stray CRLF between messages is tolerated
    assert len(s.feed(False, two, 1)) == 2
    msgs = s.feed(True, SIMPLE_RESP + SIMPLE_RESP, 2)
    assert [m.body for m in msgs] == [b"ok", b"ok"]
    assert len(s.feed(False, SIMPLE_REQ, 3)) == 1 and len(s.feed(True, SIMPLE_RESP, 4)) == 1
    assert_alive(s)


def test_headers_lowercased_last_wins_and_folding() -> None:
    wire = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n\r\n"
    [msg] = HttpStream().feed(True, wire, 1)
    assert msg.headers == {"x-a": "2", "x-long": "a b", "content-length": "0"}


def test_gzip_and_deflate_bodies() -> None:
    body = b'{"hello": "world"}' * 100
    for coding, encoded in [
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body)[2:-4]),  # raw deflate, as some servers send
    ]:
        wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            coding.encode(), len(encoded), encoded)
        [msg] = one_by_one(HttpStream(), True, wire)
        assert (msg.body, msg.body_len, msg.decode_error) == (body, len(body), False), coding


def test_concatenated_gzip_members() -> None:
    encoded = gzip.compress(b"first ") + gzip.compress(b"second")
    wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(encoded), encoded)
    [msg] = HttpStream().feed(True, wire, 1)
    assert msg.body == b"first second"


def test_corrupt_gzip_flags_decode_error_and_keeps_framing() -> None:
    bad = b"\x1f\x8b\x08\x00garbage-garbage"
    wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(bad), bad)
    s = HttpStream()
    [msg] = s.feed(True, wire + SIMPLE_RESP, 1)[:1]
    assert msg.decode_error and msg.body == b""
    assert_alive(s)


def test_brotli_left_undecoded() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x0b\x01\x80\x03"
    [msg] = HttpStream().feed(True, wire, 1)
    assert (msg.undecoded, msg.body) == (True, b"\x0b\x01\x80\x03")


def test_body_cap_counts_everything_keeps_prefix() -> None:
    body = bytes(range(256)) * 40
    wire = response_bytes(body, use_chunked=True)
    [msg] = HttpStream(max_body=1000).feed(True, wire, 1)
    assert (msg.body, msg.body_len, msg.truncated) == (body[:1000], len(body), True)
    [gz] = HttpStream(max_body=1000).feed(True, response_bytes(body, gz=True), 1)
    assert (gz.body, gz.body_len, gz.truncated) == (body[:1000], len(body), True)


def test_gzip_bomb_stays_bounded() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    wire = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(bomb), bomb)
    [msg] = HttpStream(max_body=4096).feed(True, wire, 1)
    assert (len(msg.body), msg.body_len, msg.truncated) == (4096, 64 << 20, True)


# --- SSE ------------------------------------------------------------------------------------

SSE_BODY = (
    b"event: start\r\ndata: {\"n\": 0}\r\n\r\n"
    b": keep-alive comment\n\n"
    b"data: line one\ndata: line two\n\n"
    b"event: end\rdata: bye\r\r"
)
SSE_EVENTS = [
    SseEvent("start", '{"n": 0}', 7),
    SseEvent(None, "line one\nline two", 7),
    SseEvent("end", "bye", 7),
]


def test_sse_response_events_on_message_and_callback() -> None:
    seen: list[tuple[int | None, SseEvent]] = []
    s = HttpStream(on_sse=lambda msg, ev: seen.append((msg.status, ev)))
    wire = response_bytes(SSE_BODY, "text/event-stream; charset=utf-8", use_chunked=True)
    head_end = wire.index(b"\r\n\r\n") + 4
    assert s.feed(True, wire[: head_end + 60], 1) == []
    assert seen == [(200, SseEvent("start", '{"n": 0}', 1))]  # delivered before the response ends
    [msg] = s.feed(True, wire[head_end + 60 :], 2)
    assert msg.is_sse and msg.body == SSE_BODY
    assert [e.data for e in msg.sse] == [e.data for e in SSE_EVENTS]
    assert [e.ts for e in msg.sse] == [1, 2, 2] and len(seen) == 3


def test_sse_keeps_first_and_last_events_past_budget() -> None:
    body = b"".join(b"data: %05d\n\n" % i for i in range(1000))
    [msg] = HttpStream(max_body=600).feed(True, response_bytes(body, "text/event-stream"), 1)
    datas = [e.data for e in msg.sse]
    assert datas[0] == "00000" and datas[-1] == "00999"
    assert msg.sse_dropped == 1000 - len(datas) > 0 and msg.truncated
    assert sum(len(d) for d in datas) <= 2 * 600


def test_parse_sse_whatwg_rules() -> None:
    text = (
        "\ufeffdata: a\r\n"
        "data:b\n"  # no space after the colon
        "data:  c\n\n"  # only one space is removed
        ":comment\n"
        "event: ping\n\n"  # no data: not dispatched, and the type does not carry over
        "data\n\n"  # a field without colon has an empty value
        "data: x\n"
        "event: late\n\n"
        "id: 1\nretry: 10\nfoo: bar\ndata: y\r\r"
        "data: unterminated\n"
    )
    assert parse_sse(text) == [
        SseEvent(None, "a\nb\n c"),
        SseEvent(None, ""),
        SseEvent("late", "x"),
        SseEvent(None, "y"),
    ]


@given(st.data())
def test_sse_decoder_any_split_equals_parse_sse(data: st.DataObject) -> None:
    raw = SSE_BODY + "data: ünïcödé\r\n\r\n".encode() + b"data: \xff\n\n"
    decoder = SseDecoder()
    events = [e for piece in split(raw, data.draw(cuts_for(raw))) for e in decoder.feed(piece)]
    assert events == parse_sse(raw.decode("utf-8", "replace"))
    assert [e.data for e in events][-2:] == ["ünïcödé", "\ufffd"]


SSE_SOUP = [b"data:", b"data: ", b"event: x", b"\n", b"\r", b"\r\n", b":c", b"\xef\xbb\xbf",
            b"\xff", b"\xc3", b"\xbc", "\u00fc".encode(), b"id: 1", b" ", b"x"]


@given(st.lists(st.sampled_from(SSE_SOUP), max_size=40), st.data())
def test_sse_decoder_reads_lines_as_decoding_each_line_alone_would(
        parts: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(parts)
    complete = raw[:max(raw.rfind(b"\n"), raw.rfind(b"\r")) + 1]
    ref, want = SseDecoder(), []
    for line in complete.splitlines():
        ref.line(line.decode("utf-8", "replace"), 0, want)
    decoder = SseDecoder()
    assert [e for piece in split(raw, data.draw(cuts_for(raw))) for e in decoder.feed(piece)] == want


FIELD_LINE = st.tuples(
    st.sampled_from([b"Host", b"Content-Length", b"x-API-key", b"a(b", b" folded", b""]),
    st.sampled_from([b":", b": ", b" :", b":\t", b""]),
    st.lists(st.sampled_from([b"x", b" ", b"\t", b"\r", b"\xff", b":", b"1"]), max_size=6),
    st.sampled_from([b"\r\n", b"\n"]))


def fields_or_error(read: Any, raw: bytes, start: int) -> Any:
    try:
        return read(raw, start)
    except http1._Head as e:
        return str(e)


@given(st.lists(FIELD_LINE, max_size=6))
def test_head_fields_fast_path_reads_as_the_general_parser(
        lines: list[tuple[bytes, bytes, list[bytes], bytes]]) -> None:
    fields = b"".join(name + sep + b"".join(value) + end for name, sep, value, end in lines)
    raw = b"GET / HTTP/1.1\r\n" + fields + b"\r\n"
    raw = raw[:http1._head_end(raw, 0)]  # a head runs to its first blank line
    start = raw.find(b"\n") + 1
    for _ in range(2):  # the second time through the line cache
        assert fields_or_error(http1._head_fields, raw, start) == fields_or_error(
            lambda r, s: http1._parse_fields(r[s:].split(b"\n"), strict=True), raw, start)


# --- robustness -----------------------------------------------------------------------------


def test_garbage_kills_only_its_direction() -> None:
    s = HttpStream()
    assert s.feed(True, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1) == []
    assert s.dead(True) == "not an HTTP/1.x response"
    assert s.feed(True, SIMPLE_RESP, 2) == []  # stays dead
    assert len(s.feed(False, SIMPLE_REQ, 3)) == 1 and s.dead(False) is None


def test_http2_preface_is_not_http1() -> None:
    s = HttpStream()
    assert s.feed(False, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1) == []
    assert s.dead(False) is not None


def test_bad_framing_kills() -> None:
    for wire in [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    ]:
        s = HttpStream()
        assert s.feed(True, wire, 1) == [] and s.dead(True) is not None, wire


def test_upgrade_ends_parsing_both_ways() -> None:
    s = HttpStream()
    s.feed(False, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1)
    [msg] = s.feed(True, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05", 2)
    assert msg.status == 101
    assert s.dead(True) and s.dead(False)
    assert s.feed(False, b"\x81\x85abcd", 3) == []


def test_unterminated_head_is_bounded() -> None:
    s = HttpStream()
    s.feed(False, b"GET / HTTP/1.1\r\nX: " + b"a" * (70 << 10), 1)
    assert s.dead(False) == "head too large"


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.binary(max_size=2000), st.integers(1, 64))
def test_random_bytes_never_raise(reads: bytes, writes: bytes, size: int) -> None:
    s = HttpStream(max_body=256)
    for i in range(0, max(len(reads), len(writes)), size):
        s.feed(True, reads[i : i + size], i)
        s.feed(False, writes[i : i + size], i)
    s.close()
    assert_no_internal_error(s)


FUZZ_SEED = (
    SIMPLE_REQ
    + request_bytes("/v1/messages", b'{"a": 1}', use_chunked=True, gz=True)
    + response_bytes(SSE_BODY, "text/event-stream", use_chunked=True, gz=True)
    + SIMPLE_RESP
)


@settings(max_examples=300)
@given(st.data())
def test_mutated_http_never_raises(data: st.DataObject) -> None:
    wire = bytearray(FUZZ_SEED)
    for pos, byte in data.draw(st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255)),
                                        max_size=6)):
        wire[pos] = byte
    s = HttpStream(max_body=128)
    for piece in split(bytes(wire), data.draw(cuts_for(bytes(wire)))):
        s.feed(True, piece, 1)
        s.feed(False, piece, 1)
    s.close()
    assert_no_internal_error(s)


@given(st.data())
def test_truncated_stream_then_close_never_raises(data: st.DataObject) -> None:
    wire = response_bytes(SSE_BODY * 3, "text/event-stream", use_chunked=data.draw(st.booleans()),
                          gz=data.draw(st.booleans()))
    cut = data.draw(st.integers(0, len(wire)))
    s = HttpStream()
    msgs = [m for piece in split(wire[:cut], data.draw(cuts_for(wire[:cut])))
            for m in s.feed(True, piece, 1)]
    msgs += s.close()
    assert_no_internal_error(s)
    assert len(msgs) <= 1
    if msgs:
        assert msgs[0].complete == (cut == len(wire))


def test_head_field_cache_keeps_no_credentials_and_no_long_lines():
    http1._FIELD_CACHE.clear()
    raw = (b"POST / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-secret\r\n"
           b"X-Api-Key: k\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n")
    fields = http1._head_fields(raw, raw.index(b"\n") + 1)
    assert fields["authorization"] == "Bearer sk-secret" and fields["x-long"] == "v" * 300
    assert list(http1._FIELD_CACHE) == [b"Host: a\r"]
