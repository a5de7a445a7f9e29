"""obs-merge's run: sources → Reader → Merge (+ Sessions) → Sink, the summary, and how a run ends.

How it ends (the exit status):
- 0: every source ended, or SIGINT/SIGTERM/--duration stopped it, or the reader of stdout went
  away (EPIPE: quietly, as `| head` expects);
- 1: a source could not be opened or read, a --run command failed, or stdout refused a write
  (ENOSPC, EIO...). obs-merge is lossless: it cannot drop lines and carry on, so it says why
  once on stderr, stops, and lets a supervisor restart it.
Whatever happens, --run children are stopped and reaped, and nothing escapes as a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libobs.events import NS, hostname
from libobs.export.views import Views
from libobs.merge import children
from libobs.merge.input import Reader, Reporter
from libobs.merge.merger import Merge
from libobs.merge.sessions import Selector, Sessions, read_proc
from libobs.merge.summary import Summary, write
from libobs.tool.sink import OutputClosed, OutputFailed, Sink, dumps, quiet_broken_pipe

POLL = 0.25
GC_GEN0 = 100_000  # container allocations between collections (CPython's default: 700)


@dataclass
class Config:
    specs: list[str]
    commands: list[str] = field(default_factory=list)  # --run
    window: float = 2.0
    follow: bool = False
    from_end: bool = False
    selectors: list[Selector] = field(default_factory=list)
    grace: float = 5.0
    fmt: str = "json"
    summary: bool = False
    summary_only: bool = False
    no_proc: bool = False
    duration: float | None = None
    trace: Path | None = None    # --trace: the run as a Chrome/Perfetto timeline
    live: bool = False           # --live: with --summary, the table refreshed in place


@dataclass
class Control:
    """Set from signal handlers, read by the loop."""

    stop: bool = False
    usr1: bool = False


def say_on_stderr(text: str) -> None:
    """Diagnostics go to fd 2 and nowhere else (never through a None sys.stderr to stdout);
    a stderr that cannot be written is not worth dying for."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def run(cfg: Config, ctl: Control, *, out_fd: int = 1, stdin_fd: int | None = 0,
        say: Callable[[str], None] = say_on_stderr, prog: str = "obs-merge",
        stop_grace: float = children.STOP_GRACE) -> int:
    started, run_errors = children.start(cfg.commands)
    kids = [c for c, _ in started]
    for e in run_errors:
        say(f"{prog}: {e}\n")
    reader = Reader(cfg.specs, follow=cfg.follow, from_end=cfg.from_end, stdin_fd=stdin_fd,
                    pipes=[(c.name, fd) for c, fd in started])
    try:
        with few_collections():
            status = _loop(cfg, ctl, reader, kids, out_fd, say, prog, stop_grace)
    finally:
        reader.close()
        for problem in children.reap(kids, stop_grace):
            say(f"{prog}: {problem}\n")
            run_errors.append(problem)
    return 1 if status or run_errors or reader.failed else 0


@contextlib.contextmanager
def few_collections(gen0: int = GC_GEN0) -> Iterator[None]:
    """Events are acyclic (JSON values, freed by reference counting the moment they leave),
    but each is a handful of containers, so CPython's cycle collector ran every few hundred
    events and re-scanned everything held in the reorder window and the process tree: a
    quarter of obs-merge's time. Start-up objects are frozen out of its scans and it runs
    less often; cycles (from libraries) are still collected."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(gen0, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _loop(cfg: Config, ctl: Control, reader: Reader, kids: list[children.Child], out_fd: int,
          say: Callable[[str], None], prog: str, stop_grace: float) -> int:
    window_ns = int(cfg.window * NS)
    sink = Sink(cfg.fmt, fd=out_fd, lossless=True)  # a slow reader slows obs-merge down
    sessions = Sessions(cfg.selectors, window_ns=window_ns, grace_ns=int(cfg.grace * NS),
                        proc=None if cfg.no_proc else read_proc, local_host=hostname())
    merge = Merge(sessions, range(len(reader.sources)), window_ns=window_ns,
                  now=time.monotonic_ns())
    report = Reporter(say, prog=prog)
    summary = cfg.summary or cfg.summary_only

    def stream() -> dict[str, Any]:
        return {**merge.stats(), **report.counts, "output_dropped": sink.output_dropped,
                "sources_failed": len(reader.failed)}
    views = Views(Summary(), None if cfg.summary_only else sink, stream, trace=cfg.trace,
                  live=cfg.live and summary, say=say, fd=out_fd)
    piped = [s.sid for s in reader.sources if s.pipe is not None]
    start = time.monotonic()
    stopping: float | None = None

    def show_summary() -> None:
        write(sink, views.summary.table(stream()).encode() if cfg.fmt == "human" else
              dumps(views.summary.to_json(stream())))

    try:
        while True:
            now = time.monotonic()
            if stopping is None and (ctl.stop or (cfg.duration is not None
                                                  and now - start >= cfg.duration)):
                stopping = now  # children are asked to stop; what they still write is read
                children.ask_to_stop(kids)
            if stopping is not None and (all(reader.sources[sid].ended for sid in piped)
                                         or now - stopping >= stop_grace):
                break
            batch = reader.poll(POLL, skip=merge.ahead(time.monotonic_ns()))
            out, problems = merge.feed(batch, reader.name, time.monotonic_ns())
            for problem in problems:  # startup problems included: polled at least once
                report.report(problem)
            views.emit(out)
            if ctl.usr1 and summary and views.live is None:  # the live table is the summary
                ctl.usr1 = False
                show_summary()
            if reader.done:
                break
        views.emit(merge.drain())
        report.close()
        if views.close() and summary:
            show_summary()
        sink.close()
    except OutputClosed:
        quiet_broken_pipe()
        return 0
    except OutputFailed as e:
        report.close()
        say(f"{prog}: cannot write output: {e}; stopping\n")
        return 1
    return 0
