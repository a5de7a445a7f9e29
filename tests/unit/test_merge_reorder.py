"""The reorder window and duplicate drop (libobs.merge.merger.Reorder, Dedup, Merge.push)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.events import envelope
from libobs.merge.merger import Dedup, Merge, Reorder
from libobs.merge.sessions import Sessions

NS = 1_000_000_000
WINDOW = 2 * NS
FOREVER = 1 << 62  # a clock that never makes a source idle


def ev(ts: int, pid: int = 1, n: int = 0) -> dict[str, Any]:
    return envelope("FileAccess", {"pid": pid, "path": f"/f{n}", "write": True, "flags": "w"},
                    ts=ts, host="h")


def test_holds_until_every_source_has_passed_by_more_than_the_window() -> None:
    r = Reorder(WINDOW, [0, 1], idle_ns=FOREVER)
    assert r.push(ev(10 * NS), 0, 0)
    assert r.release(0) == []  # source 1 has said nothing yet
    r.push(ev(5 * NS), 1, 0)
    r.push(ev(7 * NS), 1, 0)
    assert r.release(0) == []  # source 1 might still send something at 5 s
    r.push(ev(7 * NS + 1), 1, 0)
    assert [e["ts"] for e in r.release(0)] == [5 * NS]
    r.push(ev(12 * NS + 1), 1, 0)
    assert [e["ts"] for e in r.release(0)] == [7 * NS, 7 * NS + 1]  # 10 s waits for source 0
    r.push(ev(12 * NS + 1), 0, 0)
    assert [e["ts"] for e in r.release(0)] == [10 * NS]
    r.close(0)
    r.close(1)
    assert [e["ts"] for e in r.release(0)] == [12 * NS + 1, 12 * NS + 1]


def test_equal_to_the_window_is_not_yet_safe() -> None:
    r = Reorder(WINDOW, [0], idle_ns=FOREVER)
    r.push(ev(1 * NS), 0, 0)
    r.push(ev(3 * NS), 0, 0)
    assert r.release(0) == []  # 1 s is exactly window behind 3 s: an event at 1 s may still come
    r.push(ev(3 * NS + 1), 0, 0)
    assert [e["ts"] for e in r.release(0)] == [1 * NS]


def test_a_quiet_source_stops_being_waited_for_after_the_window() -> None:
    r = Reorder(WINDOW, [0, 1], now=0)
    r.push(ev(10 * NS), 0, 0)
    r.push(ev(11 * NS), 1, 0)
    assert r.release(NS) == []
    # Nothing from anyone for a window of wall time: everything held goes out.
    assert [e["ts"] for e in r.release(WINDOW)] == [10 * NS, 11 * NS]


def test_a_fresh_silent_source_delays_release_by_at_most_the_window() -> None:
    r = Reorder(WINDOW, [0, 1], now=0)
    for i in range(10):
        r.push(ev(i * NS), 0, NS)
    assert r.release(NS) == []  # source 1 might still send something old
    out = r.release(WINDOW + 1)  # now source 1 is idle; source 0 (heard at 1 s) is not
    assert [e["ts"] for e in out] == [i * NS for i in range(7)]


def test_late_event_is_passed_on_not_dropped() -> None:
    m = Merge(Sessions(), [0], window_ns=WINDOW)
    m.push(ev(10 * NS), 0, 0)
    m.push(ev(20 * NS), 0, 0)
    assert [e["ts"] for e, _ in m.release(0)] == [10 * NS]
    late = m.push(ev(5 * NS, n=1), 0, 0)
    assert [e["ts"] for e, _ in late] == [5 * NS]
    assert m.counts["late"] == 1


def test_ahead_pauses_a_source_far_in_front_and_only_that_one() -> None:
    r = Reorder(WINDOW, [0, 1, 2], now=0)
    r.push(ev(100 * NS), 0, 0)
    r.push(ev(1 * NS), 1, 0)
    r.push(ev(2 * NS), 2, 0)
    assert r.ahead(0) == {0}
    r.push(ev(99 * NS), 1, 0)
    r.push(ev(99 * NS), 2, 0)
    assert r.ahead(0) == set()


def test_a_paused_source_is_not_mistaken_for_a_quiet_one() -> None:
    # Source 0 is paused (far ahead) much longer than the idle time while source 1 catches up
    # slowly, then jumps past it; source 0's next event, within a window of its last, must
    # still be in time: a paused source keeps holding the watermark back.
    r = Reorder(WINDOW, [0, 1], now=0)
    r.push(ev(100 * NS), 0, 0)
    now = 0
    for t in range(1, 98):
        now = t * NS // 10
        r.push(ev(t * NS), 1, now)
        assert r.ahead(now) == {0}
        r.release(now)
    r.push(ev(150 * NS), 1, now)
    assert [e["ts"] for e in r.release(now)][-1] < 98 * NS
    assert r.push(ev(99 * NS), 0, now)  # held, not late


def test_dedup_drops_the_same_event_whatever_its_identity() -> None:
    d = Dedup()
    a = ev(5)
    b = copy.deepcopy(a)
    b["identity"] = {"agent": "x", "task": "1", "session": "1@2"}
    assert not d.seen(a)
    assert d.seen(b)
    c = copy.deepcopy(a)
    c["event"]["FileAccess"]["path"] = "/other"
    assert not d.seen(c)


def test_dedup_is_bounded() -> None:
    d = Dedup(capacity=100)
    for i in range(1000):
        d.seen(ev(i))
    assert len(d.keys) == 100 and len(d.order) == 100
    assert d.seen(ev(999)) and not d.seen(ev(0))  # the oldest were forgotten


def test_dedup_key_ignores_field_order() -> None:
    d = Dedup()
    a = {"ts": 1, "host": "h", "event": {"Dns": {"pid": 1, "query": "a", "qtype": "A"}}}
    b = {"event": {"Dns": {"qtype": "A", "query": "a", "pid": 1}}, "host": "h", "ts": 1}
    assert not d.seen(a) and d.seen(b)


def test_duplicates_from_overlapping_sources_are_dropped_in_merge() -> None:
    m = Merge(Sessions(), [0, 1], window_ns=WINDOW)
    for sid in (0, 1):
        for i in range(5):
            m.push(ev(i * NS, n=i), sid, 0)
    out = m.drain()
    assert [e["ts"] for e, _ in out] == [i * NS for i in range(5)]
    assert m.counts["duplicates"] == 5


# -- random interleavings and delays ------------------------------------------------------

@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Events of several sources, each source late by up to a window, interleaved at random.

    Each source delivers its events ordered by ts + delay (delay in [0, window]), so an event
    always arrives before its source delivers one more than a window newer: the guarantee the
    reorder window makes ordering promises under.
    """
    n_sources = draw(st.integers(1, 4))
    per_source: list[list[dict[str, Any]]] = []
    n = 0
    for sid in range(n_sources):
        stamps = draw(st.lists(st.integers(0, 30 * NS), max_size=40))
        delays = draw(st.lists(st.integers(0, WINDOW), min_size=len(stamps),
                               max_size=len(stamps)))
        evs = []
        for ts, delay in zip(stamps, delays, strict=True):
            evs.append((ts + delay, ev(ts, pid=sid + 1, n=n)))
            n += 1
        per_source.append([e for _, e in sorted(evs, key=lambda p: p[0])])
    order = draw(st.permutations([sid for sid, evs in enumerate(per_source) for _ in evs]))
    cursors = [0] * n_sources
    arrivals = []
    for sid in order:
        arrivals.append((sid, per_source[sid][cursors[sid]]))
        cursors[sid] += 1
    return arrivals, n_sources


