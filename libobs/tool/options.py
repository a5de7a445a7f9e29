"""Options every kernel-fed tool shares, and their validation.

Each tunable has an env-var equivalent (OBS_*) so systemd units can set it. Values are checked
here and reach BPF only as typed -D constants or map values.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from libobs import cgroup
from libobs.events import env_problem
from libobs.guard.denyfile import DenyFileError, read_denyfile
from libobs.identity import read_stat
from libobs.kernel import host
from libobs.providers import ProvidersError, Rules, load_rules
from libobs.tool.loop import LoopConfig, err
from libobs.tool.sink import default_format

FormatOpt = Annotated[str | None, typer.Option(
    "--format", "-f", envvar="OBS_FORMAT",
    help="json (NDJSON, the contract, exact) or human (control characters escaped); "
         "default: human on a terminal, else json.")]
HeartbeatOpt = Annotated[float, typer.Option(
    "--heartbeat-interval", envvar="OBS_HEARTBEAT_INTERVAL", min=0.1,
    help="Seconds between CollectorHeartbeat events.")]
HeartbeatFileOpt = Annotated[Path | None, typer.Option(
    "--heartbeat-file", envvar="OBS_HEARTBEAT_FILE",
    help="Rewrite this file with the latest heartbeat (a liveness probe target).")]
DurationOpt = Annotated[float | None, typer.Option(
    "--duration", "-d", envvar="OBS_DURATION", min=0,
    help="Stop after this many seconds (default: run until SIGINT/SIGTERM).")]
# A BPF ring buffer's size is a u32 power of two: 2 GiB is the largest the kernel takes
# (measured: 2048 loads; 4096 overflowed into a compiler traceback).
MAX_RING_MIB = 2048
RingOpt = Annotated[int, typer.Option(
    "--ring-size", envvar="OBS_RING_SIZE", min=1, max=MAX_RING_MIB,
    help="Kernel ring buffer size in MiB (a power of two, at most 2048). Larger absorbs "
         "longer bursts.")]
PidOpt = Annotated[int | None, typer.Option(
    "--pid", "-p", envvar="OBS_PID", min=1,
    help="Only this process and its descendants (filtered in the kernel).")]
CommOpt = Annotated[str | None, typer.Option(
    "--comm", "-c", envvar="OBS_COMM", help="Only processes with this comm (filtered in the kernel).")]
CgroupOpt = Annotated[str | None, typer.Option(
    "--cgroup", envvar="OBS_CGROUP",
    help="Only processes in this cgroup-v2 directory or below it (filtered in the kernel; "
         "absolute, or relative to the cgroup-v2 mount; not the mount itself).")]

ProvidersOpt = Annotated[Path | None, typer.Option(
    "--providers", envvar="OBS_PROVIDERS",
    help="More hostname → provider rules (TOML, the format of libobs/providers.toml); "
         "they take precedence over the packaged ones. Refused unless only root can write "
         "the file and its directory.")]


T = TypeVar("T")


TlsLibOpt = Annotated[list[Path] | None, typer.Option(
    "--lib", metavar="PATH", envvar="OBS_LIB",
    help="Also attach to this TLS library or binary: libssl, libgnutls, libnspr4, a binary with "
         "OpenSSL or BoringSSL built in (Claude Code), a Go binary (repeatable). System libraries, node and the libraries "
         "and Go binaries of running processes are found without it.")]
RescanOpt = Annotated[float, typer.Option(
    "--rescan", envvar="OBS_RESCAN", min=0,
    help="Seconds between looks at /proc for TLS libraries and Go programs loaded since; a "
         "program's executable is also judged as it starts (0: neither).")]


class UsageError(Exception):
    """A bad option value: the tool prints it as one line and exits 2."""


@dataclass
class Filters:
    pid: int | None = None
    comm: str | None = None
    cgroup: str | Path | None = None
    root_hint: str = "omit --cgroup to watch every process"

    def validate(self) -> None:
        if self.comm is not None:
            raw = self.comm.encode()
            if not raw or len(raw) > 15 or b"\0" in raw:
                raise UsageError("--comm must be 1-15 bytes (the kernel's TASK_COMM_LEN)")
        if self.pid is not None and not Path(f"/proc/{self.pid}").exists():
            raise UsageError(f"--pid {self.pid}: no such process")
        if self.cgroup is not None:
            try:
                self.cgroup = cgroup.resolve_dir(self.cgroup, host.cgroup2_root(),
                                                 root_hint=self.root_hint)
            except cgroup.CgroupError as e:
                raise UsageError(str(e)) from None

    @property
    def cgroup_dir(self) -> Path | None:
        """The validated --cgroup directory."""
        return self.cgroup if isinstance(self.cgroup, Path) else None

    def defines(self) -> dict[str, int | bool]:
        return {"FILTER_PID": self.pid is not None, "FILTER_COMM": self.comm is not None,
                "FILTER_CGROUP": self.cgroup is not None}

    def apply(self, bpf: Any) -> None:
        """Fill the filter maps of a loaded program."""
        if self.pid is not None:
            # The fork hook is live already: a child forked after its parent entered the map
            # is tracked by the kernel, one forked before is in /proc. Scan again after each
            # update until every descendant is in the map, so that a fork between a scan and
            # its parent's update is not lost (forks the hook caught end the loop, however busy
            # the tree is).
            tracked = bpf["tracked"]
            while missing := [p for p in descendants(self.pid)
                              if ctypes.c_uint32(p) not in tracked]:
                for pid in missing:
                    tracked[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        if self.comm is not None:
            table = bpf["filter_comm"]
            leaf = table.Leaf()
            leaf.c = self.comm.encode()  # (a ctypes char array: .c reads back a copy)
            table[ctypes.c_int(0)] = leaf
        if self.cgroup is not None:
            bpf["filter_cgroup"][0] = str(self.cgroup)


def descendants(root: int) -> list[int]:
    """root and every live descendant (by /proc ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = read_stat(entry.name)
        if st is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def power_of_two(value: int, option: str, unit: str) -> int:
    if value <= 0 or value & (value - 1):
        raise UsageError(f"{option} must be a power of two ({unit})")
    return value


def ring_bytes(mib: int) -> int:
    return power_of_two(mib, "--ring-size", "MiB") << 20


def checked(tool: str, check: Callable[[], T]) -> T:
    """check()'s value; a UsageError it raises ends the tool with one line and status 2."""
    try:
        return check()
    except UsageError as e:
        raise usage_exit(tool, e) from None


def loop_config(tool: str, fmt: str | None, heartbeat_interval: float,
                heartbeat_file: Path | None, duration: float | None,
                features: list[str]) -> LoopConfig:
    if fmt is None:
        fmt = default_format()
    if fmt not in ("json", "human"):
        raise UsageError(f"--format must be json or human, not {fmt!r}")
    if problem := env_problem():
        raise UsageError(problem)
    return LoopConfig(tool=tool, fmt=fmt, heartbeat_interval=heartbeat_interval,
                      heartbeat_file=heartbeat_file, duration=duration, features=features)


def provider_rules(path: Path | None, trusted_uid: int | None = 0) -> Rules:
    """The packaged provider rules plus a user's file (--providers); a bad file is a UsageError.
    Classification steers what is reported and, through policies, what is denied: like a
    deny-file, a rules file (and its directory) anyone but root can write is refused."""
    try:
        if path is not None and trusted_uid is not None:
            read_denyfile(path, trusted_uid=trusted_uid)
        return load_rules(path)
    except (ProvidersError, DenyFileError) as e:
        raise UsageError(str(e).replace("deny-file", "providers file")) from None


def std_fds() -> None:
    """Put /dev/null on whichever of fds 0, 1 and 2 is closed, opened the wrong way round.

    A closed standard fd would be taken by the next file opened: with `2>&-` a source opened
    as fd 2 would receive the diagnostics, and Python, finding sys.stderr None, prints them
    to stdout, into the NDJSON. Occupied the wrong way round, a closed stdin still fails to
    read and a closed stdout to write (EBADF), so tools report those as they report any read
    or write error, while stderr's diagnostics are discarded."""
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, flags)  # the lowest free number: fd itself, in order
            if null != fd:
                os.dup2(null, fd, inheritable=True)
                os.close(null)
            else:
                os.set_inheritable(fd, True)
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115


def main(app: typer.Typer, tool: str, argv: list[str] | None = None) -> None:
    """Run a tool's typer app; usage errors become one line on stderr (exit 2)."""
    std_fds()
    try:
        rv = app(args=argv, standalone_mode=False, prog_name=tool)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        message = getattr(e, "format_message", None)
        if message is None:
            raise
        err(tool, message().replace("\n", " "))
        raise SystemExit(getattr(e, "exit_code", 2)) from None
    if isinstance(rv, int):
        sys.exit(rv)


def preflight_or_exit(tool: str, tracepoints: list[str]) -> None:
    reason = host.preflight(tracepoints)
    if reason:
        err(tool, reason)
        raise typer.Exit(1)


def usage_exit(tool: str, e: Exception) -> typer.Exit:
    err(tool, str(e))
    return typer.Exit(2)
