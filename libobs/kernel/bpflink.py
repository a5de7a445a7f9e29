"""BPF links (BPF_LINK_CREATE) through the bpf(2) syscall: attachments owned by a process.

uprobe_multi links (Linux 6.6+) put one program on many offsets of a file at once; closing one
waits for one grace period, and concurrent closes share it, where every uprobe perf event waits
for its own, one after another (~0.1 s each here: obs-ssl took 5 s to stop).

bcc 0.26's ``BPF.attach_func`` uses BPF_PROG_ATTACH, whose cgroup attachments outlive the
process that made them: a guard killed with SIGKILL would leave its cage behind. A link is
detached when its last file descriptor closes — on exit, crash included — unless it is
pinned in bpffs, which is how ``--pin`` keeps a guard across restarts on purpose.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from pathlib import Path

SYS_BPF = 321  # x86_64; the only architecture this project builds for
BPF_OBJ_PIN, BPF_OBJ_GET, BPF_LINK_CREATE, BPF_LINK_UPDATE = 6, 7, 28, 29
BPFFS = Path("/sys/fs/bpf")

# enum bpf_attach_type (include/uapi/linux/bpf.h)
CGROUP_INET_INGRESS = 0
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15
TRACE_UPROBE_MULTI = 48
UPROBE_MULTI_RETURN = 1  # BPF_F_UPROBE_MULTI_RETURN

SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
_PERF_ATTR_SIZE = 72  # PERF_ATTR_SIZE_VER1: up to config2
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")  # its perf event type

_ATTR_SIZE = 64  # bytes of union bpf_attr we fill; the kernel zero-extends the rest
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class LinkError(OSError):
    """A bpf(2) link/pin call failed; str() is one line."""


def call(cmd: int, attr: bytes, what: str, size: int = _ATTR_SIZE) -> int:
    """bpf(cmd, attr) with attr zero-padded to `size` bytes; the result, or LinkError."""
    buf = ctypes.create_string_buffer(attr.ljust(size, b"\0"), size)
    ret = _libc.syscall(SYS_BPF, cmd, buf, size)
    if ret < 0:
        e = ctypes.get_errno()
        raise LinkError(e, f"{what}: {os.strerror(e)}")
    return int(ret)


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A new link fd attaching prog_fd to target_fd (a cgroup directory fd)."""
    attr = struct.pack("<IIII", prog_fd, target_fd, attach_type, 0)
    return call(BPF_LINK_CREATE, attr, f"BPF_LINK_CREATE (attach type {attach_type})")


def uprobe_multi(prog_fd: int, path: str, offsets: list[int], ret: bool = False) -> int:
    """A link fd putting prog_fd (loaded for TRACE_UPROBE_MULTI) at each file offset of `path`
    in every process: on entry, or on return with `ret`."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    attr = struct.pack("<IIIIQQQQIII", prog_fd, 0, TRACE_UPROBE_MULTI, 0, ctypes.addressof(name),
                       ctypes.addressof(offs), 0, 0, len(offsets),
                       UPROBE_MULTI_RETURN if ret else 0, 0)
    try:
        return call(BPF_LINK_CREATE, attr, f"uprobe_multi link on {path}")
    finally:
        del name, offs  # alive until the kernel has copied them


def uprobe_event(prog_fd: int, path: str, offset: int, ret: bool = False) -> int:
    """A perf event fd running prog_fd at a file offset of `path` in every process (on return
    with `ret`): the uprobe PMU, with no ref_ctr_offset (config bits 32-63 left 0)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    # struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1): type, size, config
    # (retprobe: bit 0), sample_period, sample_type, read_format, flags, wakeup_events,
    # bp_type, config1 (path), config2 (offset)
    attr = struct.pack("<IIQQQQQIIQQ", _uprobe_pmu(), _PERF_ATTR_SIZE, int(ret), 1, 0, 0, 0, 1, 0,
                       ctypes.addressof(name), offset)
    buf = ctypes.create_string_buffer(attr, _PERF_ATTR_SIZE)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, buf, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    del name
    if fd < 0:
        e = ctypes.get_errno()
        raise LinkError(e, f"uprobe on {path}+{offset:#x}: {os.strerror(e)}")
    try:
        for req, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
            if _libc.ioctl(fd, req, arg) < 0:
                e = ctypes.get_errno()
                raise LinkError(e, f"uprobe on {path}+{offset:#x}: {os.strerror(e)}")
    except LinkError:
        os.close(fd)
        raise
    return int(fd)


@functools.cache
def _uprobe_pmu() -> int:
    return int(UPROBE_PMU.read_text())


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link atomically: no instant without a program attached."""
    call(BPF_LINK_UPDATE, struct.pack("<IIII", link_fd, prog_fd, 0, 0), "BPF_LINK_UPDATE")


def _path_attr(path: Path, fd: int) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    name = ctypes.create_string_buffer(os.fsencode(path))
    return struct.pack("<QII", ctypes.addressof(name), fd, 0), name


def obj_pin(fd: int, path: Path) -> None:
    attr, keep = _path_attr(path, fd)
    call(BPF_OBJ_PIN, attr, f"pin {path}")
    del keep


def obj_get(path: Path) -> int:
    attr, keep = _path_attr(path, 0)
    fd = call(BPF_OBJ_GET, attr, f"open pinned {path}")
    del keep
    return fd


def is_bpffs(path: Path = BPFFS) -> bool:
    """Whether a bpf filesystem is mounted exactly at ``path``."""
    try:
        with open("/proc/self/mounts") as f:
            return any(
                line.split()[1:3] == [str(path), "bpf"] for line in f if len(line.split()) > 2
            )
    except OSError:
        return False


class Link:
    """One attachment; ``close()`` detaches it unless it is pinned."""

    def __init__(self, name: str, fd: int, pinned: Path | None = None):
        self.name = name
        self.fd = fd
        self.pinned = pinned

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach(name: str, prog_fd: int, cgroup_fd: int, attach_type: int,
           pin: Path | None = None) -> Link:
    """Attach through a link; with ``pin``, reuse (atomically update) or create a pinned one."""
    if pin is not None and pin.exists():
        fd = obj_get(pin)
        try:
            link_update(fd, prog_fd)
        except LinkError:
            os.close(fd)
            raise
        return Link(name, fd, pin)
    fd = link_create(prog_fd, cgroup_fd, attach_type)
    if pin is not None:
        try:
            pin.parent.mkdir(parents=True, exist_ok=True)
            obj_pin(fd, pin)
        except OSError:
            os.close(fd)
            raise
    return Link(name, fd, pin)
