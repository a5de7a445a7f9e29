"""The one set-up path of every kernel-fed tool: options checked, host checked, programs built.

A tool declares its options (the shared ones come from libobs.tool.options), then:

    rules = options.checked(TOOL, lambda: options.provider_rules(path))   # a tool's own
    job = start.prepare(TOOL, common, features, TRACEPOINTS)
    prog = job.program("exec.bpf.c", {"MAX_ARGV": ...})
    raise typer.Exit(Loop(job.cfg, [prog], decoder).run())

Usage errors end the tool with one line and status 2, a host
that lacks something it needs with one line and status 1 — before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libobs.kernel import program
from libobs.tool import options
from libobs.tool.loop import LoopConfig


@dataclass
class Common:
    """The options every tracing tool takes, as typer parsed them."""
    pid: int | None
    comm: str | None
    cgroup: str | None         # as given: options.Filters resolves and checks it
    fmt: str | None
    heartbeat_interval: float
    heartbeat_file: Path | None
    duration: float | None
    ring_size: int


@dataclass
class Prepared:
    filters: options.Filters
    cfg: LoopConfig
    ring: int                            # bytes

    @property
    def defines(self) -> dict[str, int | bool]:
        """The -D constants every program of the tool is built with."""
        return program.base_defines(self.ring) | self.filters.defines()

    def program(self, source: str, defines: Mapping[str, int | bool] | None = None
                ) -> program.Program:
        """bpf/<source> built with the tool's constants plus `defines`, filters applied."""
        prog = program.Program(source, self.defines | dict(defines or {}))
        self.filters.apply(prog.bpf)
        return prog


def prepare(tool: str, common: Common, features: list[str], tracepoints: list[str]
            ) -> Prepared:
    filters = options.Filters(common.pid, common.comm, common.cgroup)

    def check() -> Prepared:
        filters.validate()
        cfg = options.loop_config(tool, common.fmt, common.heartbeat_interval,
                                  common.heartbeat_file, common.duration, features)
        return Prepared(filters, cfg, options.ring_bytes(common.ring_size))

    prepared = options.checked(tool, check)
    options.preflight_or_exit(tool, tracepoints + (["sched:sched_process_fork"]
                                                   if common.pid else []))
    return prepared