@settings(max_examples=300, deadline=None)
@given(streams())
def test_random_interleavings_come_out_in_order_and_complete(
        case: tuple[list[tuple[int, dict[str, Any]]], int]) -> None:
    arrivals, n_sources = case
    m = Merge(Sessions(), range(n_sources), window_ns=WINDOW, now=0)
    remaining = [sum(1 for s, _ in arrivals if s == sid) for sid in range(n_sources)]
    for sid in range(n_sources):
        if not remaining[sid]:
            m.close(sid)
    out = []
    for sid, e in arrivals:
        out += m.push(e, sid, 0)
        remaining[sid] -= 1
        if not remaining[sid]:
            m.close(sid)
        out += m.release(0)
    out += m.drain()
    stamps = [e["ts"] for e, _ in out]
    assert stamps == sorted(stamps)
    assert m.counts["late"] == 0
    assert sorted(map(_key, (e for e, _ in out))) == sorted(map(_key, (e for _, e in arrivals)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20 * NS), st.integers(0, WINDOW)), max_size=60))
def test_live_single_source_with_wall_clock_releases_in_order(
        items: list[tuple[int, int]]) -> None:
    """One live stream, wall clock = ts + delay: idle releases never break the order."""
    arrivals = sorted((ts + d, i, ts) for i, (ts, d) in enumerate(items))
    m = Merge(Sessions(), [0], window_ns=WINDOW, now=0)
    out = []
    for now, i, ts in arrivals:
        out += m.release(now)
        out += m.push(ev(ts, n=i), 0, now)
    out += m.release(FOREVER)
    stamps = [e["ts"] for e, _ in out]
    assert len(stamps) == len(items)
    assert stamps == sorted(stamps)


def _key(e: dict[str, Any]) -> tuple[int, str]:
    return e["ts"], e["event"]["FileAccess"]["path"]
