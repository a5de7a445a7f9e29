"""HTTP/1.1 reassembly speed: libobs.tls.http1 (hand-written) against the same job done on
httptools (llhttp, C) and on h11 (pure Python), on the same captures cut as obs-ssl sees them.

Not part of the test run. Run:
    .venv/bin/python tests/bench/bench_http1_parsers.py [--seconds S]

The library versions are minimal drivers — head, content-length, chunked, the same body sink
(`_Body`: caps, gzip, SSE) — without what the hand-written parser also does (HEAD/CONNECT
responses, interim responses, exact wire lengths, gap filler, dead-direction reasons), so they
are an upper bound on what a library could gain. After the timings, `conformance` replays cases
tests/unit/test_parse_http.py pins through httptools with every leniency that could help, and
prints the ones it cannot express. Each capture is replayed as its SSL calls:

    sse        1 request, an OpenAI chat stream of 300 events, one chunk (and read) each
    sse-gzip   the same, gzip'ed event by event with sync flushes (as provider_server does)
    keepalive  200 JSON request/response pairs on one connection, one call per message
    big        one 8 MiB content-length response in 16 KiB reads
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import h11  # noqa: E402
import httptools  # noqa: E402

from libobs.tls.http1 import HttpStream  # noqa: E402
from libobs.tls.message import Body as _Body  # noqa: E402
from libobs.tls.message import HttpMessage
from tests.bench.harness import save, table  # noqa: E402

Calls = list[tuple[bool, bytes]]  # (is_read, data) per SSL call


def _request(body: bytes, path: bytes = b"/v1/chat/completions") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (path, len(body), body))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_capture(gz: bool, events: int = 300) -> Calls:
    req = json.dumps({"model": "gpt-4o", "stream": True, "messages": []}).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + (b"Content-Encoding: gzip\r\n" if gz else b"") + b"\r\n")
    calls: Calls = [(False, _request(req)), (True, head)]
    z = zlib.compressobj(wbits=31)
    for i in range(events):
        data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
                "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
        ev = b"data: " + json.dumps(data).encode() + b"\n\n"
        calls.append((True, _chunk(z.compress(ev) + z.flush(zlib.Z_SYNC_FLUSH) if gz else ev)))
    if gz:
        calls.append((True, _chunk(z.flush())))
    calls.append((True, b"0\r\n\r\n"))
    return calls


def keepalive_capture(n: int = 200) -> Calls:
    calls: Calls = []
    for i in range(n):
        req = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 500}]})
        resp = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": i}}).encode()
        calls.append((False, _request(req.encode())))
        calls.append((True, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(resp), resp)))
    return calls


def big_capture(size: int = 8 << 20) -> Calls:
    body = (b"0123456789abcdef" * (size // 16))[:size]
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, body)
    return [(False, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")] + [
        (True, wire[i:i + 16384]) for i in range(0, len(wire), 16384)]


# ---- drivers: calls in, finished messages out ------------------------------------------------

class Hand:
    def __init__(self) -> None:
        self.s = HttpStream()

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        return self.s.feed(is_read, data, ts)


class _LlhttpSide:
    """httptools callbacks for one direction, into the same body sink."""

    def __init__(self, is_request: bool) -> None:
        self.is_request = is_request
        self.out: list[HttpMessage] = []
        self.msg: HttpMessage | None = None
        self.sink: _Body | None = None
        self.ts = 0
        cls = httptools.HttpRequestParser if is_request else httptools.HttpResponseParser
        self.parser = cls(self)

    def on_message_begin(self) -> None:
        self.msg = HttpMessage(is_request=self.is_request, ts_first=self.ts)

    def on_url(self, url: bytes) -> None:
        assert self.msg is not None
        self.msg.path = (self.msg.path or "") + url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.msg is not None
        self.msg.headers[name.decode("ascii").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.msg is not None
        if self.is_request:
            self.msg.method = self.parser.get_method().decode()
        else:
            self.msg.status = self.parser.get_status_code()
        self.sink = _Body(self.msg, 8 << 20)

    def on_body(self, body: bytes) -> None:
        assert self.sink is not None
        self.sink.write(body, self.ts)

    def on_message_complete(self) -> None:
        assert self.msg is not None and self.sink is not None
        self.sink.finish(self.ts)
        self.msg.ts_last = self.ts
        self.out.append(self.msg)
        self.msg = self.sink = None


class Llhttp:
    def __init__(self) -> None:
        self.sides = (_LlhttpSide(True), _LlhttpSide(False))

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        side = self.sides[is_read]
        side.ts = ts
        side.parser.feed_data(data)
        out, side.out = side.out, []
        return out


class H11:
    """Two one-role h11 connections: a server parsing the requests (answered with a dummy
    response so the next cycle can start) and a client parsing the responses (told each request
    so it knows HEAD from GET)."""

    def __init__(self) -> None:
        self.server = h11.Connection(h11.SERVER)
        self.client = h11.Connection(h11.CLIENT)
        self.pending: deque[h11.Request] = deque()
        self.cur: list[tuple[HttpMessage, _Body] | None] = [None, None]

    def feed(self, is_read: bool, data: bytes, ts: int) -> list[HttpMessage]:
        conn = self.client if is_read else self.server
        conn.receive_data(data)
        out: list[HttpMessage] = []
        while True:
            if is_read and self.client.our_state is h11.IDLE and self.pending:
                self.client.send(self.pending.popleft())
                self.client.send(h11.EndOfMessage())
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return out
            if isinstance(ev, h11.Request | h11.Response):
                msg = HttpMessage(is_request=not is_read, ts_first=ts,
                                  headers={k.decode(): v.decode("latin-1")
                                           for k, v in ev.headers})
                if isinstance(ev, h11.Request):
                    msg.method, msg.path = ev.method.decode(), ev.target.decode("latin-1")
                    self.pending.append(h11.Request(method=ev.method, target=ev.target,
                                                    headers=[("Host", "h")]))
                else:
                    msg.status = ev.status_code
                self.cur[is_read] = (msg, _Body(msg, 8 << 20))
            elif isinstance(ev, h11.Data):
                cur = self.cur[is_read]
                assert cur is not None
                cur[1].write(bytes(ev.data), ts)
            elif isinstance(ev, h11.EndOfMessage):
                cur = self.cur[is_read]
                assert cur is not None
                cur[1].finish(ts)
                cur[0].ts_last = ts
                out.append(cur[0])
                self.cur[is_read] = None
                if is_read:
                    self.client.start_next_cycle()
                else:
                    self.server.send(h11.Response(status_code=204, headers=[]))
                    self.server.send(h11.EndOfMessage())
                    self.server.start_next_cycle()


DRIVERS: dict[str, Callable[[], Hand | Llhttp | H11]] = {
    "hand-written": Hand, "httptools": Llhttp, "h11": H11}


def replay(make: Callable[[], Hand | Llhttp | H11], calls: Calls) -> list[HttpMessage]:
    d = make()
    return [m for i, (is_read, data) in enumerate(calls) for m in d.feed(is_read, data, i)]


def signature(msgs: list[HttpMessage]) -> list[tuple]:
    return [(m.is_request, m.status, m.method, m.body_len, len(m.sse)) for m in msgs]


CASES = {  # behaviour pinned by tests/unit/test_parse_http.py: (request calls, response bytes)
    "HEAD response has no body": (
        [b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"),
    "bare-LF chunked framing": (
        [b"GET / HTTP/1.1\r\n\r\n"],
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nA \n0123456789\n0\n\n"),
    "wire_len with chunk extensions": (
        [b"GET / HTTP/1.1\r\n\r\n"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=\"v\"\r\nabc\r\n0\r\n\r\n"),
}


def _view(msgs: list[HttpMessage], lengths: bool) -> list[object]:
    if lengths:
        return [m.wire_len for m in msgs]
    return [(m.status, m.body) for m in msgs if not m.is_request]


def conformance() -> list[str]:
    """The CASES where httptools (all helpful leniencies on) differs from the hand parser."""
    differs = []
    for name, (requests, response) in CASES.items():
        hand, lib = Hand(), Llhttp()
        for side in lib.sides:
            side.parser.set_dangerous_leniencies(
                lenient_headers=True, lenient_optional_cr_before_lf=True,
                lenient_spaces_after_chunk_size=True, lenient_optional_crlf_after_chunk=True)
        want = [m for r in requests for m in hand.feed(False, r, 1)] + hand.feed(True, response, 2)
        try:
            got = [m for r in requests for m in lib.feed(False, r, 1)] + lib.feed(True, response, 2)
        except Exception as exc:
            differs.append(f"{name}: httptools raises {exc!r}")
            continue
        lengths = name.startswith("wire_len")  # httptools reports no byte offsets to count with
        if _view(want, lengths) != _view(got, lengths):
            differs.append(f"{name}: httptools gives {_view(got, lengths)}, "
                           f"the hand parser {_view(want, lengths)}")
    return differs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per capture and driver")
    a = ap.parse_args()
    captures = {"sse": sse_capture(False), "sse-gzip": sse_capture(True),
                "keepalive": keepalive_capture(), "big": big_capture()}
    rows, result = [], {}
    for name, calls in captures.items():
        expected = signature(replay(Hand, calls))
        nbytes = sum(len(d) for _, d in calls)
        base = None
        for driver, make in DRIVERS.items():
            assert signature(replay(make, calls)) == expected, (driver, name)  # same job
            runs, start = 0, time.process_time()
            while time.process_time() - start < a.seconds or runs < 3:
                replay(make, calls)
                runs += 1
            per = (time.process_time() - start) / runs
            base = base or per
            us_call = per / len(calls) * 1e6
            result[f"{name}/{driver}"] = {"us_per_call": round(us_call, 2),
                                          "mb_per_s": round(nbytes / per / 1e6, 1),
                                          "vs_hand": round(per / base, 2)}
            rows.append([name, driver, len(calls), f"{us_call:.2f}", f"{nbytes / per / 1e6:.1f}",
                         f"{per / base:.2f}x"])
    print(table(rows, ["capture", "parser", "calls", "µs/call (CPU)", "MB/s", "time vs hand"]))
    differs = conformance()
    print("\nhttptools cannot express (the hand parser's pinned behaviour):")
    print("\n".join(f"  - {d}" for d in differs) or "  nothing")
    save("http1_parsers", {**result, "httptools_differs": differs})


if __name__ == "__main__":
    main()
