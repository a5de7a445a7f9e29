#!/usr/bin/env python3
"""obs-fileguard: deny opens and execs of listed files and directories (fanotify)."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Annotated

import typer

from libobs import cgroup as cgroups
from libobs.events import hostname
from libobs.guard import fanotify
from libobs.guard.cache import DEFAULT_MAX_ENTRIES, Cache
from libobs.guard.denyfile import DenyFileWatcher, line_errors_text, parse_paths
from libobs.guard.fileguard import (
    EVENT_F_FLAGS,
    GUARD,
    INIT_FLAGS,
    Enricher,
    Guard,
    Reloader,
    Scope,
)
from libobs.guard.loop import Group, GuardLoop, Outbox
from libobs.guard.marks import MASK, Marks
from libobs.kernel import host
from libobs.tool import options as cli
from libobs.tool.loop import err

EXAMPLES = """Examples:

\b
  sudo obs-fileguard /etc/obs/fileguard.deny             # guard the whole host
  sudo obs-fileguard deny.txt --cgroup agents/a1         # only processes of one agent's cgroup
  sudo obs-fileguard deny.txt | jq -c 'select(.event.Denied)'
  sudo obs-fileguard deny.txt --duration 60 --format human

\b
  deny-file: one absolute path per line, '#' comments; a directory covers everything beneath:
    /home/me/.ssh
    /usr/local/bin/deploy-prod
"""

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    denyfile: Annotated[Path, typer.Argument(
        metavar="DENYFILE", envvar="OBS_DENY_FILE",
        help="Paths to deny, one per line; root-owned, in a root-owned directory. "
             "Re-read on change (applied within 2 s).")],
    cgroup: Annotated[str | None, typer.Option(
        "--cgroup", envvar="OBS_CGROUP",
        help="Deny only processes in this cgroup-v2 directory or below it "
             "(absolute, or relative to the cgroup-v2 mount, not the mount itself); everyone "
             "else passes. Without it, every process on the host is guarded.")] = None,
    cache_size: Annotated[int, typer.Option(
        "--cache-size", envvar="OBS_FILEGUARD_CACHE_SIZE", min=0, metavar="N",
        help="A listed directory makes every open on its filesystem wait for the guard; "
             "remember up to N directories whose files no rule can match in the kernel "
             "(fanotify ignore marks), so that opening those files again costs nothing. "
             "Emptied on every rule change and every 2 s: a directory moved into a listed "
             "one is fully denied within 2 s (a moved file at once). 0: check every "
             "open.")] = DEFAULT_MAX_ENTRIES,
    fmt: cli.FormatOpt = None, heartbeat_interval: cli.HeartbeatOpt = 60.0,
    heartbeat_file: cli.HeartbeatFileOpt = None, duration: cli.DurationOpt = None,
) -> None:
    """Deny opens and execs of the files and directories listed in DENYFILE, with fanotify
    permission events; each refusal is a Denied event (NDJSON). Fails open if it dies."""
    filters = cli.Filters(cgroup=cgroup, root_hint="omit --cgroup to guard every process")
    root = host.cgroup2_root()
    try:
        filters.validate()
        scope = None
        if filters.cgroup_dir is not None and root is not None:
            scope = Scope(cgroups.relative(filters.cgroup_dir, root))
        features = ["open", "exec"] + (["cgroup"] if scope else [])
        cfg = cli.loop_config(GUARD, fmt, heartbeat_interval, heartbeat_file, duration, features)
    except (cli.UsageError, ValueError) as e:
        raise cli.usage_exit(GUARD, e) from None

    try:  # first: without root, say so rather than fail on the root-only deny-file
        # Two groups (libobs/guard/cache.py says why): listed files, then directories + cache.
        fan = fanotify.init(INIT_FLAGS, EVENT_F_FLAGS)
        dirs_fan = fanotify.init(INIT_FLAGS, EVENT_F_FLAGS)
    except OSError as e:
        err(GUARD, fanotify.init_failure(e))
        raise typer.Exit(1) from None
    # Read the list before any mark exists: a bad file stops us here, not half-way.
    watcher = DenyFileWatcher(denyfile, parse_paths)
    first = watcher.poll()
    if first is None or first.error:
        raise cli.usage_exit(GUARD, ValueError(first.error if first else "unreadable deny-file"))
    for line in line_errors_text(watcher.path, first.errors):
        err(GUARD, line)

    outbox = Outbox()
    group, dirs = Group(fan), Group(dirs_fan)
    enricher = Enricher(hostname(), str(root) if root else None)
    guard = Guard(fan, outbox, enricher, scope, cache=Cache(dirs, MASK, cache_size))
    enricher.facts(os.getpid())  # warm every lazy import up while nothing is marked yet
    if scope:
        scope.lookup(os.getpid())
    marks = Marks(group, dirs)  # one O_PATH fd per listed file: make room for long lists
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    reloader = Reloader(watcher, first.rules, marks, guard, lambda m: err(GUARD, m))
    loop = GuardLoop(cfg, [group, dirs], outbox, guard.answer, reloader.tick,
                     dropped=lambda: guard.counters.fail_open,
                     attached=["fanotify:open_perm", "fanotify:open_exec_perm"],
                     stats=guard.stats)
    status = loop.run()
    guard.close()
    marks.close()
    c = guard.counters
    err(GUARD, f"answered {c.answered} permission event(s): {c.denied} denied, "
        f"{c.fail_open} let through on an error, {c.cached} allowed directory(ies) cached "
        f"(cache emptied {guard.stats().get('cache_flushes', 0)} time(s))")
    raise typer.Exit(status)



def run() -> None:
    cli.main(app, GUARD)


if __name__ == "__main__":
    run()
