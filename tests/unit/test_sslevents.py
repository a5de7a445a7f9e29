"""libobs.tls.decode / libobs.tls.attach on synthesized ring-buffer records: chunk decoding, call
assembly, HTTP/LLM reassembly with gaps and resynchronisation, and the envelope events."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.events import NS, Clock, event_kind
from libobs.kernel.records import HDR
from libobs.kernel.records import hdr as parse_hdr
from libobs.tls import attach
from libobs.tls.decode import (
    CHUNK,
    K_SSL,
    MAX_GAP,
    REC,
    ApiTracker,
    CallAssembler,
    SslCall,
    SslChunk,
    SslDecoder,
    decode_chunk,
    host_name,
)
from libobs.tls.order import WRITE_WAIT_NS
from libobs.tool.sink import Line, dumps

PID, SSL = 4242, 0x5555_0000_1000
READ_EX, WRITE_EX, READ, WRITE = 1, 3, 0, 2


def record(data: bytes, *, ts: int, fn: int, off: int = 0, total: int | None = None,
           chunk: int = 0, captured: int | None = None, tid: int = PID, pid: int = PID,
           ssl: int = SSL, lib: int = 0, kind: int = K_SSL, failed: int = 0,
           comm: bytes = b"agent") -> bytes:
    total = len(data) if total is None else total
    captured = total if captured is None else captured
    head = HDR.pack(kind, pid, tid, 1, 1000, len(data), pid, 0, ts, 7, 0, comm)
    return head + REC.pack(ssl, off, total, captured, chunk, fn, lib, failed) + data


def chunk(raw: bytes) -> SslChunk:
    c = decode_chunk(raw)
    assert c is not None
    return c


class Conn:
    """Writes and reads of one connection as consecutive calls, offsets kept per direction."""

    def __init__(self, pid: int = PID, ssl: int = SSL):
        self.pid, self.ssl = pid, ssl
        self.off = {True: 0, False: 0}
        self.ts = 1_000_000

    def call(self, is_read: bool, data: bytes, *, skip: int = 0) -> SslCall:
        """A call moving data, `skip` bytes after the previous call of that direction."""
        self.off[is_read] += skip
        self.ts += 1000
        c = SslCall(parse_hdr(record(b"", ts=self.ts, fn=0, pid=self.pid)), self.ssl,
                    self.off[is_read], len(data), READ_EX if is_read else WRITE_EX, 0, data)
        self.off[is_read] += len(data)
        return c


def anthropic_request(stream: bool, body_pad: int = 0, model_first: bool = False) -> bytes:
    fields = {"messages": [{"role": "user", "content": "x" * body_pad}],
              "model": "claude-opus-4-1", "stream": stream}
    if model_first:
        fields = {"model": fields.pop("model"), "stream": fields.pop("stream"), **fields}
    body = json.dumps(fields).encode()
    return (b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n"
            b"x-api-key: sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


SSE = [
    b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-opus-4-1-2025",'
    b'"usage":{"input_tokens":100,"output_tokens":1,"cache_read_input_tokens":5,'
    b'"cache_creation_input_tokens":6}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def sse_response(gz: bool = False) -> list[bytes]:
    """Head, then chunked pieces (one per event, the usage one split mid-JSON)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    head += b"Content-Encoding: gzip\r\n\r\n" if gz else b"\r\n"
    payload = b"".join(SSE)
    if gz:
        payload = gzip.compress(payload)
    pieces = [payload[i:i + 37] for i in range(0, len(payload), 37)]
    return [head] + [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


def json_response(obj: dict, cut: int = 0) -> list[bytes]:
    body = json.dumps(obj).encode()
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        len(body)) + body
    return [wire[:cut], wire[cut:]] if cut else [wire]


EXPECTED_SSE = {"model": "claude-opus-4-1-2025", "prompt_tokens": 100, "completion_tokens": 42,
                "cache_read_tokens": 5, "cache_creation_tokens": 6, "stream": True,
                "path": "/v1/messages"}


def feed_all(tracker: ApiTracker, calls: list[SslCall]) -> list:
    return [f for c in calls for f in tracker.feed(c, now=0.0)]


# ---- records and calls ------------------------------------------------------------------------

def test_decode_chunk():
    raw = record(b"hello", ts=5, fn=READ_EX, off=100, total=9, captured=5, lib=3)
    c = decode_chunk(raw)
    assert c is not None
    assert (c.h.pid, c.h.ts, c.ssl, c.off, c.total, c.captured, c.fn, c.lib, c.data) == (
        PID, 5, SSL, 100, 9, 5, READ_EX, 3, b"hello")
    assert decode_chunk(record(b"x", ts=1, fn=0, kind=1)) is None  # another program's record
    assert decode_chunk(raw[:50]) is None
    assert attach.is_ssl_record(raw) and not attach.is_ssl_record(record(b"", ts=1, fn=0, kind=2))


