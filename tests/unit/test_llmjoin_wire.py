"""obs-llm --api end to end without root: bpf/net.bpf.c records of one TLS connection and
bpf/ssl.bpf.c records of its plaintext through JoinedDecoder — one LlmCall per HTTP/2 stream
timed by the plaintext, and a Nagle server's late session tickets not taken for the response.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.events import NS, Clock, duration_ns
from libobs.identity import Identities
from libobs.kernel.records import HDR, Hdr
from libobs.net.apijoin import JoinedDecoder
from libobs.net.decode import K_DATA, K_HELLO, K_SEND, K_STATE, TcpRec, decode
from libobs.net.llmcalls import Exchange, LlmCallDecoder, SocketView
from libobs.providers import load_rules
from libobs.tls.attach import SslApi
from tests.unit import test_tls_http2 as h2wire
from tests.unit.test_netevents import (
    APP_HEAD,
    FIN_HEAD,
    HELLO_HEAD,
    PID,
    connect_rec,
    payload_rec,
    tcp_rec,
)
from tests.unit.test_parse_tls import real_hello
from tests.unit.test_sslevents import READ_EX, WRITE_EX, anthropic_request, json_response
from tests.unit.test_sslevents import record as ssl_record

MS = 1_000_000
T0 = 1000 * MS
SK = 0x30


def handshake(sk: int, t0: int, host: str) -> list[tuple[int, bytes]]:
    """connect, ClientHello, the server's flight 1 ms later, the client's Finished (seq 1597)."""
    return [(t0, connect_rec(t0, sk, "127.0.0.1", 443)),
            (t0 + 1, payload_rec(K_HELLO, t0 + 1, sk, real_hello(host), tcp=True,
                                 addr="127.0.0.1", port=443)),
            (t0 + 2, tcp_rec(K_SEND, t0 + 2, sk, 517, seq=1517, head=HELLO_HEAD)),
            (t0 + MS, tcp_rec(K_DATA, t0 + MS, sk, 900, seq=5000, ack=1517)),
            (t0 + 2 * MS, tcp_rec(K_SEND, t0 + 2 * MS, sk, 80, seq=1597, head=FIN_HEAD))]


class Plain:
    """One connection's plaintext as ssl.bpf.c records: offsets per direction."""

    def __init__(self, ssl: int = 7) -> None:
        self.ssl, self.off = ssl, {True: 0, False: 0}

    def __call__(self, is_read: bool, data: bytes, ts: int) -> tuple[int, bytes]:
        rec = ssl_record(data, ts=ts, fn=READ_EX if is_read else WRITE_EX, off=self.off[is_read],
                         pid=PID, ssl=self.ssl)
        self.off[is_read] += len(data)
        return ts, rec

    @staticmethod
    def retime(raw: bytes, ts: int) -> tuple[int, bytes]:
        """The same record, stamped ts."""
        h = bytearray(raw)
        HDR.pack_into(h, 0, *(ts if name == "ts" else v
                              for name, v in zip(Hdr._fields, HDR.unpack_from(raw), strict=True)))
        return ts, bytes(h)


def run(records: list[tuple[int, bytes]], order: str = "time") -> list[dict[str, Any]]:
    """Records through obs-llm --api's decoder. order "time": as they happened; "ssl-late":
    every plaintext record after every socket record (the ssl ring drained last)."""
    dec = JoinedDecoder(LlmCallDecoder(Clock(0), "h", load_rules(), lambda sk: None,
                                       identities=Identities()), SslApi(Clock(0)))
    if order == "time":
        raws = [raw for _, raw in sorted(records, key=lambda r: r[0])]
    else:
        def is_ssl(raw: bytes) -> bool:
            return raw[:4] == ssl_record(b"", ts=0, fn=0)[:4]
        raws = sorted((raw for _, raw in records), key=is_ssl)
    out = [ev for raw in raws for ev in dec(raw)] + dec.tick(float("inf"))
    return [ev["event"]["LlmCall"] | {"ts": ev["ts"]} for ev in out if "LlmCall" in ev["event"]]


def ms(d: dict[str, int]) -> float:
    return duration_ns(d) / MS


