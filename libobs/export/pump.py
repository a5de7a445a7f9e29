"""obs-otel's loop: NDJSON lines in, spans and metric points out through libobs.export.otlp,
a CollectorHeartbeat out every interval and at the end with every count, problems said once.

Streams are injected (a Reader, a write function for stdout and one for stderr), so tests
drive it without a process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from libobs.export.cost import CATALOGUE
from libobs.export.otel import Tracer
from libobs.export.otlp import Export
from libobs.merge.input import Problem, Reader, Reporter, decode
from libobs.tool.heartbeat import heartbeat_event

TOOL = "obs-otel"


class Pump:
    def __init__(self, reader: Reader, tracer: Tracer, export: Export, *, where: str,
                 protocol: str, heartbeat_s: float, emit: Callable[[dict[str, Any]], None],
                 say: Callable[[str], None], collector_id: str) -> None:
        self.reader, self.tracer, self.export = reader, tracer, export
        self.where, self.protocol, self.heartbeat_s = where, protocol, heartbeat_s
        self.emit, self.say, self.collector_id = emit, say, collector_id
        self.report = Reporter(say, prog=TOOL)
        self.events_in = 0
        self.said: set[str] = set()
        self.next_beat = time.monotonic() + heartbeat_s

    def run(self, stop: Callable[[], bool]) -> int:
        """Until input ends or `stop()`; 0 when everything was exported, else 1."""
        while not self.reader.done and not stop():
            batch = self.reader.poll(0.25)
            for problem in batch.problems:
                self.report.report(problem)
            for line in batch.lines:
                ev, bad = decode(line.data)
                if bad is not None:
                    self.report.report(Problem(self.reader.name(line.sid), line.lineno, *bad))
                if ev is not None:
                    self.feed(ev)
            self.tell()
            if time.monotonic() >= self.next_beat:
                self.beat()
        self.export.spans(self.tracer.close())
        self.export.close()
        self.report.close()
        counts = self.beat()
        self.tell(final=True)
        lost = counts["spans_failed"] + counts["spans_pending"] + counts["metric_points_failed"]
        return 1 if lost or self.reader.failed else 0

    def feed(self, ev: dict[str, Any]) -> None:
        self.events_in += 1
        spans, points = self.tracer.feed(ev)
        self.export.spans(spans)
        self.export.points(points)

    def counts(self) -> dict[str, int]:
        c = self.export.counts()
        out = {"events_in": self.events_in, **{f"input_{k}": v for k, v in
                                                self.report.counts.items()},
               "spans": self.tracer.counts["spans"],
               "spans_evicted": self.tracer.counts["evicted"],
               "requests_priced": self.tracer.counts["requests_priced"],
               "requests_unpriced": self.tracer.counts["requests_unpriced"],
               "events_without_session": self.tracer.counts["no_session"]}
        for key in ("spans_exported", "spans_failed", "spans_pending", "metric_points_recorded",
                    "metric_points_exported", "metric_points_failed"):
            out[key] = c.get(key, 0)
        return out

    def beat(self) -> dict[str, int]:
        self.next_beat = time.monotonic() + self.heartbeat_s
        counts = self.counts()
        self.emit(heartbeat_event(
            collector_id=self.collector_id, tool=TOOL, attached=[],
            features=[f"otlp:{self.protocol}", f"cost:{CATALOGUE}"], interval=self.heartbeat_s,
            counts=counts, dropped=counts["spans_failed"] + counts["metric_points_failed"],
            output_dropped=0))
        return counts

    def tell(self, final: bool = False) -> None:
        """Each kind of loss said once on stderr (the heartbeat keeps counting)."""
        c = self.counts()
        first = self.export.tally.first_failure
        if (c["spans_failed"] or c["metric_points_failed"]) and first:
            self._once("failed", f"could not export to {self.where} ({first}); every span "
                       "and metric point not exported is counted in the heartbeat "
                       "(spans_failed, metric_points_failed)")
        if c["spans_evicted"]:
            self._once("evicted", "too many open spans: the oldest were ended early (marked "
                       "obs.evicted) and counted in the heartbeat (spans_evicted)")
        if final and c["spans_pending"]:
            self._once("pending", f"{c['spans_pending']} spans were dropped (export queue "
                       "full, or not flushed in time); counted in the heartbeat (spans_pending)")
        if c["events_without_session"]:
            self._once("nosession", "events without identity.session are in no trace (only "
                       "their metrics are exported); counted as events_without_session — "
                       "pipe obs-merge's output to obs-otel")

    def _once(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.say(f"{TOOL}: {text}\n")
