"""libobs.tls.order: a connection's calls back in kernel time order when a write's record
reaches the ring buffer after the reply another thread read (the write is stamped at entry,
emitted at return)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls.decode import ApiTracker, SslCall
from libobs.tls.order import CallOrder
from tests.unit.test_sslevents import Conn, feed_all
from tests.unit.test_sslevents_h2ws import ws_calls

WAIT = 1000


def late_writes(calls: list[SslCall]) -> list[SslCall]:
    """The ring order when every write's return probe runs after the next read returned."""
    out = list(calls)
    for i in range(len(out) - 1):
        if not out[i].is_read and out[i + 1].is_read:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def ordered(order: CallOrder, arrivals: list[SslCall]) -> list[SslCall]:
    out = [o for c in arrivals for o in order.feed(c)]
    return out + order.flush(None)


def test_a_late_upgrade_request_still_makes_the_connection_websocket():
    calls = ws_calls(Conn(), first_frame_with_101=False)
    arrivals = late_writes(calls)
    assert arrivals[0].is_read and b"101 Switching" in arrivals[0].data  # reply first
    # without reordering the reply has no request and the connection is never WebSocket
    assert feed_all(ApiTracker(), arrivals) == []
    got = ordered(CallOrder(wait_ns=WAIT), arrivals)
    assert got == calls
    facts = feed_all(ApiTracker(), got)
    assert [(f.is_request, f.fields["model"]) for f in facts] == [
        (True, "gpt-5"), (False, "gpt-5-x"), (True, "gpt-5-codex"), (False, "gpt-5-codex-y")]


def test_reads_wait_for_a_write_or_for_the_wait():
    c, order = Conn(), CallOrder(wait_ns=WAIT)
    req, resp = c.call(False, b"GET / HTTP/1.1\r\n\r\n"), c.call(True, b"HTTP/1.1 200 OK\r\n")
    assert order.feed(resp) == [] and order.held == 1
    assert order.flush(resp.h.ts + WAIT - 1) == []  # the write may still be in flight
    assert order.feed(req) == [req]                 # it was: it entered before the read
    assert order.flush(resp.h.ts + WAIT) == [resp]
    # a write that entered after held reads returned lets them go first, at once
    r1, r2, w = c.call(True, b"a"), c.call(True, b"b"), c.call(False, b"next")
    assert order.feed(r1) == order.feed(r2) == []
    assert order.feed(w) == [r1, r2, w] and order.held == 0


def test_connections_are_ordered_apart_and_bounded():
    a, b = Conn(ssl=1), Conn(ssl=2)
    order = CallOrder(wait_ns=WAIT, max_bytes=10)
    ra = a.call(True, b"12345")
    b.ts = a.ts  # same moments on another connection
    rb = b.call(True, b"12345")
    wb = b.call(False, b"x")
    assert order.feed(ra) == order.feed(rb) == []
    assert order.feed(wb) == [rb, wb]   # b's write does not release a's read
    assert order.heartbeat() == {} and order.news() == []  # absent while nothing overflowed
    assert order.feed(a.call(True, b"678901")) and order.overflows == 1  # over max_bytes
    assert order.held == 0
    assert order.heartbeat() == {"order_overflows": 1}  # what the tools' heartbeats carry
    [line] = order.news()  # said once on stderr
    assert "order_overflows" in line and order.news() == []
    order.feed(a.call(True, b"1234567890x"))
    assert order.overflows == 2 and order.news() == []


@st.composite
def traffic(draw):
    """One connection's calls as the kernel stamps and emits them, as (emitted, call) in
    ring order: reads stamped and emitted at return; writes serialized, stamped at entry and
    emitted at return `delay` later (less than the wait); reads may return meanwhile."""
    c, events, t, write_free = Conn(), [], 0, 0
    for is_read, gap, delay in draw(st.lists(st.tuples(
            st.booleans(), st.integers(1, 300), st.integers(0, WAIT - 1)), max_size=30)):
        t += gap
        if not is_read:
            t = max(t, write_free)  # a write enters once the previous one returned
            write_free = t + delay + 1
        c.ts = t - 1000  # the call's ts is t
        events.append((t if is_read else t + delay, c.call(is_read, b"r" if is_read else b"w")))
    return sorted(events, key=lambda e: e[0])


@settings(max_examples=300, deadline=None)
@given(traffic(), st.sets(st.integers(0, 30), max_size=10))
def test_any_interleaving_comes_out_in_time_order(arrivals, polls):
    """Flushed after any poll, with the loop's time from before that poll (every record
    emitted before it has been fed): each call exactly once, in kernel time order."""
    order, out, fed = CallOrder(wait_ns=WAIT), [], 0
    for upto in sorted(p for p in polls if p <= len(arrivals)):
        for _, call in arrivals[fed:upto]:
            out += order.feed(call)
        fed = upto
        # the latest the poll can have started: before the next record was emitted
        polled = arrivals[fed][0] if fed < len(arrivals) else 10**9
        out += order.flush(polled)
    out += [o for _, call in arrivals[fed:] for o in order.feed(call)] + order.flush(None)
    calls = [call for _, call in arrivals]
    assert sorted(map(id, out)) == sorted(map(id, calls))
    assert [c.h.ts for c in out] == sorted(c.h.ts for c in calls)


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(12))), st.lists(st.booleans(), min_size=12, max_size=12))
def test_nothing_lost_in_any_arrival_order(perm, reads):
    c = Conn()
    calls = [c.call(r, b"x") for r in reads]
    order = CallOrder(wait_ns=WAIT)
    out = ordered(order, [calls[i] for i in perm])
    assert sorted(map(id, out)) == sorted(map(id, calls)) and order.held == 0