def h2_connection(delays: dict[int, int], sends: dict[int, int] | None = None, t0: int = T0
                  ) -> tuple[list[tuple[int, bytes]], dict[int, int]]:
    """Streams sent `sends[sid]` ms after the first (default: 1 ms apart) on one connection,
    each answered `delays[sid]` ms after its request, frames interleaved on the wire; returns
    the records and each stream's send time."""
    sends = sends or {sid: i for i, sid in enumerate(delays)}
    recs = handshake(SK, t0, h2wire.AUTH)
    plain, w = Plain(), h2wire.Wire()
    t = t0 + 3 * MS
    seq, ack_end = 1597, 5900
    for is_read, data in w.chunks:  # preface and SETTINGS each way
        recs.append(plain(is_read, data, t))
    w.chunks.clear()
    sent = {}
    for sid in sorted(delays, key=lambda s: sends[s]):
        w.request(sid, h2wire.chat(f"model-{sid}"))
        ts = sent[sid] = t + sends[sid] * MS
        for is_read, data in w.chunks:
            recs.append(plain(is_read, data, ts))
            seq += len(data) + 22  # TLS record overhead on the socket
            recs.append((ts + 1, tcp_rec(K_SEND, ts + 1, SK, len(data) + 22, seq=seq,
                                         head=APP_HEAD, ts_start=ts)))
        w.chunks.clear()
    for sid, delay in sorted(delays.items(), key=lambda kv: sent[kv[0]] + kv[1] * MS):
        w.respond(sid, h2wire.sse(f"served-{sid}", 10 + sid, sid), h2wire.SSE_HEADERS, pieces=3)
        for j, (is_read, data) in enumerate(w.chunks):
            ts = sent[sid] + delay * MS + j * MS
            # what the server had of the request stream when it wrote: all sent before ts
            acked = max(r[1] for r in sent_seqs(recs) if r[0] < ts)
            recs.append((ts, tcp_rec(K_DATA, ts, SK, len(data) + 22, seq=ack_end, ack=acked)))
            ack_end += len(data) + 22
            recs.append(plain(is_read, data, ts + 50_000))  # read 50 µs after it arrived
        w.chunks.clear()
    end = max(sent[s] + d * MS for s, d in delays.items()) + 100 * MS
    recs.append((end, tcp_rec(K_STATE, end, SK, 4, seq=1)))
    return recs, sent


def sent_seqs(recs: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """(time, seq after it) of every socket send among recs."""
    out = []
    for ts, raw in recs:
        r = decode(raw)
        if isinstance(r, TcpRec) and r.kind == K_SEND:
            out.append((ts, r.seq))
    return out


@pytest.mark.parametrize("order", ["time", "ssl-late"])
def test_one_llmcall_per_http2_stream_timed_by_the_plaintext(order):
    delays = {1: 300, 3: 100, 5: 200}
    recs, sent = h2_connection(delays)
    calls = sorted(run(recs, order), key=lambda c: c["stream"])
    assert [c["stream"] for c in calls] == [1, 3, 5]
    for c in calls:
        sid = c["stream"]
        assert c["timing"] == "tls" and c["model"] == f"served-{sid}"
        assert c["prompt_tokens"] == 10 + sid and c["completion_tokens"] == sid
        assert c["ts"] == sent[sid]  # Clock(0): wall == monotonic
        # the HEADERS frame read 50 µs after it arrived, amid the stream's burst of frames:
        # the read's own time; the last DATA read after the burst: its arrival
        assert ms(c["ttft"]) == pytest.approx(delays[sid] + 0.05, abs=1e-6)
        assert ms(c["latency"]) == pytest.approx(delays[sid] + 2, abs=1e-6)
        assert 0 < c["req_bytes"] < 400 and 0 < c["resp_bytes"] < 1000
        assert (c["sni"], c["exchange"]) == (h2wire.AUTH, 1)


@pytest.mark.parametrize("order", ["time", "ssl-late"])
def test_http2_streams_sent_at_the_same_instant_are_each_reported(order):
    """httpx writes several requests at once: their facts share a request_ts, and each stream
    is still its own call (a claim keyed by pid and request_ts alone lost all but one)."""
    recs, sent = h2_connection({1: 300, 3: 100, 5: 200}, sends={1: 0, 3: 0, 5: 0})
    calls = run(recs, order)
    assert sorted(c["stream"] for c in calls) == [1, 3, 5]
    assert {c["model"] for c in calls} == {"served-1", "served-3", "served-5"}


def test_http2_streams_across_exchanges_and_exchanges_without_a_stream():
    """Stream 3 goes out after stream 1's response: the socket starts a second exchange
    there; a later control burst and the server's answer make a third exchange that holds no
    stream. Each stream is reported once, no exchange beside them."""
    recs, sent = h2_connection({1: 40, 3: 100}, sends={1: 0, 3: 60})
    t = sent[3] + 150 * MS
    recs += [(t, tcp_rec(K_SEND, t, SK, 60, seq=max(s for _, s in sent_seqs(recs)) + 60,
                         head=APP_HEAD, ts_start=t)),
             (t + MS, tcp_rec(K_DATA, t + MS, SK, 60, seq=100_000, ack=1 << 20))]
    recs.sort(key=lambda r: r[0])
    recs = [r for r in recs if decode_kind(r[1]) != K_STATE] + [
        (t + 2 * MS, tcp_rec(K_STATE, t + 2 * MS, SK, 4, seq=1))]
    calls = sorted(run(recs), key=lambda c: c["stream"])
    assert [(c["stream"], c["exchange"], c["timing"]) for c in calls] == [(1, 1, "tls"),
                                                                         (3, 2, "tls")]
    assert ms(calls[1]["ttft"]) == pytest.approx(100.05, abs=1e-6)


def decode_kind(raw: bytes) -> int | None:
    r = decode(raw)
    return r.kind if isinstance(r, TcpRec) else None


def test_http2_busy_client_reading_late_is_timed_by_the_arrivals():
    recs, sent = h2_connection({1: 100})
    late = []
    for ts, raw in recs:  # every read 30 ms late: the client was busy
        if raw[:4] == ssl_record(b"", ts=0, fn=0)[:4] and ts > sent[1] + 50 * MS:
            _, raw = Plain.retime(raw, ts + 30 * MS)
            ts += 30 * MS
        late.append((ts, raw))
    [c] = run(late)
    # the read's bytes had all arrived by the end of the burst (2 ms): no later
    assert ms(c["ttft"]) == pytest.approx(102, abs=1e-6)
    assert ms(c["latency"]) == pytest.approx(102, abs=1e-6)


def http1_connection(ticket_at_ms: float | None, read_lag_ms: float) -> list[tuple[int, bytes]]:
    """One HTTP/1.1 call: request at T0+3 ms, answered at T0+250 ms; the server's session
    tickets (if any) arrive at ticket_at_ms, acking the request (a Nagle server)."""
    recs = handshake(SK, T0, "api.anthropic.com")
    plain = Plain()
    t_req = T0 + 3 * MS
    req = anthropic_request(False)
    recs.append(plain(False, req, t_req))
    recs.append((t_req + 1, tcp_rec(K_SEND, t_req + 1, SK, len(req) + 22, seq=1597 + len(req)
                                    + 22, head=APP_HEAD, ts_start=t_req)))
    acked = 1597 + len(req) + 22
    seq = 5900
    if ticket_at_ms is not None:
        ts = T0 + int(ticket_at_ms * MS)
        recs.append((ts, tcp_rec(K_DATA, ts, SK, 500, seq=seq, ack=acked)))
        seq += 500
    resp = json_response({"model": "claude-x", "usage": {"input_tokens": 5,
                                                         "output_tokens": 6}}, cut=40)
    for j, piece in enumerate(resp):
        ts = T0 + 250 * MS + j * MS
        recs.append((ts, tcp_rec(K_DATA, ts, SK, len(piece) + 22, seq=seq, ack=acked)))
        seq += len(piece) + 22
        recs.append(plain(True, piece, ts + int(read_lag_ms * MS)))
    recs.append((T0 + NS, tcp_rec(K_STATE, T0 + NS, SK, 4, seq=1)))
    return recs


@pytest.mark.parametrize("read_lag_ms", [0.1, 30])
@pytest.mark.parametrize("order", ["time", "ssl-late"])
def test_nagle_tickets_are_not_the_first_response_byte_when_plaintext_is_read(order,
                                                                                read_lag_ms):
    [c] = run(http1_connection(ticket_at_ms=43, read_lag_ms=read_lag_ms), order)
    assert c["timing"] == "tls" and c["stream"] is None and c["model"] == "claude-x"
    # the response's two segments came at 250 and 251 ms: read amid them, the read's time;
    # read after them, the last arrival (never earlier than the truth, 247 ms)
    assert ms(c["ttft"]) == pytest.approx(247 + min(read_lag_ms, 1), abs=1e-3)


@pytest.mark.parametrize("read_lag_ms", [0.1, 4, 30])
@pytest.mark.parametrize("ticket_at_ms", [None, 1.5])
def test_http1_keeps_socket_timing_where_the_plaintext_agrees(ticket_at_ms, read_lag_ms):
    """No tickets, or tickets in the post-handshake window: the socket's numbers stand, also
    when the application reads its response late (it had all arrived by then)."""
    [c] = run(http1_connection(ticket_at_ms=ticket_at_ms, read_lag_ms=read_lag_ms))
    assert c["timing"] == "socket" and c["model"] == "claude-x"
    assert ms(c["ttft"]) == pytest.approx(247 - 0.000001, abs=1e-3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=400), st.integers(0, 2 * 10**9),
       st.booleans())
