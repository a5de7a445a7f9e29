"""The loop every kernel-fed tool shares: poll → decode → enrich → write, with heartbeats,
--duration, and a clean detach on SIGINT/SIGTERM.

Ring-buffer callbacks only append raw bytes to a list (exceptions inside bcc callbacks would be
swallowed by ctypes); all decoding, writing, counting and exiting happens here.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libobs.kernel.program import Program
from libobs.kernel.records import in_time_order
from libobs.terminal import quote
from libobs.tool.heartbeat import Liveness, heartbeat_event, new_collector_id
from libobs.tool.sink import Line, OutputClosed, Sink, quiet_broken_pipe

# How often the kernel's lost-record counters are read: each read is a map lookup per kind
# per CPU (~0.2 ms), too dear for every wake-up of a busy loop (it was obs-exec's largest
# user-space cost per event); a drop is still said within this time, and at exit.
LOST_CHECK_S = 0.25

Event = dict[str, Any] | Line  # a decoder may hand over lines it rendered (obs-ssl)


@dataclass
class LoopConfig:
    tool: str
    fmt: str = "json"
    heartbeat_interval: float = 60.0
    heartbeat_file: Path | None = None
    duration: float | None = None
    poll_ms: int = 100
    features: list[str] = field(default_factory=list)
    max_output_buffer: int = 16 << 20


def err(tool: str, msg: str, limit: int = 2000) -> None:
    """One line on stderr, prefixed with the tool name. Messages quote paths, hostnames and
    deny-file lines: escaped for the terminal (a newline cannot fake a second line) and capped."""
    print(f"{tool}: {quote(msg, limit)}", file=sys.stderr, flush=True)


class Loop:
    def __init__(self, cfg: LoopConfig, programs: list[Program],
                 decode: Callable[[bytes], Iterable[Event]],
                 tick: Callable[[float], Iterable[Event]] | None = None,
                 lost: Callable[[], int] | None = None, attached: list[str] | None = None,
                 unreadable: Callable[[], list[dict[str, str]]] | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None,
                 news: Callable[[], list[str]] | None = None):
        self.cfg = cfg
        self.liveness = Liveness(cfg.heartbeat_file)
        self.programs = programs
        self.decode = decode
        self.tick = tick
        self.extra_lost = lost
        self.queue: list[bytes] = []
        self.spilled: list[bytes] = []  # the spill ring's records, merged in by time
        self.stop = False
        self.decode_errors = 0
        self.collector_id = new_collector_id(cfg.tool)
        self.sink = Sink(cfg.fmt, max_buffer=cfg.max_output_buffer, autoflush=False)
        self._attached = attached
        self.unreadable = unreadable  # the heartbeat's TLS stacks found but not read
        self.extra = extra  # more heartbeat fields of the tool's own
        self.news = news  # lines about them, each said once (at the heartbeat)

    def _on_signal(self, _sig: int, _frame: Any) -> None:
        self.stop = True

    def lost(self) -> int:
        n = sum(p.lost() for p in self.programs)
        return n + (self.extra_lost() if self.extra_lost else 0)

    def _say_lost(self, before: int) -> int:
        """Say on stderr how many more records the kernel dropped since `before`."""
        lost = self.lost()
        if lost > before:
            err(self.cfg.tool, f"kernel dropped {lost - before} event(s) "
                f"(ring buffer full; {lost} in total) — try a larger --ring-size")
        return max(lost, before)

    def attached(self) -> list[str]:
        if self._attached is not None:
            return self._attached
        return [a for p in self.programs for a in p.attached()]

    def program_sources(self) -> tuple[int, int] | None:
        """(from the start-up cache, compiled) of the BPF programs, None without any."""
        if not self.programs:
            return None
        cached = sum(1 for p in self.programs if getattr(p, "from_cache", False))
        return cached, len(self.programs) - cached

    def heartbeat(self) -> dict[str, Any]:
        ev = heartbeat_event(
            collector_id=self.collector_id, tool=self.cfg.tool, attached=self.attached(),
            features=self.cfg.features, interval=self.cfg.heartbeat_interval,
            counts=self.sink.counts, dropped=self.lost(), output_dropped=self.sink.output_dropped,
            unreadable=self.unreadable() if self.unreadable else None,
            programs=self.program_sources(),
            extra=self.extra() if self.extra else None)
        if news := self.liveness.write(ev):
            err(self.cfg.tool, news)
        for line in self.news() if self.news else []:
            err(self.cfg.tool, line)
        return ev

    def _say_write_error(self) -> None:
        """Once: stdout refuses writes (ENOSPC...); the kernel side keeps being drained."""
        news = self.sink.write_error_news()
        if news:
            err(self.cfg.tool, news)

    def _drain(self) -> None:
        # The ring callbacks hold a reference to this very list: empty it in place.
        batch = in_time_order(self.queue.copy(), self.spilled.copy())
        self.queue.clear()
        self.spilled.clear()
        for raw in batch:
            try:
                events = list(self.decode(raw))
            except Exception as e:  # a decoder bug must not kill the collector
                self.decode_errors += 1
                if self.decode_errors <= 5:
                    err(self.cfg.tool, f"dropped an undecodable record: {e!r}")
                continue
            for ev in events:
                self.sink.emit(ev)
        self.sink.flush()

    def run(self) -> int:
        """Returns the exit status. Every program is closed on the way out."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        for p in self.programs:
            p.open_ring("events", self.queue.append)
            p.open_ring("spill", self.spilled.append)
        if self.cfg.heartbeat_file:
            self.heartbeat()  # liveness from the moment every probe is attached
        start = time.monotonic()
        next_hb = start + self.cfg.heartbeat_interval
        next_lost = start
        last_lost = 0
        status = 0
        try:
            while not self.stop:
                # The tick's time: every record committed before it has been decoded when
                # the tick runs (a time taken after the drain would not promise that: a
                # record can arrive while a loaded loop decodes), so what a tick decides
                # by kernel timestamps (held TLS reads, idle exchanges) is never premature.
                polled = time.monotonic()
                for i, p in enumerate(self.programs):
                    p.poll(self.cfg.poll_ms if i == 0 else 0)
                self._drain()
                if self.tick:
                    for ev in self.tick(polled):
                        self.sink.emit(ev)
                now = time.monotonic()
                self.sink.flush()
                self._say_write_error()
                if now >= next_lost:
                    last_lost = self._say_lost(last_lost)
                    next_lost = now + LOST_CHECK_S
                if now >= next_hb:
                    self.sink.emit(self.heartbeat())
                    next_hb = now + self.cfg.heartbeat_interval
                if self.cfg.duration is not None and now - start >= self.cfg.duration:
                    break
            # Take what is already in the ring buffers before detaching.
            for p in self.programs:
                p.consume()
            self._drain()
            if self.tick:
                for ev in self.tick(float("inf")):
                    self.sink.emit(ev)
            self._say_lost(last_lost)
        except OutputClosed:
            quiet_broken_pipe()
        finally:
            for p in self.programs:
                try:
                    p.close()
                except Exception as e:
                    err(self.cfg.tool, f"detach failed: {e}")
                    status = 1
            try:
                self.sink.close()
            except OutputClosed:
                quiet_broken_pipe()
            for s, h in old.items():
                signal.signal(s, h)
        self._say_write_error()
        return 1 if self.sink.write_error else status
