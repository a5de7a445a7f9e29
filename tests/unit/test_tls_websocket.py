"""WebSocket decoding (libobs.tls.websocket) on frames made by wsproto's own endpoints:
Responses API calls, permessage-deflate with and without context takeover, fragments,
control frames, bombs, and any bytes never raising."""

from __future__ import annotations

import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Ping, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from libobs.tls.llmapi import request_facts, response_facts
from libobs.tls.websocket import WebSocketStream, parse_extensions

PATH = "/v1/responses"


class Wire:
    """A wsproto client and server after the handshake; `chunks` is what each one sent."""

    def __init__(self, deflate: bool = True, **params: bool) -> None:
        self.client = WSConnection(ConnectionType.CLIENT)
        self.server = WSConnection(ConnectionType.SERVER)
        exts = [PerMessageDeflate(**params)] if deflate else []  # type: ignore[arg-type]
        self.server.receive_data(self.client.send(Request(host="api.openai.com", target=PATH,
                                                          extensions=exts)))
        list(self.server.events())
        accept = self.server.send(AcceptConnection(
            extensions=[PerMessageDeflate(**params)] if deflate else []))  # type: ignore[arg-type]
        self.client.receive_data(accept)
        list(self.client.events())
        head = accept.decode("latin-1").lower()
        self.extensions = head.split("sec-websocket-extensions:")[1].split("\r\n")[0] \
            if "sec-websocket-extensions" in head else ""
        self.chunks: list[tuple[bool, bytes]] = []

    def send(self, is_read: bool, event: Message | Ping) -> None:
        self.chunks.append((is_read, (self.server if is_read else self.client).send(event)))

    def call(self, model: str, served: str, prompt: int, completion: int,
             deltas: int = 3) -> None:
        self.send(False, TextMessage(json.dumps({"type": "response.create", "model": model,
                                                 "input": [{"type": "message",
                                                            "content": "hi"}]})))
        resp = {"id": "resp_1", "object": "response", "model": served}
        self.send(True, TextMessage(json.dumps({"type": "response.created",
                                                "response": dict(resp, usage=None)})))
        for _ in range(deltas):
            self.send(True, TextMessage(json.dumps({"type": "response.output_text.delta",
                                                    "delta": "he"})))
        usage = {"input_tokens": prompt, "output_tokens": completion,
                 "input_tokens_details": {"cached_tokens": 2}}
        self.send(True, TextMessage(json.dumps({"type": "response.completed",
                                                "response": dict(resp, usage=usage)})))

    def stream(self, max_message: int = 4 << 20) -> WebSocketStream:
        return WebSocketStream(PATH, "api.openai.com", self.extensions, max_message)

    def feed(self, s: WebSocketStream | None = None) -> list:
        s = s or self.stream()
        return [m for is_read, data in self.chunks for m in s.feed(is_read, data, 9)]


def facts(msgs: list) -> list[tuple]:
    out = []
    for req, resp in zip(msgs[::2], msgs[1::2], strict=True):
        r = request_facts(req)
        f = response_facts(resp, r)
        assert r is not None and f is not None
        out.append((r["model"], f["model"], f["prompt_tokens"], f["completion_tokens"],
                    f["cache_read_tokens"], f["stream"]))
    return out


def test_calls_over_deflate_with_context_takeover() -> None:
    w = Wire()
    assert parse_extensions(w.extensions)[0]
    w.call("gpt-5", "gpt-5-2025", 100, 7)
    w.call("gpt-5-mini", "gpt-5-mini-2025", 200, 9)
    msgs = w.feed()
    assert [m.is_request for m in msgs] == [True, False, True, False]
    assert facts(msgs) == [("gpt-5", "gpt-5-2025", 100, 7, 2, True),
                           ("gpt-5-mini", "gpt-5-mini-2025", 200, 9, 2, True)]
    assert msgs[0].path == PATH and msgs[0].headers["host"] == "api.openai.com"
    assert [e.event for e in msgs[1].sse] == ["response.created", "response.completed"]