def test_assembler_joins_chunks_and_finishes_lost_tails():
    data = bytes(range(256)) * 160  # 40 KiB: three records
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    asm = CallAssembler()
    out = []
    for i, part in enumerate(parts):
        out += asm.feed(chunk(record(part, ts=7, fn=WRITE, off=i * CHUNK, chunk=i,
                                            total=len(data))))
    [call] = out
    assert call.data == data and not call.truncated and not call.is_read and call.off == 0
    # the last chunk of a call lost: the next call of the thread finishes it, truncated
    assert asm.feed(chunk(record(parts[0], ts=8, fn=READ, total=len(data)))) == []
    [cut, small] = asm.feed(chunk(record(b"next", ts=9, fn=READ, off=len(data))))
    assert cut.data == parts[0] and cut.truncated and cut.total == len(data)
    assert small.data == b"next"
    # or the tick does
    asm.feed(chunk(record(parts[0], ts=10, fn=READ, total=len(data))), now=1.0)
    assert asm.flush(older_than=0.5) == []
    [late] = asm.flush(older_than=2.0)
    assert late.truncated


def test_feed_record_is_feed_of_decode_chunk():
    data = bytes(range(256)) * 160
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    recs = [record(part, ts=7, fn=WRITE, off=i * CHUNK, chunk=i, total=len(data))
            for i, part in enumerate(parts)]
    recs += [record(parts[0], ts=8, fn=READ, total=len(data)),  # its other chunks lost
             record(b"next", ts=9, fn=READ, off=len(data)),     # finishes that one
             record(b"x", ts=10, fn=READ, tid=PID + 1, failed=1),  # buffer unreadable
             record(b"y" * 5, ts=11, fn=READ_EX, total=9, captured=5, lib=3),
             record(b"z", ts=12, fn=0, kind=1), record(b"z", ts=12, fn=0)[:50]]  # not ours
    by_chunk, by_record = CallAssembler(), CallAssembler()
    want = [None if (c := decode_chunk(r)) is None else by_chunk.feed(c) for r in recs]
    assert [by_record.feed_record(r) for r in recs] == want
    assert [len(calls or []) for calls in want] == [0, 0, 1, 0, 2, 1, 1, 0, 0]


# ---- HTTP and LLM facts -----------------------------------------------------------------------

def test_sse_exchange_split_across_reads():
    for gz in (False, True):
        c, tracker = Conn(), ApiTracker()
        calls = [c.call(False, anthropic_request(True))]
        calls += [c.call(True, piece) for piece in sse_response(gz)]
        req, resp = feed_all(tracker, calls)
        assert req.is_request and req.fields["model"] == "claude-opus-4-1"
        assert req.fields["stream"] is True and req.fields["prompt_tokens"] is None
        assert not resp.is_request and resp.fields == EXPECTED_SSE
        assert req.provider == resp.provider == "Anthropic"
        assert resp.request_ts == req.ts < resp.ts


def test_keep_alive_pairs_responses_with_their_requests():
    c, tracker = Conn(), ApiTracker()
    calls = []
    for n in (1, 2, 3):
        calls.append(c.call(False, anthropic_request(False)))
        calls += [c.call(True, p) for p in json_response(
            {"model": f"m{n}", "usage": {"input_tokens": n, "output_tokens": 10 * n}}, cut=20)]
    facts = feed_all(tracker, calls)
    responses = [f.fields for f in facts if not f.is_request]
    assert [(r["model"], r["prompt_tokens"], r["completion_tokens"]) for r in responses] == [
        ("m1", 1, 10), ("m2", 2, 20), ("m3", 3, 30)]


def test_mid_connection_start_waits_for_a_request():
    c, tracker = Conn(), ApiTracker()
    wire = sse_response()
    calls = [c.call(True, p) for p in wire[2:]]  # the tail of a response already under way
    calls.append(c.call(False, anthropic_request(True)))
    calls += [c.call(True, p) for p in wire]
    facts = feed_all(tracker, calls)
    assert [f.is_request for f in facts] == [True, False]
    assert facts[1].fields == EXPECTED_SSE


