#!/usr/bin/env python3
"""obs-merge: obs-* NDJSON streams → one stream in ts order, with agent sessions. Wiring only:
libobs.merge.input reads, libobs.merge.merger orders (the 2 s default window: see there), dedups and joins,
libobs.merge.sessions keeps the process tree, libobs.merge.summary aggregates."""

from __future__ import annotations

import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from libobs.events import NS, hostname
from libobs.export.views import Views, writable
from libobs.merge.input import Reader, Reporter
from libobs.merge.merger import Merge
from libobs.merge.sessions import Sessions, parse_selector, read_proc
from libobs.merge.summary import Summary, write
from libobs.tool import options as cli
from libobs.tool.sink import OutputClosed, Sink, default_format, dumps, quiet_broken_pipe

TOOL = "obs-merge"
EPILOG = """Examples:

\b
  obs-exec | obs-merge - <(obs-net) <(obs-llm)
      merge live streams into one
  obs-merge --summary exec.ndjson net.ndjson llm.ndjson
      replay recorded streams, then the per-session summary
  obs-merge --summary-only --format json *.ndjson | jq .summary.sessions
      only the summary, as JSON
  obs-merge -F --from-end /var/log/obs/obs-exec.ndjson /var/log/obs/obs-net.ndjson
      follow growing logs (new events only)
  obs-merge --agent comm:claude --agent cgroup:agents.slice -
      count these as agents even before their first LLM call
  kill -USR1 $(pidof -x obs-merge)
      with --summary: write the summary so far
  obs-merge --trace run.json *.ndjson > /dev/null
      a timeline to open in ui.perfetto.dev
  obs-merge --summary --live - <(obs-net) <(obs-llm --api)
      on a terminal: the per-agent table (calls, tokens, cost, TTFT) refreshed in place

Exit status: 0 done (also when the reader of stdout went away), 1 a source could not be
opened or read (the others were still merged), 2 bad usage.
"""


class Fmt(StrEnum):
    json = "json"
    human = "human"


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)
Opt = typer.Option


@app.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}, help="Merge obs-* NDJSON streams (files, FIFOs, `<(cmd)`, - for "
             "stdin; default -) into one stream ordered by ts within a reorder window (events "
             "of different tools are delayed by each tool's own polling and batching), setting "
             "identity.session/agent from the process tree of agent processes.")
def main(
    sources: Annotated[list[str] | None, typer.Argument(metavar="FILE|FIFO|-")] = None,
    window: Annotated[float, Opt("--window", "-w", envvar="OBS_MERGE_WINDOW", min=0.0, max=3600.0,
                                 help="Reorder window (s): how late a tool may deliver an event "
                                 "and still have it put in order; 2 s covers their polling.")] = 2.0,
    follow: Annotated[bool, Opt("--follow", "-F", envvar="OBS_MERGE_FOLLOW", help="Keep reading files as they grow "
                                "(rotation and truncation followed); reopen named FIFOs.")] = False,
    from_end: Annotated[bool, Opt("--from-end", help="With --follow: start at the end of "
                                  "existing files (only new events).")] = False,
    agent: Annotated[list[str] | None, Opt("--agent", "-a", envvar="OBS_MERGE_AGENT", help="Also "
                     "an agent root: comm:NAME, pid:N or cgroup:SUBSTRING (repeatable).")] = None,
    grace: Annotated[float, Opt("--grace", envvar="OBS_MERGE_GRACE", min=0.0, help="Keep an "
                                "exited process this long beyond the window (seconds).")] = 5.0,
    fmt: Annotated[Fmt | None, Opt("--format", "-f", envvar="OBS_FORMAT", help="json (NDJSON) "
                                   "or human; default human on a terminal.")] = None,
    summary: Annotated[bool, Opt("--summary", help="After the stream (and on SIGUSR1) write a "
                                 "per-session summary: a table, or one JSON object.")] = False,
    summary_only: Annotated[bool, Opt("--summary-only", help="Write only the summary.")] = False,
    no_proc: Annotated[bool, Opt("--no-proc", help="Never read /proc for live events.")] = False,
    trace: Annotated[Path | None, Opt("--trace", envvar="OBS_MERGE_TRACE", callback=writable, help="At the end, write"
                     " the run as a Chrome/Perfetto trace (JSON) to this file.")] = None,
    live: Annotated[bool, Opt("--live", envvar="OBS_MERGE_LIVE", help="With --summary on a "
                    "terminal: a per-agent table refreshed in place instead of the stream.")] = False,
) -> int:
    specs, summary = sources or ["-"], summary or summary_only
    if specs.count("-") > 1:
        raise typer.BadParameter("'-' (stdin) given more than once", param_hint="sources")
    fmt_name = fmt.value if fmt else default_format(1)
    sink = Sink(fmt_name, fd=1, lossless=True)  # a slow reader slows obs-merge down
    try:
        selectors = [parse_selector(s) for s in agent or []]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--agent'") from None
    flags: dict[str, bool] = {"usr1": False, "stop": False}
    signal.signal(signal.SIGUSR1, lambda *_: flags.__setitem__("usr1", True))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: flags.__setitem__("stop", True))

    reader = Reader(specs, follow=follow, from_end=from_end)
    sessions = Sessions(selectors, window_ns=int(window * NS), grace_ns=int(grace * NS),
                        proc=None if no_proc else read_proc, local_host=hostname())
    merge = Merge(sessions, range(len(specs)), window_ns=int(window * NS), now=time.monotonic_ns())
    report = Reporter(lambda line: print(line, end="", file=sys.stderr, flush=True))

    def stream() -> dict[str, Any]:
        return {**merge.stats(), **report.counts, "output_dropped": sink.output_dropped,
                "sources_failed": len(reader.failed)}
    views = Views(Summary(), None if summary_only else sink, stream, trace=trace,
                  live=live and summary, say=sys.stderr.write)

    def show_summary() -> None:
        write(sink, views.summary.table(stream()).encode() if fmt_name == "human" else
              dumps(views.summary.to_json(stream())))

    try:
        while not reader.done and not flags["stop"]:
            batch = reader.poll(0.25, skip=merge.ahead(time.monotonic_ns()))
            out, problems = merge.feed(batch, reader.name, time.monotonic_ns())
            for problem in problems:
                report.report(problem)
            views.emit(out)
            if flags["usr1"] and summary and views.live is None:  # the live table is the summary
                flags["usr1"] = False
                show_summary()
        views.emit(merge.drain())
        report.close()
        if views.close() and summary:
            show_summary()
        sink.close()
    except OutputClosed:
        quiet_broken_pipe()
        return 0
    finally:
        reader.close()
    return 1 if reader.failed else 0


def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