def test_no_context_takeover_and_uncompressed() -> None:
    for w in (Wire(client_no_context_takeover=True, server_no_context_takeover=True),
              Wire(deflate=False)):
        w.call("a", "a1", 1, 2)
        w.call("b", "b1", 3, 4)
        assert facts(w.feed()) == [("a", "a1", 1, 2, 2, True), ("b", "b1", 3, 4, 2, True)]


def test_fragments_pings_and_byte_at_a_time() -> None:
    w = Wire()
    text = json.dumps({"type": "response.create", "model": "o3", "pad": "x" * 5000})
    w.send(False, TextMessage(text[:100], message_finished=False))
    w.send(False, Ping(b"p"))  # control frames may sit between fragments
    w.send(False, TextMessage(text[100:], message_finished=True))
    w.send(True, TextMessage(json.dumps({"type": "error", "error": {"message": "no"}})))
    s = w.stream()
    ts, out = 0, []
    for is_read, data in w.chunks:
        for i in range(len(data)):
            ts += 1
            out += s.feed(is_read, data[i:i + 1], ts)
    req, resp = out
    assert request_facts(req)["model"] == "o3"  # type: ignore[index]
    assert req.ts_first < req.ts_last < resp.ts_first
    assert [e.event for e in resp.sse] == ["error"]


def test_server_events_without_a_request_are_ignored() -> None:
    w = Wire()
    w.send(True, TextMessage(json.dumps({"type": "response.completed", "response": {}})))
    w.call("m", "m1", 1, 1)
    assert facts(w.feed()) == [("m", "m1", 1, 1, 2, True)]


def test_close_flushes_an_unfinished_response() -> None:
    w = Wire()
    w.call("m", "m1", 1, 1)
    w.chunks.pop()  # response.completed never came
    s = w.stream()
    msgs = w.feed(s) + s.close()
    assert [m.complete for m in msgs] == [True, False]
    assert response_facts(msgs[1], request_facts(msgs[0]))["model"] == "m1"  # type: ignore[index]


def test_deflate_bomb_is_bounded_and_counted() -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = z.compress(b'{"type": "response.create", "model": "m", "pad": "')
    payload += z.compress(b"A" * (256 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]  # RFC 7692: the empty block's tail is not sent
    assert len(payload) < 512 << 10
    head = bytes([0xC1, 0x80 | 127]) + len(payload).to_bytes(8, "big") + b"\0\0\0\0"  # masked, RSV1
    s = WebSocketStream(PATH, None, "permessage-deflate", max_message=1 << 20)
    [req] = s.feed(False, head + payload, 1)
    assert req.truncated and request_facts(req)["model"] == "m"  # type: ignore[index]
    assert s.dropped >= (256 << 20) - (1 << 20)


def test_bad_frames_kill_one_direction() -> None:
    s = WebSocketStream(PATH, None)
    assert s.feed(True, b"\x81\x85abcdhello", 1) == []  # a masked frame from the server
    assert (s.dead(True) or "").startswith("websocket:") and s.dead(False) is None
    assert s.bridge(False, 10, 2) is None and s.dead(False)


_W = Wire()
_W.call("gpt-5", "gpt-5-x", 5, 6)
CAPTURE = _W.chunks


@given(st.binary(max_size=2000), st.binary(max_size=2000), st.booleans())
def test_random_bytes_never_raise(writes: bytes, reads: bytes, deflate: bool) -> None:
    s = WebSocketStream(PATH, None, "permessage-deflate" if deflate else "")
    s.feed(False, writes, 1)
    s.feed(True, reads, 2)
    for d in (True, False):
        assert not (s.dead(d) or "").startswith("internal"), s.dead(d)
    s.close()


@settings(max_examples=200)
@given(st.data())
def test_mutated_capture_never_raises(data: st.DataObject) -> None:
    s = _W.stream()
    for is_read, chunk in CAPTURE:
        raw = bytearray(chunk)
        if data.draw(st.booleans()) and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        s.feed(is_read, bytes(raw[:cut]), 1)
        s.feed(is_read, bytes(raw[cut:]), 2)
        for d in (True, False):
            assert not (s.dead(d) or "").startswith("internal"), s.dead(d)
    s.close()
