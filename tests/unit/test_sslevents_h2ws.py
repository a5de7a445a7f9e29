"""ApiTracker on HTTP/2 and WebSocket connections: one LlmApi pair per stream and per
response.create, lost bytes, and random calls never raising."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import TextMessage

from libobs.tls.decode import ApiTracker
from tests.unit import test_tls_http2 as h2wire
from tests.unit import test_tls_websocket as wswire
from tests.unit.test_sslevents import Conn, feed_all


def h2_calls(c: Conn) -> list:
    w = h2wire.Wire()
    w.request(1, h2wire.chat("gpt-4o"))
    w.request(3, h2wire.chat("gpt-4o-mini"))
    w.respond(3, h2wire.sse("mini-x", 30, 3), h2wire.SSE_HEADERS, pieces=3)
    w.respond(1, gzip.compress(h2wire.sse("4o-x", 10, 1)),
              h2wire.SSE_HEADERS + [("content-encoding", "gzip")])
    return [c.call(is_read, data) for is_read, data in w.chunks]


def test_http2_one_pair_per_stream():
    c, tracker = Conn(), ApiTracker()
    facts = feed_all(tracker, h2_calls(c))
    got = [(f.is_request, f.fields["model"], f.fields["prompt_tokens"]) for f in facts]
    assert got == [(True, "gpt-4o", None), (True, "gpt-4o-mini", None), (False, "mini-x", 30),
                   (False, "4o-x", 10)]
    req1, req3, resp3, resp1 = facts
    assert resp1.request_ts == req1.ts and resp3.request_ts == req3.ts != req1.ts
    assert {f.provider for f in facts} == {"OpenAi"}
    assert all(f.fields["path"] == "/v1/chat/completions" and f.fields["stream"] for f in facts)
    assert tracker.host_of(c.pid, c.ssl) == "api.openai.com"


def test_http2_lost_bytes_inside_data_and_outside():
    w = h2wire.Wire()
    w.request(1, h2wire.chat("gpt-4o"))
    body = json.dumps({"model": "served", "usage": {"prompt_tokens": 4},
                       "pad": "p" * 30000}).encode()
    w.respond(1, body, [("content-type", "application/json")], pieces=3)
    c, tracker = Conn(), ApiTracker()
    calls = [c.call(is_read, data) for is_read, data in w.chunks]
    middle = calls[-2]  # the second of three DATA frames, all "pad"
    middle.data = middle.data[:300]  # captured only partly: the rest lies inside its payload
    facts = feed_all(tracker, calls)
    # the hole fell inside the "pad" string: spaces there keep the JSON (and framing) whole
    assert [(f.is_request, f.fields["model"]) for f in facts] == [(True, "gpt-4o"),
                                                                 (False, "served")]
    assert facts[1].fields["prompt_tokens"] == 4 and tracker.resyncs == 0
    # a hole between frames loses HPACK state: the connection is dropped, nothing raises
    c2, tracker2 = Conn(ssl=9), ApiTracker()
    calls = h2_calls(c2)
    calls[-2] = c2.call(calls[-2].is_read, calls[-2].data, skip=5)
    feed_all(tracker2, calls)
    assert tracker2.resyncs == 1
    assert tracker2.problems["errors"] == 1  # counted, not raised


UPGRADE = (b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")


def ws_calls(c: Conn, first_frame_with_101: bool) -> list:
    w = wswire.Wire()
    # sent (and compressed, the window being shared) before anything else
    hello = w.server.send(TextMessage(json.dumps({"type": "session.created"})))
    w.call("gpt-5", "gpt-5-x", 100, 7)
    w.call("gpt-5-codex", "gpt-5-codex-y", 200, 9)
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
              b"Sec-WebSocket-Extensions: " + w.extensions.strip().encode() + b"\r\n\r\n")
    calls = [c.call(False, UPGRADE)]
    chunks = list(w.chunks)
    calls.append(c.call(True, switch + hello) if first_frame_with_101 else c.call(True, switch))
    if not first_frame_with_101:
        calls.append(c.call(True, hello))
    return calls + [c.call(is_read, data) for is_read, data in chunks]


def test_websocket_one_pair_per_response_create():
    for first_frame_with_101 in (False, True):
        c, tracker = Conn(), ApiTracker()
        facts = feed_all(tracker, ws_calls(c, first_frame_with_101))
        got = [(f.is_request, f.fields["model"], f.fields["prompt_tokens"],
                f.fields["completion_tokens"]) for f in facts]
        assert got == [(True, "gpt-5", None, None), (False, "gpt-5-x", 100, 7),
                       (True, "gpt-5-codex", None, None), (False, "gpt-5-codex-y", 200, 9)]
        assert {f.provider for f in facts} == {"OpenAi"}
        assert all(f.fields["path"] == "/v1/responses" for f in facts)
        assert facts[1].request_ts == facts[0].ts and facts[3].request_ts == facts[2].ts


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 50)),
                max_size=20), st.booleans())
def test_tracker_is_total_on_h2_and_websocket(steps, websocket):
    c, tracker = Conn(), ApiTracker()
    start = ws_calls(c, False)[:2] if websocket else h2_calls(c)[:2]
    feed_all(tracker, start + [c.call(is_read, data, skip=skip) for is_read, data, skip in steps])
    tracker.expire(float("inf"))
