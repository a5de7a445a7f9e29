"""Merging obs-* streams into one: ts order within a reorder window, duplicates dropped,
cross-stream joins, session attribution.

Why a window (default 2 s): every tool stamps events with the kernel's time but delivers them
late by its own polling and batching (ring-buffer poll intervals, obs-ssl reassembling a
response, pipe buffers), so streams arrive skewed. An event waits in a heap until every
source still delivering has passed it by more than the window; then nothing earlier can come.
Two seconds covers the tools' poll intervals with a wide margin and still feels live.

Per source, not global: the watermark is the minimum over the open sources of the newest ts
each has delivered, minus the window. So files of any size replay in exact order at any read
speed, and a source far ahead of the slowest (more than a window) is paused by the caller
(`ahead()`) so the heap stays small. A source that has delivered nothing for a window of wall
time is idle and not waited for; when every source is idle everything held is released, so a
quiet live stream still flows within about one window. The guarantee: if every source
delivers each event before it delivers one more than `window` newer, the output is in ts
order. An event that arrives after later ones have left (`late`) is passed on at once and
counted rather than dropped.

Duplicates (the same event through overlapping sources) are dropped by a bounded set of recent
keys: the canonical serialisation of the event without `identity` (tools differ in what they
know about who acted, not in what happened).

Joins only the merged view can make:
- LlmCall ← LlmApi of the same exchange: same pid, the LlmApi response within the call's span.
  obs-llm stamps an LlmCall with its request's start, so the span is [ts, ts + latency],
  widened by `slack`; the unused response closest to the span's end wins, and copies model,
  prompt, completion and cache token counts where the LlmCall has none. The call gets
  `api_ts`, the response's ts, also when it had every count already (obs-llm --api): consumers
  count a request's tokens once (libobs.export.genai.Once). (obs-llm can only emit a
  call after its response ended, so a call longer than the window arrives `late`: it is
  passed on at once, out of order; its response, stamped at the end, is already there.)
- Egress ← Dns: `hostname` is the query whose answer (same host, same netns when known) was the
  Egress peer, from the latest such Dns at or before the Egress; a null provider is then
  classified from it.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import operator
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from libobs.events import KINDS, NS, duration_ns, event_kind
from libobs.merge.input import Batch, Problem, decode_fields
from libobs.merge.sessions import Proc, Sessions, cached_classify, event_pid

DEFAULT_WINDOW_NS = 2 * NS
_SEQ = 1 << 64  # arrival numbers stay below this: see Reorder.heap
DEDUP_KEYS = 1 << 16
JOIN_SLACK_NS = NS // 2
LLM_HORIZON_NS = 600 * NS  # the longest LLM exchange a join is kept for
DNS_HORIZON_NS = 3600 * NS  # a DNS answer older than this is not trusted for a hostname
DNS_KEYS = 1 << 16
API_PER_PID = 64

_KNOWN = frozenset(KINDS)
_JOINER_OBSERVES = frozenset({"LlmApi", "Dns", "Egress"})  # what Joiner.observe looks at
_JOINER_ENRICHES = frozenset({"LlmCall", "Egress"})  # and Joiner.enrich
_ENVELOPE = ("ts", "host", "provider", "process", "event")
_ENVELOPE_KEYS = frozenset(_ENVELOPE) | {"identity"}
_envelope = operator.itemgetter(*_ENVELOPE)  # a tuple: orjson writes it as the same list

Out = tuple[dict[str, Any], Proc | None]  # an event leaving the merge and its agent root


def fields_of(ev: dict[str, Any], kind: str) -> dict[str, Any]:
    fields = ev["event"][kind]
    return fields if isinstance(fields, dict) else {}


class Dedup:
    """Remembers the last `capacity` event keys."""

    def __init__(self, capacity: int = DEDUP_KEYS) -> None:
        self.order: deque[int] = deque()
        self.keys: set[int] = set()
        self.capacity = capacity

    def seen(self, ev: dict[str, Any]) -> bool:
        # The common envelope as a list is the same canonical form, and cheaper to build.
        body: Any = (_envelope(ev) if ev.keys() == _ENVELOPE_KEYS
                     else {k: v for k, v in ev.items() if k != "identity"})
        try:
            key = hash(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        except TypeError:  # not serialisable canonically (huge int...): never a duplicate
            return False
        if key in self.keys:
            return True
        self.keys.add(key)
        self.order.append(key)
        if len(self.order) > self.capacity:
            self.keys.discard(self.order.popleft())
        return False


class Reorder:
    """A heap released by per-source watermarks; see the module docstring. It holds events
    (push) or anything with a ts (hold: the merge keeps an event's kind and fields with it)."""

    def __init__(self, window_ns: int, sources: Iterable[int], idle_ns: int | None = None,
                 now: int = 0) -> None:
        self.window_ns = window_ns
        self.idle_ns = window_ns if idle_ns is None else idle_ns
        # The heap holds keys ts * _SEQ + seq, so one int comparison orders by (ts, arrival):
        # (ts, seq, item) tuples took two, each through a tuple, and popping them was a
        # tenth of obs-merge's time. What is held sits in `items` under its key.
        self.heap: list[int] = []
        self.items: dict[int, Any] = {}
        self.seq = 0
        self.hi: dict[int, int | None] = {sid: None for sid in sources}
        self.heard: dict[int, int] = dict.fromkeys(self.hi, now)
        self.released_ts: int | None = None

    def close(self, sid: int) -> None:
        self.hi.pop(sid, None)
        self.heard.pop(sid, None)

    def push(self, ev: dict[str, Any], sid: int, now: int) -> bool:
        """Hold `ev`; False when it is late (older than what already left) and was not held."""
        return self.hold(ev["ts"], ev, sid, now)

    def hold(self, ts: int, item: Any, sid: int, now: int) -> bool:
        """push() of an `item` stamped `ts`: release() and drain() give items back."""
        if sid in self.hi:
            hi = self.hi[sid]
            self.hi[sid] = ts if hi is None or ts > hi else hi
            self.heard[sid] = now
        if self.released_ts is not None and ts < self.released_ts:
            return False
        self.seq += 1
        key = ts * _SEQ + self.seq
        self.items[key] = item
        heapq.heappush(self.heap, key)
        return True

    def _floor(self, now: int) -> int | None:
        """The smallest newest-ts among sources still delivering; None when all are quiet."""
        floor: int | None = None
        quiet = True
        for sid, hi in self.hi.items():
            if now - self.heard[sid] >= self.idle_ns:
                continue
            quiet = False
            if hi is None:
                return -(1 << 63)  # a fresh source has said nothing yet: wait for it
            if floor is None or hi < floor:
                floor = hi
        return None if quiet else floor

    def release(self, now: int) -> list[Any]:
        floor = self._floor(now)
        if floor is None:
            return self.drain()
        mark = (floor - self.window_ns) * _SEQ  # key < mark exactly when ts < floor - window
        heap, items, pop = self.heap, self.items, heapq.heappop
        out = []
        key = None
        while heap and heap[0] < mark:
            key = pop(heap)
            out.append(items.pop(key))
        if key is not None:
            self.released_ts = key // _SEQ
        return out

    def drain(self) -> list[Any]:
        if not self.heap:
            return []
        keys = sorted(self.heap)
        self.heap.clear()
        self.released_ts = keys[-1] // _SEQ
        items = self.items
        return [items.pop(key) for key in keys]

    def ahead(self, now: int) -> set[int]:
        """Sources more than a window ahead of the slowest: reading them can wait."""
        floor = self._floor(now)
        if floor is None:
            return set()
        paused = {sid for sid, hi in self.hi.items() if hi is not None and hi > floor + self.window_ns}
        for sid in paused:
            self.heard[sid] = now  # paused by us, not quiet: keep waiting for it
        return paused


@dataclass(eq=False)
class _Api:
    ts: int
    fields: dict[str, Any]
    used: bool = False


class Joiner:
    def __init__(self, slack_ns: int = JOIN_SLACK_NS,
                 classify_host: Callable[[str | None], str | None] = cached_classify) -> None:
        self.slack_ns = slack_ns
        self.classify = classify_host
        self.api: dict[int, deque[_Api]] = {}
        self.dns: OrderedDict[tuple[Any, Any, str], deque[tuple[int, str]]] = OrderedDict()
        self.joined = Counter[str]()
        self._next_sweep = 0

    def observe(self, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> None:
        if kind == "LlmApi" and fields.get("is_request") is False:
            pid = event_pid(ev, fields)
            if pid is not None and any(fields.get(k) is not None for k in _API_COPY):
                self.api.setdefault(pid, deque(maxlen=API_PER_PID)).append(_Api(ev["ts"], fields))
        elif kind == "Dns":
            self._index_dns(ev, fields)
        elif kind == "Egress":
            self._egress(ev, fields)

    def enrich(self, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> None:
        if kind == "LlmCall":
            self._llmcall(ev, fields)
        elif kind == "Egress":
            self._egress(ev, fields)  # a Dns that arrived after the Egress still counts

    def _llmcall(self, ev: dict[str, Any], fields: dict[str, Any]) -> None:
        # Joined even when the call has its tokens already (obs-llm --api): `api_ts` says
        # which LlmApi response is the same request, so it is counted once.
        if fields.get("api_ts") is not None:
            return
        pid = event_pid(ev, fields)
        candidates = self.api.get(pid) if pid is not None else None
        if not candidates:
            return
        ts: int = ev["ts"]
        try:
            latency = duration_ns(fields["latency"])
        except (KeyError, TypeError, ValueError):
            latency = 0
        end = ts + latency
        lo, hi = ts - self.slack_ns, end + self.slack_ns
        best = min((a for a in candidates if not a.used and lo <= a.ts <= hi),
                   key=lambda a: abs(a.ts - end), default=None)
        if best is None:
            return
        best.used = True
        fields["api_ts"] = best.ts
        copied = False
        for key in _API_COPY:
            if fields.get(key) is None and best.fields.get(key) is not None:
                fields[key] = best.fields[key]
                copied = True
        if copied and "usage_source" in fields and fields["usage_source"] is None:
            fields["usage_source"] = "wire"  # obs-llm --api had none; obs-ssl's wire did
        self.joined["LlmCall"] += 1

    def _index_dns(self, ev: dict[str, Any], fields: dict[str, Any]) -> None:
        query, answers = fields.get("query"), fields.get("answers")
        if not isinstance(query, str) or not query or not isinstance(answers, list):
            return
        name = query.lower().removesuffix(".")
        where = (ev.get("host"), _netns(ev, fields))
        for answer in answers:
            ip = _ip(answer) if isinstance(answer, str) else None
            if ip is None:
                continue  # CNAME targets are in the answers too
            key = (*where, ip)
            seen = self.dns.get(key)
            if seen is None:
                seen = self.dns[key] = deque(maxlen=4)
                if len(self.dns) > DNS_KEYS:
                    self.dns.popitem(last=False)
            else:
                self.dns.move_to_end(key)
            seen.append((ev["ts"], name))

    def _egress(self, ev: dict[str, Any], fields: dict[str, Any]) -> None:
        if fields.get("hostname") is not None:
            return
        peer = fields.get("peer")
        ip = _ip(peer) if isinstance(peer, str) else None
        seen = self.dns.get((ev.get("host"), _netns(ev, fields), ip)) if ip else None
        if not seen:
            return
        ts: int = ev["ts"]
        names = [(t, n) for t, n in seen if ts - DNS_HORIZON_NS <= t <= ts]
        if not names:
            return
        fields["hostname"] = max(names)[1]
        if ev.get("provider") is None:
            ev["provider"] = self.classify(fields["hostname"])
        self.joined["Egress"] += 1

    def evict(self, released_ts: int) -> None:
        if released_ts < self._next_sweep:
            return
        self._next_sweep = released_ts + 60 * NS
        horizon = released_ts - LLM_HORIZON_NS
        for pid in [p for p, q in self.api.items() if q[-1].ts < horizon]:
            del self.api[pid]


_API_COPY = ("model", "prompt_tokens", "completion_tokens", "cache_read_tokens",
             "cache_creation_tokens")


def _netns(ev: dict[str, Any], fields: dict[str, Any]) -> Any:
    process = ev.get("process")
    netns = fields.get("netns", process.get("netns") if isinstance(process, dict) else None)
    return netns if isinstance(netns, (int, str)) else None


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> str | None:
    """Canonical text of an IP address (v4-mapped v6 as v4; %zone dropped), or None."""
    try:
        addr = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Merge:
    """The pipeline: dedup → observe (joins, tree) → reorder → enrich → attribute."""

    def __init__(self, sessions: Sessions, sources: Iterable[int], *,
                 window_ns: int = DEFAULT_WINDOW_NS, now: int = 0,
                 joiner: Joiner | None = None, dedup: Dedup | None = None) -> None:
        self.sessions = sessions
        self.reorder = Reorder(window_ns, sources, now=now)
        self.joiner = joiner or Joiner()
        self.dedup = dedup or Dedup()
        self.counts = Counter[str]()

    def push(self, ev: dict[str, Any], sid: int, now: int) -> list[Out]:
        """Take one decoded event (it must have an int ts and an event kind)."""
        kind = event_kind(ev)
        return self._push(ev, kind, fields_of(ev, kind) if kind in _KNOWN else {}, sid, now)

    def _push(self, ev: dict[str, Any], kind: str | None, fields: dict[str, Any], sid: int,
              now: int) -> list[Out]:
        """push() with the kind and fields decoding found: they travel with the event through
        the reorder heap, so no later step looks them up again."""
        if self.dedup.seen(ev):
            self.counts["duplicates"] += 1
            return []
        self.counts["events_in"] += 1
        if kind in _KNOWN:
            if kind in _JOINER_OBSERVES:  # a set lookup, not a call, for most events
                self.joiner.observe(ev, kind, fields)
            self.sessions.observe(ev, kind, fields)
        if self.reorder.hold(ev["ts"], (ev, kind, fields), sid, now):
            return []
        self.counts["late"] += 1
        return self._done([self._finish(ev, kind, fields)])

    def feed(self, batch: Batch, name: Callable[[int], str], now: int
             ) -> tuple[list[Out], list[Problem]]:
        """One poll's worth of input: decode, push, close ended sources, release."""
        out: list[Out] = []
        problems = list(batch.problems)
        push = self._push
        for sid, lineno, data in batch.lines:
            ev, kind, fields, bad = decode_fields(data)
            if bad is not None:
                problems.append(Problem(name(sid), lineno, *bad))
            if ev is not None:
                assert fields is not None
                late = push(ev, kind, fields, sid, now)
                if late:
                    out += late
        for sid in batch.ended:
            self.reorder.close(sid)
        return out + self.release(now), problems

    def stats(self) -> dict[str, int]:
        joined = {f"joined_{k.lower()}": v for k, v in sorted(self.joiner.joined.items())}
        return {**self.counts, **joined, "processes_tracked": len(self.sessions)}

    def close(self, sid: int) -> None:
        self.reorder.close(sid)

    def ahead(self, now: int) -> set[int]:
        return self.reorder.ahead(now)

    def release(self, now: int) -> list[Out]:
        finish = self._finish
        return self._done([finish(*held) for held in self.reorder.release(now)])

    def drain(self) -> list[Out]:
        finish = self._finish
        return self._done([finish(*held) for held in self.reorder.drain()])

    @property
    def held(self) -> int:
        return len(self.reorder.heap)

    def _finish(self, ev: dict[str, Any], kind: str | None, fields: dict[str, Any]) -> Out:
        if kind not in _KNOWN:
            return ev, None
        if kind in _JOINER_ENRICHES:
            self.joiner.enrich(ev, kind, fields)
        return ev, self.sessions.attribute(ev, kind, fields)

    def _done(self, out: list[Out]) -> list[Out]:
        released = self.reorder.released_ts
        if released is not None and out:
            self.sessions.evict(released)
            self.joiner.evict(released)
        self.counts["events_out"] += len(out)
        return out
