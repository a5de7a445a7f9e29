"""The loop of a fanotify guard: one thread answers, another does everything else.

The kernel blocks every opener until the guard answers, and the guard's own opens are events
too: a thread that answers and then opens a file on a marked filesystem waits for itself
forever, and so does every other opener on that filesystem. So the work is split:

- The main thread (the *answerer*) polls the group fd, reads events in batches of up to a few
  thousand per read(), decides and answers. It opens nothing but /proc files (procfs cannot be
  marked), imports nothing after start-up, and writes nothing but responses: Denied events and
  messages go through an in-memory ``Outbox``, so a stalled stdout or stderr reader cannot
  stall an opener.
- The *housekeeper* thread does all the rest: deny-file re-reads, marks, NDJSON output,
  heartbeats, the liveness file. When it opens a file on a marked filesystem, the answerer
  answers that event (the guard's own pid is allowed at once).
- A watchdog in the housekeeper ends the process if the answerer has not come round for
  ``stall_secs``: exiting closes the group, and the kernel lets every pending open through.

Shutdown (SIGINT, SIGTERM, --duration, a closed stdout): every pending event is answered with
allow, the group is closed (from then on the kernel allows every open), then output is flushed.
The heartbeat file is first written once the housekeeper's first tick has placed the marks.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from libobs.guard import fanotify
from libobs.tool.heartbeat import heartbeat_event, new_collector_id, write_liveness
from libobs.tool.loop import LoopConfig, err
from libobs.tool.sink import OutputClosed, Sink, quiet_broken_pipe

MAX_READS_PER_TURN = 64  # then check the stop flag and the clock again


class Group:
    """The fanotify group fd: read, answered and closed by the answerer, marked by the
    housekeeper. The lock orders marks against close, so a mark never lands on a reused fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._lock = threading.Lock()

    def mark(self, flags: int, mask: int, path: str) -> None:
        with self._lock:
            if not self.closed:
                fanotify.mark(self.fd, flags, mask, path=path)

    def ignore_children(self, dir_fd: int, mask: int) -> None:
        with self._lock:
            if not self.closed:
                fanotify.ignore_children(self.fd, dir_fd, mask)

    def flush_inode_marks(self) -> None:
        with self._lock:
            if not self.closed:
                fanotify.flush_inode_marks(self.fd)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)


class Outbox:
    """Events and messages from the answerer to the housekeeper; put() never blocks. Bounded:
    if the housekeeper stops taking them (stuck output), new events are counted, not kept."""

    def __init__(self, max_items: int = 100_000) -> None:
        self._q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.max_items = max_items
        self.dropped = 0

    def event(self, ev: dict[str, Any]) -> None:
        if self._q.qsize() >= self.max_items:
            self.dropped += 1
            return
        self._q.put(("event", ev))

    def error(self, msg: str) -> None:
        self._q.put(("error", msg))

    def wake(self) -> None:
        self._q.put(("wake", None))

    def get(self, timeout: float) -> tuple[str, Any] | None:
        try:
            return self._q.get(timeout=max(0.0, timeout)) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return None


