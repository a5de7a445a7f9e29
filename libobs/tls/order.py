"""Each TLS connection's calls in kernel time order, before HTTP reassembly.

A read is stamped, and its record emitted, when SSL_read returns. A write is stamped when
SSL_write is entered (its bytes are handed over then) but emitted when it returns. A client
that reads in a thread of its own can therefore put the reply in the ring buffer before the
request: the writer enters SSL_write, the server answers, the reader returns with the answer,
and only then does the preempted writer's return probe run (seen under load with the
`websockets` client: the 101 reply 0.4 ms ahead of its GET, so the connection never became
WebSocket). Only a write can arrive late, and only one that was in flight when the read
returned.

`CallOrder` holds each connection's reads, sorted by kernel time, until nothing earlier can
still arrive:
- a write lets go of every read before it: a connection's writes are serialized (no TLS
  library allows two at once on one connection), so any write that entered before those reads
  returned before this one entered, and its record was emitted first;
- otherwise a read goes once `wait_ns` has passed since it returned, measured against a
  moment up to which every committed record has been decoded (the run loop's time taken
  before it polled): a write still in flight by then is not waited for.
Writes are never held. Memory is bounded: beyond `max_bytes` held, everything is let go in
order (`overflows` counts it; order may then be lost, bytes never are).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from libobs.events import NS

if TYPE_CHECKING:
    from libobs.tls.decode import SslCall

WRITE_WAIT_NS = NS // 4  # how long a read waits for a write that entered before it returned
MAX_HELD_BYTES = 32 << 20


class CallOrder:
    def __init__(self, wait_ns: int = WRITE_WAIT_NS, max_bytes: int = MAX_HELD_BYTES):
        self.wait_ns = wait_ns
        self.max_bytes = max_bytes
        self._held: dict[tuple[int, int], list[SslCall]] = {}  # per connection: reads, by ts
        self._bytes = 0
        self.overflows = 0
        self._said = False

    def feed(self, call: SslCall) -> list[SslCall]:
        """The calls, in order, that this one lets go (itself included when it is a write)."""
        key = (call.h.pid, call.ssl)
        held = self._held.get(key)
        if not call.is_read:
            if held is None:
                return [call]
            i = bisect.bisect_right(held, call.h.ts, key=_ts)
            out = held[:i]
            del held[:i]
            if not held:
                del self._held[key]
            self._bytes -= sum(len(c.data) for c in out)
            out.append(call)
            return out
        if held is None:
            self._held[key] = [call]
        elif held[-1].h.ts <= call.h.ts:  # reads arrive in order: an append
            held.append(call)
        else:
            bisect.insort_right(held, call, key=_ts)
        self._bytes += len(call.data)
        if self._bytes > self.max_bytes:
            self.overflows += 1
            return self.flush(None)
        return []

    def heartbeat(self) -> dict[str, int]:
        """The heartbeat's `order_overflows`, once it moved."""
        return {"order_overflows": self.overflows} if self.overflows else {}

    def news(self) -> list[str]:
        """A line for stderr at the first overflow (the heartbeat goes on counting them)."""
        if not self.overflows or self._said:
            return []
        self._said = True
        return [f"TLS reads held for time order passed {self.max_bytes >> 20} MiB and were let "
                "go early: a reply may be decoded before a write that entered first (counted "
                "in the heartbeat's order_overflows)"]

    def flush(self, now_ns: int | None) -> list[SslCall]:
        """Reads that returned `wait_ns` before now_ns (every held read with None), oldest
        first."""
        out: list[SslCall] = []
        for key in list(self._held):
            held = self._held[key]
            i = len(held) if now_ns is None else bisect.bisect_right(
                held, now_ns - self.wait_ns, key=_ts)
            if i:
                out += held[:i]
                del held[:i]
                if not held:
                    del self._held[key]
        self._bytes -= sum(len(c.data) for c in out)
        out.sort(key=_ts)
        return out

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())


def _ts(c: SslCall) -> int:
    return c.h.ts