def test_request_larger_than_capture():
    for model_first in (True, False):
        c, tracker = Conn(), ApiTracker()
        req = anthropic_request(True, body_pad=200_000, model_first=model_first)
        captured = c.call(False, req)
        captured.data = req[:65536]  # the kernel captured only the first 64 KiB of the call
        calls = [captured] + [c.call(True, p) for p in sse_response()]
        req_fact, resp = feed_all(tracker, calls)
        # found by pattern in what was captured; past the capture it is honestly unknown
        assert req_fact.fields["model"] == ("claude-opus-4-1" if model_first else None)
        assert req_fact.fields["stream"] is model_first
        assert resp.fields == EXPECTED_SSE  # the response names model and usage itself


def chat_request() -> bytes:
    body = b'{"model":"gpt-4o","messages":[]}'
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_lost_records_inside_a_content_length_body_are_bridged():
    c, tracker = Conn(), ApiTracker()
    body = json.dumps({"model": "gpt-4o-x", "usage": {"prompt_tokens": 7, "completion_tokens": 8},
                       "pad": "p" * 50_000}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    calls = [c.call(False, chat_request())]
    calls += [c.call(True, head + body[:100]), c.call(True, body[40_100:], skip=40_000)]
    calls.append(c.call(False, chat_request()))
    calls += [c.call(True, p) for p in json_response(
        {"model": "gpt-4o-y", "usage": {"prompt_tokens": 1, "completion_tokens": 2}})]
    facts = feed_all(tracker, calls)
    responses = [f.fields for f in facts if not f.is_request]
    assert len(responses) == 2
    assert responses[1]["model"] == "gpt-4o-y" and responses[1]["completion_tokens"] == 2
    assert tracker.resyncs == 0  # framing survived the 40 KB hole


def test_hole_in_chunked_framing():
    c, tracker = Conn(), ApiTracker()
    wire = sse_response()
    calls = [c.call(False, anthropic_request(True)), c.call(True, wire[0]), c.call(True, wire[1])]
    calls.append(c.call(True, wire[3], skip=len(wire[2])))  # one whole chunk went missing
    calls += [c.call(True, p) for p in wire[4:]]
    calls.append(c.call(False, anthropic_request(True)))
    calls += [c.call(True, p) for p in wire]
    facts = feed_all(tracker, calls)
    # filler ahead of a chunk-size line is blank space the parser tolerates: both responses
    assert [f.is_request for f in facts] == [True, False, True, False]
    assert facts[-1].fields == EXPECTED_SSE


def test_unbridgeable_hole_resynchronises_on_the_next_request():
    c, tracker = Conn(), ApiTracker()
    wire = sse_response()
    calls = [c.call(False, anthropic_request(True)), c.call(True, wire[0]),
             c.call(True, wire[3], skip=MAX_GAP + 1)]
    calls += [c.call(True, p) for p in wire[4:]]  # the rest of the lost response: ignored
    calls.append(c.call(False, anthropic_request(True)))
    calls += [c.call(True, p) for p in wire]
    facts = feed_all(tracker, calls)
    assert [f.is_request for f in facts] == [True, True, False]
    assert facts[-1].fields == EXPECTED_SSE
    assert tracker.resyncs == 1


def test_connections_are_separate_and_bounded():
    tracker = ApiTracker(max_conns=2)
    a, b, d = Conn(ssl=1), Conn(ssl=2), Conn(ssl=3)
    for conn in (a, b, d):
        tracker.feed(conn.call(False, anthropic_request(False)), now=0.0)
    facts = feed_all(tracker, [d.call(True, p) for p in json_response({"model": "z"})])
    assert [f.fields["model"] for f in facts] == ["z"]
    assert tracker.host_of(PID, 1) is None  # the least recently used went first
    assert tracker.host_of(PID, 3) == "api.anthropic.com"
    assert tracker.expire(now=10_000.0) == [] and tracker.host_of(PID, 3) is None


def test_host_name():
    assert host_name("api.openai.com:443") == "api.openai.com"
    assert host_name("[::1]:8443") == "::1"
    assert host_name("api.openai.com") == "api.openai.com"
    assert host_name(None) is None and host_name("") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 50)),
                max_size=30))
def test_tracker_is_total(steps):
    c, tracker = Conn(), ApiTracker()
    start = [c.call(False, anthropic_request(True))]
    feed_all(tracker, start + [c.call(is_read, data, skip=skip) for is_read, data, skip in steps])
    tracker.expire(float("inf"))


# ---- envelope events --------------------------------------------------------------------------

def decoder(**kw) -> SslDecoder:
    return SslDecoder(Clock(1_000_000_000_000), "host-1", ["/lib/libssl.so.3"], **kw)