class Watchdog:
    """Tells when the answerer has not come round for ``limit`` seconds. Only time the
    housekeeper itself was awake counts: after a gap in its own wake-ups (the process was
    stopped or frozen, or a tick was slow) it starts counting afresh."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._turns = -1
        self._since = self._last = float("-inf")

    def stuck(self, turns: int, now: float) -> bool:
        if turns != self._turns or now - self._last > self.limit / 2:
            self._turns, self._since = turns, now
        self._last = now
        return now - self._since > self.limit


class GuardLoop:
    """Runs a guard: ``answer(events, group fd)`` on the main thread for every batch of events
    of any of ``groups``, ``tick`` on the housekeeper every ``tick_secs`` (its first run must
    place the marks: the heartbeat file is written right after it), heartbeats (with the
    tool's own ``stats`` fields) and output on the housekeeper too."""

    def __init__(self, cfg: LoopConfig, groups: list[Group], outbox: Outbox,
                 answer: Callable[[list[fanotify.Event], int], None],
                 tick: Callable[[float], None], dropped: Callable[[], int], attached: list[str],
                 *, tick_secs: float = 0.25, stall_secs: float = 5.0,
                 stats: Callable[[], dict[str, int]] | None = None) -> None:
        self.cfg = cfg
        self.groups = groups
        self.stats = stats
        self.outbox = outbox
        self.answer = answer
        self.tick = tick
        self.dropped = dropped
        self.attached = attached
        self.tick_secs = tick_secs
        self.stall_secs = stall_secs
        self.sink = Sink(cfg.fmt, max_buffer=cfg.max_output_buffer)
        self.collector_id = new_collector_id(cfg.tool)
        self.stop = False
        self.turns = 0  # the answerer's progress, watched by the housekeeper
        self._closing = False
        self._done = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._status = 0

    # --- the answerer (main thread) ---

    def _on_signal(self, _sig: int, _frame: Any) -> None:
        self.stop = True

    def run(self) -> int:
        """Serve until stopped; returns the exit status."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # A thread switch every 1 ms (not 5): the answerer waits for the GIL with openers blocked.
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        keeper = threading.Thread(target=self._housekeep, name="housekeeper", daemon=True)
        keeper.start()
        try:
            self._serve()
        except OSError as e:  # the group fd itself failed: nothing can be answered any more
            self._status = 1
            self.outbox.error(f"fanotify: {e}; exiting (pending opens are let through)")
        finally:
            self._closing = True
            self._allow_pending_and_close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            sys.setswitchinterval(old_switch)
            self._done.set()
            self.outbox.wake()
            keeper.join()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        return self._status

    def _serve(self) -> None:
        poller = select.poll()
        for group in self.groups:
            poller.register(group.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        start = time.monotonic()
        while not self.stop:
            self.turns += 1
            for fd, _ in poller.poll(self.cfg.poll_ms):
                if fd == self._wake_r:
                    self._drain_wake()
                else:
                    self._answer_pending(fd)
            if self.cfg.duration is not None and time.monotonic() - start >= self.cfg.duration:
                break

    def _answer_pending(self, fd: int) -> None:
        for _ in range(MAX_READS_PER_TURN):
            events = fanotify.read_events(fd)
            if not events:
                return
            self.answer(events, fd)
            self.turns += 1

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _allow_pending_and_close(self) -> None:
        for group in self.groups:
            if group.closed:
                continue
            try:  # a bounded drain: under a steady stream, closing lets the rest through
                for _ in range(MAX_READS_PER_TURN):
                    events = fanotify.read_events(group.fd)
                    if not events:
                        break
                    for ev in events:
                        with contextlib.suppress(OSError):
                            fanotify.answer_and_close(group.fd, ev, True)
            except OSError:
                pass  # closing lets them through anyway
            group.close()

    # --- the housekeeper ---

    def heartbeat(self, emit: bool = True) -> None:
        ev = heartbeat_event(
            collector_id=self.collector_id, tool=self.cfg.tool, attached=self.attached,
            features=self.cfg.features, interval=self.cfg.heartbeat_interval,
            counts=self.sink.counts, dropped=self.dropped(),
            output_dropped=self.sink.output_dropped + self.outbox.dropped,
            extra=self.stats() if self.stats else None)
        if self.cfg.heartbeat_file:
            try:
                write_liveness(self.cfg.heartbeat_file, ev)
            except OSError as e:
                err(self.cfg.tool, f"cannot write heartbeat file: {e}")
        if emit:
            self.sink.emit(ev)

    def _housekeep(self) -> None:
        try:
            self._run_ticks(self._safe_tick)
        except OutputClosed:
            quiet_broken_pipe()
            self._stop_from_here()
        except BaseException as e:  # never leave the answerer guarding blind and silent
            err(self.cfg.tool, f"housekeeping failed: {e!r}; stopping")
            self._status = 1
            self._stop_from_here()
        finally:
            try:
                self.sink.close()
            except OutputClosed:
                quiet_broken_pipe()
            news = self.sink.write_error_news()
            if news:
                err(self.cfg.tool, news)
            if self.sink.write_error:
                self._status = 1

    def _stop_from_here(self) -> None:
        self.stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _safe_tick(self, now: float) -> None:
        try:
            self.tick(now)
        except Exception as e:  # a failed reload keeps the marks and rules in place
            err(self.cfg.tool, f"reload failed: {e!r}")

    def _run_ticks(self, tick: Callable[[float], None]) -> None:
        tick(time.monotonic())  # the marks are in place: now the tool is ready
        self.heartbeat(emit=False)
        now = time.monotonic()
        next_tick, next_hb = now + self.tick_secs, now + self.cfg.heartbeat_interval
        watchdog = Watchdog(self.stall_secs)
        while True:
            item = self.outbox.get(min(next_tick, next_hb) - time.monotonic())
            while item is not None:
                kind, value = item
                if kind == "event":
                    self.sink.emit(value)
                elif kind == "error":
                    err(self.cfg.tool, value)
                item = self.outbox.get(0)
            self.sink.flush()
            news = self.sink.write_error_news()  # stdout refuses writes: say so once, exit 1
            if news:
                err(self.cfg.tool, news)
                self._status = 1
            if self._done.is_set():
                return
            now = time.monotonic()
            if watchdog.stuck(self.turns, now) and not self._closing:
                err(self.cfg.tool, f"the answering loop is stuck ({self.stall_secs:g} s); "
                    "exiting so that the kernel lets every pending open through")
                os._exit(1)
            if now >= next_tick:
                tick(now)
                next_tick = now + self.tick_secs
            if now >= next_hb:
                self.heartbeat()
                next_hb = now + self.cfg.heartbeat_interval
