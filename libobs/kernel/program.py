"""Build and load bpf/*.c through bcc with typed options; poll ring buffers; count losses.

Options reach the C as -D constants whose names and integer values are validated here: no text
from a command line is ever pasted into a program.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from libobs.kernel import host, objcache
from libobs.kernel.ringbuf import RingReader
from libobs.kernel.source import bpf_dir, source_text

CLOSE_THREADS = 64  # perf events closed at once on exit (close_probes)
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")  # fullmatch: "$" would let "X\n" through


def cflags(defines: Mapping[str, int | bool]) -> list[str]:
    """-D flags from validated names and integers (bools: defined or not)."""
    # -w: header warnings are not the tool's to print. The -mllvm flag stops clang merging
    # calls to different helpers into one indirect call (opcode 0x8d), which BPF rejects.
    out = ["-w", f"-I{bpf_dir()}", "-mllvm", "-simplifycfg-sink-common=false"]
    for name, value in sorted(defines.items()):
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad BPF constant name {name!r}")
        if isinstance(value, bool):
            if value:
                out.append(f"-D{name}=1")
        elif isinstance(value, int):
            out.append(f"-D{name}={int(value)}")
        else:
            raise TypeError(f"BPF constant {name} must be int or bool, not {type(value).__name__}")
    return out


def _close_one(job: tuple[Callable[[int], Any], int]) -> int:
    close, fd = job
    try:
        ret = close(fd)
    except OSError:
        return -1
    return 0 if ret is None else int(ret)


def base_defines(ring_bytes: int) -> dict[str, int | bool]:
    """Constants every program needs: struct offsets from BTF, ring size, CPU slots."""
    pages = ring_bytes // os.sysconf("SC_PAGE_SIZE")
    if pages < 1 or pages & (pages - 1):
        raise ValueError("ring buffer size must be a power-of-two number of pages")
    d: dict[str, int | bool] = dict(host.struct_offsets())
    d["RING_PAGES"] = pages
    d["NCPU"] = host.possible_cpus()
    return d


def release_freed_memory() -> None:
    """Give the heap LLVM used while compiling back to the OS (measured: 54 → 30 MiB private
    RSS for obs-exec); glibc keeps freed memory mapped otherwise."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Program:
    """A loaded BPF program: its ring buffer, lost counter and attachments.

    `from_cache`: whether it was loaded from the start-up cache (objcache.py) rather than
    compiled; the heartbeat counts both kinds."""

    def __init__(self, source: str, defines: Mapping[str, int | bool]):
        from bcc import BPF  # imported late: preflight reports a missing bcc first

        self.source = source
        self.flags = cflags(defines)
        text = source_text(source)
        key = objcache.entry_key(text, self.flags)
        self.bpf: Any = objcache.load(key)
        self.from_cache = self.bpf is not None
        if self.bpf is None:
            self.bpf = BPF(text=text.encode(), cflags=self.flags)
            objcache.store(key, self.bpf)
            release_freed_memory()
        self._rings: list[tuple[RingReader, Callable[[bytes], None]]] = []
        self.links: list[int] = []  # link fds of attachments made outside bcc (closed here)

    def open_ring(self, name: str, callback: Callable[[bytes], None]) -> None:
        """Deliver each record of ring buffer `name` to callback(bytes) during poll()."""
        table = self.bpf[name]
        # our own fd: bcc may close its copy during cleanup, before the reader is closed
        reader = RingReader(os.dup(table.map_fd), int(table.max_entries))
        self._rings.append((reader, callback))

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records, then hand over everything committed."""
        if not self._rings:
            return 0
        self._rings[0][0].wait(timeout_ms / 1000)
        return self.consume()

    def consume(self) -> int:
        return sum(reader.drain(cb) for reader, cb in self._rings)

    def lost(self, table: str = "lost") -> int:
        """Records the kernel side could not deliver (ring buffer full), summed over CPUs."""
        return sum(self.lost_by_kind(table).values())

    def lost_by_kind(self, table: str = "lost") -> dict[int, int]:
        try:
            t = self.bpf[table]
        except KeyError:
            return {}
        out = {}
        for k, values in t.items():
            n = int(sum(values))
            if n:
                out[int(k.value)] = n
        return out

    def attached(self) -> list[str]:
        b = self.bpf
        names = [f"tracepoint:{k.decode() if isinstance(k, bytes) else k}"
                 for k in getattr(b, "tracepoint_fds", {})]
        for k in getattr(b, "uprobe_fds", {}):
            names.append(f"uprobe:{k.decode() if isinstance(k, bytes) else k}")
        return sorted(names)

    def table(self, name: str) -> Any:
        return self.bpf[name]

    def close(self) -> None:
        """Detach every probe and free the program (bcc's cleanup is idempotent)."""
        for reader, _ in self._rings:
            with contextlib.suppress(Exception):
                reader.close()
        self._rings.clear()
        close_probes(self.bpf, self.links)
        self.links.clear()
        self.bpf.cleanup()


def close_probes(bpf: Any, links: list[int] | None = None) -> None:
    """Close the perf events of bpf's tracepoints and uprobes, and `links`, all at once, then
    let bcc do its bookkeeping. Closing one waits for an RCU grace period in the kernel
    (~50-200 ms here); bcc closes them one after another (obs-exec: 26 tracepoints, 1.1-2.3 s
    at every exit), concurrent closes share grace periods (measured: 14 tracepoints 2.5-2.8 s
    → 0.45-0.67 s; uprobe perf events do not share them, uprobe_multi links do)."""
    from bcc import libbcc  # imported late, as in Program

    fds = {**getattr(bpf, "tracepoint_fds", {}), **getattr(bpf, "uprobe_fds", {})}
    jobs = [*((libbcc.lib.bpf_close_perf_event_fd, fd) for fd in fds.values()),
            *((os.close, fd) for fd in links or ())]
    if len(jobs) < 2 and not links:
        return
    with ThreadPoolExecutor(min(len(jobs), CLOSE_THREADS)) as pool:
        done = list(pool.map(_close_one, jobs))
    results = dict(zip(fds, done, strict=False))  # the perf events come first
    for name in list(getattr(bpf, "tracepoint_fds", {})):
        if results.get(name, -1) >= 0:
            del bpf.tracepoint_fds[name]  # closed: bcc's cleanup must not close the number again
    for name in list(getattr(bpf, "uprobe_fds", {})):
        if results.get(name, -1) >= 0:
            libbcc.lib.bpf_detach_uprobe(name)  # a legacy tracefs event, where one was made
            bpf._del_uprobe_fd(name)