def test_a_read_is_never_placed_before_an_arrival_that_preceded_it(arrivals, t, whole):
    ex = Exchange(1, 0, 0, 100, 0)
    for a in sorted(arrivals):
        ex.arrived(a)
    view = SocketView((1, 0), 0, 0, min(arrivals), max(arrivals),
                      tuple((a, b) for a, b in ex.bursts), ex.bursts_cut, max(arrivals))
    got = view.arrived_by(t, whole)
    assert got <= t or not any(a <= t for a in arrivals)
    if any(a <= t for a in arrivals):
        # the bytes a read at t returned may be the last to arrive before it
        assert got >= max(a for a in arrivals if a <= t)


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False))
def test_every_interleaving_of_the_two_rings_gives_one_call_per_stream(rnd):
    """The socket and plaintext records come through two ring buffers: any merge of the two
    (each in its own order) gives each stream once."""
    recs, _ = h2_connection({1: 300, 3: 100, 5: 200})
    recs.sort(key=lambda r: r[0])
    ssl_tag = ssl_record(b"", ts=0, fn=0)[:4]
    rings = [[r for r in recs if r[1][:4] == ssl_tag], [r for r in recs if r[1][:4] != ssl_tag]]
    merged = []
    while any(rings):
        ring = rnd.choice([r for r in rings if r])
        merged.append(ring.pop(0))
    calls = run([(i, raw) for i, (_, raw) in enumerate(merged)])
    assert sorted(c["stream"] for c in calls) == [1, 3, 5]
