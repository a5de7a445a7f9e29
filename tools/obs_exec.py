#!/usr/bin/env python3
"""obs-exec: which agent ran which tool — exec, exit, privilege changes and file writes."""

from __future__ import annotations

from typing import Annotated

import typer

from libobs.events import Clock, hostname
from libobs.exec.decode import ExecDecoder
from libobs.exec.fold import kernel_slots
from libobs.tool import options, start
from libobs.tool.loop import Loop

TOOL = "obs-exec"
EXAMPLES = """Examples:

\b
  sudo obs-exec                          # every exec/exit on the host, human lines on a tty
  sudo obs-exec --files | jq -c .        # plus file writes and deletes, as NDJSON
  sudo obs-exec --comm python3 --files   # only processes named python3
  sudo obs-exec --pid 1841               # an agent and everything it spawns
  sudo obs-exec --cgroup /sys/fs/cgroup/unified/agents/a1 --duration 60
"""
TRACEPOINTS = ["sched:sched_process_exec", "sched:sched_process_exit",
               "syscalls:sys_enter_setuid", "syscalls:sys_enter_ptrace",
               "syscalls:sys_enter_bind", "syscalls:sys_enter_listen"]
FILE_TRACEPOINTS = ["syscalls:sys_exit_openat", "syscalls:sys_exit_openat2",
                    "syscalls:sys_exit_open", "syscalls:sys_exit_creat",
                    "syscalls:sys_enter_unlink", "syscalls:sys_enter_unlinkat",
                    "syscalls:sys_enter_rmdir"]

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    files: Annotated[bool, typer.Option("--files", envvar="OBS_FILES",
                     help="Also FileAccess (opens with write intent) and FileDelete.")] = False,
    max_argv: Annotated[int, typer.Option("--max-argv", envvar="OBS_MAX_ARGV", min=4, max=1024,
                        help="KiB of argv captured per exec (power of two); "
                             "longer argv sets argv_truncated.")] = 128,
    fold_window: Annotated[float, typer.Option(
        "--fold-window", envvar="OBS_FOLD_WINDOW", min=0, max=60,
        help="Seconds over which a thread's repeated write-opens of one file fold into one "
             "FileAccess with a count (0: one event per open).")] = 1.0,
    pid: options.PidOpt = None, comm: options.CommOpt = None, cgroup: options.CgroupOpt = None,
    fmt: options.FormatOpt = None, heartbeat_interval: options.HeartbeatOpt = 60.0,
    heartbeat_file: options.HeartbeatFileOpt = None, duration: options.DurationOpt = None,
    ring_size: options.RingOpt = 64,
) -> None:
    """Trace process execution (ToolExec), exits (ProcessExit), privilege changes
    (SecurityAction) and, with --files, file writes and deletes, as NDJSON events."""
    options.checked(TOOL, lambda: options.power_of_two(max_argv, "--max-argv", "KiB"))
    common = start.Common(pid, comm, cgroup, fmt, heartbeat_interval, heartbeat_file, duration,
                          ring_size)
    features = ["exec", "exit", "security"] + (["files"] if files else [])
    job = start.prepare(TOOL, common, features,
                        TRACEPOINTS + (FILE_TRACEPOINTS if files else []))
    fold_ns = int(fold_window * 1e9) if files else 0
    prog = job.program("exec.bpf.c", {"MAX_ARGV": max_argv * 1024, "FILES": files,
                                      "FOLD_NS": fold_ns})
    decoder = ExecDecoder(Clock.now(), hostname())
    due = [0.0]

    def fold_tick(now: float) -> list[dict]:
        """Every fold window (and at exit), the opens counted in the kernel's slots."""
        if not fold_ns or now < due[0]:
            return []
        due[0] = now + fold_window
        return decoder.fold_events(kernel_slots(prog.table("fold")))

    raise typer.Exit(Loop(job.cfg, [prog], decoder, tick=fold_tick).run())



def run() -> None:
    options.main(app, TOOL)


if __name__ == "__main__":
    run()
