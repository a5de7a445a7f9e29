#!/usr/bin/env python3
"""obs-merge: obs-* NDJSON streams → one stream in ts order, with agent sessions. Wiring only:
libobs.merge.run runs it (and says how it ends), libobs.merge.children starts --run commands,
libobs.merge.input reads, libobs.merge.shape checks each event, libobs.merge.merger orders (the
2 s default window: see there), dedups and joins, libobs.merge.sessions keeps the process tree,
libobs.merge.summary aggregates."""

from __future__ import annotations

import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from libobs.export.views import writable
from libobs.merge import run as pipeline
from libobs.merge.children import parse_command
from libobs.merge.sessions import parse_selector
from libobs.tool import options as cli
from libobs.tool.sink import default_format

TOOL = "obs-merge"
EPILOG = """Examples:

\b
  sudo obs-merge --run 'obs-exec --files' --run obs-net --run 'obs-llm --api'
      run the observers as root (obs-merge's children), merge them live
  obs-exec | obs-merge - <(obs-net) <(obs-llm)
      merge live streams into one (as root already: <(...) runs as the caller)
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

Exit status: 0 done (also after SIGINT/SIGTERM/--duration and when the reader of stdout
went away), 1 a source could not be opened or read or a --run command failed (the others
were still merged) or stdout could not be written (said once on stderr), 2 bad usage.
"""


class Fmt(StrEnum):
    json = "json"
    human = "human"


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)
Opt = typer.Option


@app.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}, help="Merge obs-* NDJSON streams (files, FIFOs, `<(cmd)`, - for "
             "stdin; default - unless --run is given; commands started with --run) into one "
             "stream ordered by ts within a reorder window (events of different tools are "
             "delayed by each tool's own polling and batching), setting identity.session/agent "
             "from the process tree of agent processes.")
def main(
    sources: Annotated[list[str] | None, typer.Argument(metavar="FILE|FIFO|-")] = None,
    run_cmd: Annotated[list[str] | None, Opt("--run", "-r", envvar="OBS_MERGE_RUN", metavar="CMD", help="Start "
                       "this command (split like shell words, run without a shell) and merge "
                       "its stdout; stopped and reaped with obs-merge (repeatable).")] = None,
    window: Annotated[float, Opt("--window", "-w", envvar="OBS_MERGE_WINDOW", min=0.0, max=3600.0,
                                 help="Reorder window (s): how late a tool may deliver an event "
                                 "and still have it put in order; 2 s covers their polling.")] = 2.0,
    follow: Annotated[bool, Opt("--follow", "-F", envvar="OBS_MERGE_FOLLOW", help="Keep reading files as they grow "
                                "(rotation and truncation followed); reopen named FIFOs.")] = False,
    from_end: Annotated[bool, Opt("--from-end", envvar="OBS_MERGE_FROM_END", help="With --follow: "
                                  "start at the end of existing files (only new events).")] = False,
    agent: Annotated[list[str] | None, Opt("--agent", "-a", envvar="OBS_MERGE_AGENT", metavar="SELECTOR", help="Also "
                     "an agent root: comm:NAME, pid:N or cgroup:SUBSTRING (repeatable).")] = None,
    grace: Annotated[float, Opt("--grace", envvar="OBS_MERGE_GRACE", min=0.0, help="Keep an "
                                "exited process this long beyond the window (seconds).")] = 5.0,
    fmt: Annotated[Fmt | None, Opt("--format", "-f", envvar="OBS_FORMAT", help="json (NDJSON) "
                                   "or human; default human on a terminal.")] = None,
    summary: Annotated[bool, Opt("--summary", envvar="OBS_MERGE_SUMMARY", help="After the stream "
                                 "(and on SIGUSR1) write a per-session summary: a table, or one "
                                 "JSON object.")] = False,
    summary_only: Annotated[bool, Opt("--summary-only", envvar="OBS_MERGE_SUMMARY_ONLY",
                                      help="Write only the summary.")] = False,
    no_proc: Annotated[bool, Opt("--no-proc", envvar="OBS_MERGE_NO_PROC",
                                 help="Never read /proc for live events.")] = False,
    trace: Annotated[Path | None, Opt("--trace", envvar="OBS_MERGE_TRACE", callback=writable,
                     help="At the end, write the run as a Chrome/Perfetto trace (JSON) to this "
                          "file.")] = None,
    live: Annotated[bool, Opt("--live", envvar="OBS_MERGE_LIVE", help="With --summary on a "
                    "terminal: a per-agent table refreshed in place instead of the stream.")
                    ] = False,
    duration: cli.DurationOpt = None,
) -> int:
    specs = sources or ([] if run_cmd else ["-"])
    if specs.count("-") > 1:
        raise typer.BadParameter("'-' (stdin) given more than once", param_hint="sources")
    try:
        selectors = [parse_selector(s) for s in agent or []]
        for text in run_cmd or []:
            parse_command(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--agent' or '--run'") from None
    ctl = pipeline.Control()
    signal.signal(signal.SIGUSR1, lambda *_: setattr(ctl, "usr1", True))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(ctl, "stop", True))
    cfg = pipeline.Config(specs, run_cmd or [], window, follow, from_end, selectors, grace,
                          fmt.value if fmt else default_format(1), summary or summary_only,
                          summary_only, no_proc, duration, trace, live)
    return pipeline.run(cfg, ctl)


def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