def test_ssl_content_and_llm_api_events_redacted():
    dec = decoder()
    req = anthropic_request(False)
    raws = [record(req, ts=2000, fn=WRITE_EX)]
    resp = json_response({"model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 4}})[0]
    raws.append(record(resp, ts=3000, fn=READ, off=0))
    events = [e for raw in raws for e in dec(raw)]
    assert len(events) == 2  # the read waits for a write that may have entered before it
    assert dec.tick((3000 + WRITE_WAIT_NS - 1000) / NS) == []
    events += dec.tick((3000 + WRITE_WAIT_NS + 1000) / NS)
    kinds = [next(iter(e["event"])) for e in events]
    assert kinds == ["SslContent", "LlmApi", "SslContent", "LlmApi"]
    write = events[0]["event"]["SslContent"]
    assert write["content"].count("[REDACTED]") == 1 and "sk-ant" not in write["content"]
    assert write | {"content": None} == {"pid": PID, "tid": PID, "is_read": False,
                                         "content": None, "len": len(req), "truncated": False,
                                         "lib": "/lib/libssl.so.3"}
    assert events[0]["ts"] == 1_000_000_002_000
    assert events[0]["provider"] == events[2]["provider"] == "Anthropic"  # from the Host
    api = events[3]["event"]["LlmApi"]
    assert api == {"pid": PID, "is_request": False, "model": "claude-x", "prompt_tokens": 3,
                   "completion_tokens": 4, "cache_read_tokens": None,
                   "cache_creation_tokens": None, "stream": False, "path": "/v1/messages"}
    assert events[3]["identity"]["task"] == str(PID)


def test_lines_are_the_events_dumped():
    """With `lines` (json output) the decoder renders each process's envelope once: its lines
    are byte for byte what dumps makes of the events it gives otherwise, also once the process
    exec'd (another comm), for another provider, a process without identity and bad UTF-8."""
    resp = json_response({"model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 4}})
    other = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
    raws = [record(anthropic_request(False), ts=2000, fn=WRITE_EX),
            record(resp[0], ts=3000, fn=READ),
            record(b"\xff\xfe not text", ts=4000, fn=WRITE_EX, off=5000, total=9000),
            record(other, ts=5000, fn=WRITE, ssl=SSL + 1, comm=b"after-exec"),
            record(b"x", ts=6000, fn=WRITE, pid=PID + 1, tid=PID + 1, ssl=SSL + 2),
            record(anthropic_request(True), ts=7000, fn=WRITE_EX, ssl=SSL + 3)]

    def events(**kw) -> list:
        dec = decoder(**kw)
        return [e for raw in raws for e in dec(raw)] + dec.tick(float("inf"))

    lines, dicts = events(lines=True), events()
    assert all(isinstance(line, Line) for line in lines) and len(lines) == len(dicts) == 10
    assert [line.kind for line in lines] == [event_kind(e) for e in dicts]
    assert [line.json for line in lines] == [dumps(e) for e in dicts]
    assert len({e["process"]["comm"] for e in dicts}) == 2


def test_no_redact_and_api_only():
    req = anthropic_request(False)
    [content, _api] = list(decoder(redact_content=False)(record(req, ts=1, fn=WRITE)))
    assert "sk-ant-api03-AAAA" in content["event"]["SslContent"]["content"]
    [api] = list(decoder(content=False)(record(req, ts=1, fn=WRITE)))
    assert "LlmApi" in api["event"]


def test_truncated_call_is_flagged():
    data = b"x" * 100
    dec = decoder(api=False)
    [ev] = dec(record(data, ts=1, fn=READ, total=5000, captured=100)) + dec.tick(float("inf"))
    fields = ev["event"]["SslContent"]
    assert fields["truncated"] is True and fields["len"] == 5000 and len(fields["content"]) == 100


def test_sslapi_facts_keyed_by_request():
    api = attach.SslApi(Clock(10))
    raws = [record(anthropic_request(True), ts=100, fn=WRITE_EX)]
    off = 0
    for i, piece in enumerate(sse_response()):
        raws.append(record(piece, ts=200 + i, fn=READ_EX, off=off))
        off += len(piece)
    facts = [f for raw in raws for f in api.feed(raw)] + api.tick(float("inf"))
    req, resp = facts
    assert req.key == resp.key == (PID, 110, 0)  # pid, request_ts, HTTP/2 stream (0: HTTP/1.x)
    assert req.model == "claude-opus-4-1" and resp.model == "claude-opus-4-1-2025"
    assert resp.fields["completion_tokens"] == 42 and resp.provider == "Anthropic"
    assert resp.ts > resp.request_ts
