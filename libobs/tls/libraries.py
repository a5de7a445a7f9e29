"""Which files to put TLS uprobes on: shared libssl builds and binaries with OpenSSL linked
in statically that export its API (nodesource's node does); GnuTLS, NSS (NSPR) and Go binaries
through libobs.tls.stacks, which also names the stacks obs cannot read.

A uprobe belongs to a file (an inode), not to a process, so one attachment covers every
process that maps the file, including those started later. Candidates are the system libssl,
executables named by `RUNTIME_EXECUTABLES` on PATH, every executable mapping in
/proc/<pid>/maps of running processes, and files the user names. Each candidate is checked by
reading its ELF dynamic symbol table (a small reader here: pyelftools is not a dependency) for
*defined* SSL_read/SSL_write symbols, so a program that merely imports them from libssl is not
mistaken for one that contains them.

The parsing functions are pure (text or bytes in, data out) and total: unreadable, truncated
or non-ELF input gives "nothing exported", never an exception.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libobs.kernel import bpflink
from libobs.tls import judgements, stacks
from libobs.tls.elf import ElfData, exported, file_offset, read_vaddr
from libobs.tls.points import ProbePoint

__all__ = ["ProbePoint", "SSL_FUNCTIONS", "Finder", "Library", "SslProbes"]

SSL_FUNCTIONS = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex")
SYSTEM_LIBSSL = (
    "/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3", "/usr/lib/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.1.1", "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.1.1",
)
RUNTIME_EXECUTABLES = ("node", "nodejs")  # known to ship OpenSSL statically, with exports
MAX_SLOTS = 16  # entry-probe sets compiled into bpf/ssl.bpf.c (SSL_SLOT)


# ---- ELF: exported functions -------------------------------------------------------------------

def exported_addresses(elf: ElfData, wanted: Iterable[str] = SSL_FUNCTIONS) -> dict[str, int]:
    return exported(elf, wanted)


def exported_functions(elf: ElfData, wanted: Iterable[str] = SSL_FUNCTIONS) -> frozenset[str]:
    return frozenset(exported(elf, wanted))


# ---- where to put the probes -------------------------------------------------------------------
#
# A uprobe costs a breakpoint trap, plus single-stepping the displaced instruction out of line
# unless the kernel emulates it (x86 emulates push, call, jmp, jcc and nops). Measured on the
# project's VMs: ~11 us per call with a single-stepped first instruction, ~0.7 us emulated.
# Debian's libssl.so.3 starts SSL_read_ex/SSL_write_ex with `sub $8,%rsp` (single-stepped);
# they are one-line wrappers around ssl_read_internal/ssl_write_internal, which SSL_read and
# SSL_write call too, and which start with `push`. Where that shape is found for certain, the
# probes go on the internal function: one probe pair sees all four entry points, cheaply. The
# internal functions take (SSL *, buf, num, size_t *count) and return > 0 on success: the _ex
# calling convention. Anything else keeps the probes on the exported functions.

def _emulated(code: bytes) -> bool:
    """Whether x86 uprobes emulate the first instruction (no single-step)."""
    if code[:1] and 0x50 <= code[0] <= 0x57:
        return True  # push %r
    if code[:1] == b"\x41" and len(code) > 1 and 0x50 <= code[1] <= 0x57:
        return True  # push %r8-r15
    return code[:1] in (b"\x55", b"\x90", b"\xe8", b"\xe9")


def _skip_endbr(code: bytes) -> int:
    """endbr64 changes no register or stack: a probe after it is still at function entry."""
    return 4 if code[:4] == b"\xf3\x0f\x1e\xfa" else 0


def wrapper_call_target(code: bytes, vaddr: int) -> int | None:
    """The callee of a thin wrapper: the first call after a prologue of only endbr64, pushes,
    stack adjustments and register moves; None for any other shape."""
    i = 0
    while i < min(len(code), 40):
        b = code[i:i + 7]
        if b[:4] == b"\xf3\x0f\x1e\xfa":
            i += 4
        elif b[:1] and 0x50 <= b[0] <= 0x57:
            i += 1
        elif b[:1] == b"\x41" and len(b) > 1 and 0x50 <= b[1] <= 0x57:
            i += 2
        elif b[:3] in (b"\x48\x83\xec", b"\x48\x83\xc4") and len(b) >= 4:
            i += 4  # sub/add $imm8, %rsp
        elif b[:3] == b"\x48\x81\xec" and len(b) >= 7:
            i += 7  # sub $imm32, %rsp
        elif len(b) >= 3 and b[0] in (0x48, 0x49, 0x4C, 0x4D) and b[1] in (0x89, 0x8B) \
                and b[2] >= 0xC0:
            i += 3  # mov %reg, %reg
        elif b[:1] == b"\xe8" and len(b) >= 5:
            return vaddr + i + 5 + int.from_bytes(b[1:5], "little", signed=True)
        else:
            return None
    return None


def _calls(code: bytes, vaddr: int, target: int) -> bool:
    """Whether code (at vaddr) has a call rel32 to target anywhere."""
    at = code.find(b"\xe8")
    while 0 <= at <= len(code) - 5:
        rel = int.from_bytes(code[at + 1:at + 5], "little", signed=True)
        if vaddr + at + 5 + rel == target:
            return True
        at = code.find(b"\xe8", at + 1)
    return False


def probe_points(elf: ElfData, exported_only: bool = False) -> tuple[ProbePoint, ...]:
    """Where to attach in this file: per direction, the shared internal function when the
    wrappers' shape proves it, else each exported function."""
    addrs = exported_addresses(elf)
    points: list[ProbePoint] = []
    for plain, ex, internal in (("SSL_read", "SSL_read_ex", "ssl_read_internal"),
                                ("SSL_write", "SSL_write_ex", "ssl_write_internal")):
        found = None if exported_only else _internal(elf, addrs, plain, ex, internal)
        if found:
            points.append(found)
            continue
        for name in (plain, ex):
            if name in addrs:
                code = read_vaddr(elf, addrs[name], 8, code_only=True)
                points.append(ProbePoint(name, addrs[name] + _skip_endbr(code), name, (name,)))
    return tuple(points)


def _internal(elf: ElfData, addrs: dict[str, int], plain: str, ex: str, internal: str
              ) -> ProbePoint | None:
    if plain not in addrs or ex not in addrs:
        return None
    ex_code = read_vaddr(elf, addrs[ex], 64, code_only=True)
    skip = _skip_endbr(ex_code)
    if _emulated(ex_code[skip:]):
        return None  # the exported functions are cheap already
    target = wrapper_call_target(ex_code, addrs[ex])
    body = read_vaddr(elf, addrs[plain], 512, code_only=True)
    if target is None or not _calls(body, addrs[plain], target):
        return None
    code = read_vaddr(elf, target, 8, code_only=True)
    skip = _skip_endbr(code)
    if not _emulated(code[skip:]) or code[skip:skip + 1] == b"\xe8":
        return None
    return ProbePoint(ex, target + skip, f"{internal}@{target:#x}", (plain, ex))


def _with_file(path: str | Path, fn: Any, default: Any) -> Any:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 64:
                return default
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                return fn(m)
    except (OSError, ValueError):
        return default


def file_exports(path: str | Path, wanted: Iterable[str] = SSL_FUNCTIONS) -> frozenset[str]:
    """exported_functions() of a file on disk (mapped, not read: node is ~100 MB)."""
    result: frozenset[str] = _with_file(path, lambda m: exported_functions(m, wanted),
                                        frozenset())
    return result


def file_probe_points(path: str | Path, exported_only: bool = False) -> tuple[ProbePoint, ...]:
    result: tuple[ProbePoint, ...] = _with_file(
        path, lambda m: probe_points(m, exported_only), ())
    return result


def _stamp(path: str | Path) -> tuple[int, int] | None:
    """(size, mtime_ns): with a build id, what names a file's cached judgement."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def file_stack(path: str | Path) -> stacks.Judgement:
    """stacks.judge() of a file on disk."""
    stamp = _stamp(path)
    found: stacks.Judgement = _with_file(path, lambda m: stacks.judge(m, stamp), stacks.NONE)
    return found


def judge_file(path: str | Path, exported_only: bool = False) -> stacks.Judgement:
    """The TLS stack in a file on disk: exported OpenSSL first, then every other stack."""
    points = file_probe_points(path, exported_only)
    if points:
        return stacks.Judgement("OpenSSL", points)
    return file_stack(path)


def file_readable(path: str | Path) -> bool:
    """Whether obs has probes for a TLS stack in this file (any of those it reads)."""
    return bool(file_probe_points(path)) or bool(file_stack(path).points)


@dataclass(frozen=True)
class Mapping:
    """An executable file mapping from /proc/<pid>/maps."""

    path: str
    dev: int  # os.makedev(major, minor)
    inode: int


def executable_mappings(maps_text: str) -> list[Mapping]:
    """Distinct executable, file-backed mappings of one /proc/<pid>/maps text."""
    seen: dict[tuple[int, int], Mapping] = {}
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
            continue
        path = parts[5]
        if path.endswith(" (deleted)"):
            continue  # the inode may be gone; nothing stable to attach to
        try:
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            inode = int(parts[4])
        except ValueError:
            continue
        if inode == 0:
            continue
        key = (os.makedev(major, minor), inode)
        seen.setdefault(key, Mapping(path, *key))
    return list(seen.values())


@dataclass(frozen=True)
class Library:
    """A file to attach to: `path` opens it from here; `probes` are where (probe_points)."""

    path: str
    probes: tuple[ProbePoint, ...]
    key: tuple[int, int]  # (st_dev, st_ino): one uprobe per inode, however many paths lead to it
    stack: str = "OpenSSL"

    def describe(self) -> str:
        parts = [p.label if p.covers == (p.label,) else f"{'+'.join(p.covers)} via {p.label}"
                 for p in self.probes]
        return f"{self.path} ({self.stack}: {', '.join(parts)})"


@dataclass(frozen=True)
class Unreadable:
    """A file whose TLS stack was found but cannot be read: named once on stderr, listed in
    the heartbeat, and the LlmCalls of processes running it are marked (libobs.net.apijoin)."""

    path: str
    stack: str
    problem: str
    key: tuple[int, int]  # (st_dev, st_ino)

    def line(self) -> str:
        return f"{self.path}: {self.stack}: {self.problem}"

    def fields(self) -> dict[str, str]:
        """The heartbeat's `unreadable_files` entry."""
        return {"path": self.path, "stack": self.stack, "problem": self.problem}


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Finder:
    """Discovers libraries, remembering every inode already judged so rescans stay cheap."""

    def __init__(self, proc: Path = Path("/proc"), exported_only: bool = False):
        self.proc = proc
        self.exported_only = exported_only
        self._judged: dict[tuple[int, int], Library | None] = {}
        self.unreadable: list[Unreadable] = []  # each file whose TLS stack obs cannot read
        # pid -> identity of its executable, as the last two scans saw them: a process that
        # has exited since can still be told (its last call ends when it closes the socket)
        self.exe_keys: list[dict[int, tuple[int, int]]] = [{}, {}]
        self.memo = judgements.Memo(judge_file)  # kept between runs, by file identity

    def check(self, path: str) -> Library | None:
        """The Library at `path` if it holds a TLS stack obs reads, else None (cached per
        inode). A stack it cannot read is added to `unreadable`, once."""
        key = _identity(path)
        if key is None:
            return None
        if key not in self._judged:
            self._judged[key] = self._judge(path, key)
        return self._judged[key]

    def _judge(self, path: str, key: tuple[int, int]) -> Library | None:
        found = self.memo.judge(path, self.exported_only)
        if found.problem:
            self.unreadable.append(Unreadable(path, found.stack or "unknown", found.problem,
                                              key))
        if found.points and found.stack:
            return Library(path, found.points, key, found.stack)
        return None

    def unreadable_at(self, key: tuple[int, int]) -> Unreadable | None:
        return next((u for u in self.unreadable if u.key == key), None)

    def exe_of(self, pid: int) -> tuple[str, tuple[int, int]] | None:
        """An openable path and the identity of a process's executable (None once gone)."""
        link = self.proc / str(pid) / "exe"
        key = _identity(str(link))
        try:
            path = os.readlink(link)
        except OSError:
            return None
        if key is None:
            return None
        if path.endswith(" (deleted)") or _identity(path) != key:
            path = str(self.proc / str(pid) / "root") + path
        return path, key

    def defaults(self) -> list[str]:
        """Paths worth checking even when no running process maps them yet."""
        paths = [*SYSTEM_LIBSSL, *stacks.SYSTEM_LIBRARIES]
        for name in RUNTIME_EXECUTABLES:
            found = shutil.which(name)
            if found:
                paths.append(os.path.realpath(found))
        return paths

    def from_processes(self) -> list[str]:
        """Openable paths of every executable mapping of every running process. A mapping
        whose path leads elsewhere from here (another mount namespace: a container) is
        reached through /proc/<pid>/root."""
        out: list[str] = []
        seen: set[tuple[int, int]] = set()
        exes: dict[int, tuple[int, int]] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            exe = _identity(str(self.proc / entry.name / "exe"))
            if exe is not None:
                exes[int(entry.name)] = exe
            try:
                text = (self.proc / entry.name / "maps").read_text(errors="replace")
            except OSError:
                continue
            for m in executable_mappings(text):
                if (m.dev, m.inode) in seen:
                    continue
                seen.add((m.dev, m.inode))
                if (m.dev, m.inode) in self._judged:
                    continue
                path = m.path
                if _identity(path) != (m.dev, m.inode):
                    path = str(self.proc / entry.name / "root") + m.path
                out.append(path)
        self.exe_keys = [exes, self.exe_keys[0]]  # this scan's and the last one's
        return out

    def new_libraries(self, paths: Iterable[str]) -> list[Library]:
        """Libraries among `paths` not returned before, one per inode, in order."""
        out: list[Library] = []
        for path in paths:
            key = _identity(path)
            if key is None:
                continue
            fresh = key not in self._judged
            lib = self.check(path)
            if fresh and lib is not None:
                out.append(lib)
        return out

    def initial(self, extra: Iterable[str] = ()) -> list[Library]:
        found = self.new_libraries([*extra, *self.defaults(), *judgements.remembered(),
                                    *self.from_processes()])
        self.memo.save()
        return found

    def rescan(self) -> list[Library]:
        return self.new_libraries(self.from_processes())


def _file_offsets(elf: ElfData, groups: dict[tuple[str, bool], list[int]]
                  ) -> dict[tuple[str, bool], list[int]] | None:
    """Each group's virtual addresses as file offsets (what uprobes take), through the code
    segment holding each; None if one lies in none."""
    out: dict[tuple[str, bool], list[int]] = {}
    for key, addrs in groups.items():
        offs = [file_offset(elf, a, code_only=True) for a in addrs]
        if None in offs:
            return None
        out[key] = [at[0] for at in offs if at is not None]
    return out


def uprobes_missing() -> str | None:
    """Why this kernel cannot take uprobes, or None."""
    if bpflink.UPROBE_PMU.exists():
        return None
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(tracefs, "uprobe_events").exists():
            return None
    return "this kernel has no uprobe support (CONFIG_UPROBE_EVENTS)"


class Attacher:
    """Puts the entry/return probes of bpf/ssl.bpf.c on libraries, one slot each.

    Through uprobe_multi links, one per program and library, or, on kernels without them
    (before 6.6) or with OBS_UPROBE_MULTI=0, a uprobe perf event per address. Both are made
    here, not by bcc: Debian's bcc 0.26 Python binding calls bpf_attach_uprobe with one argument
    fewer than its library takes, so every uprobe it made carried a stray ref_ctr_offset
    (seen: 6) — a USDT "semaphore" the kernel would increment in each watched process wherever
    that file offset is mapped writable, and a mismatch that makes the kernel refuse any other
    tool's probe at the same address (EINVAL, "ref_ctr_offset mismatch" in dmesg)."""

    ENTRY = {"SSL_read": "ssl_read_enter_", "SSL_read_ex": "ssl_read_ex_enter_",
             "SSL_write": "ssl_write_enter_", "SSL_write_ex": "ssl_write_ex_enter_",
             **{fn: f"{fn}_enter_" for fn in (*stacks.GNUTLS.values(), *stacks.NSPR.values(),
                                              "go_read", "go_write")}}
    RETURN = {"go_read": "go_read_return"}  # programs for uprobes on RET instructions

    def __init__(self, bpf: Any, links: list[int]):
        self.bpf = bpf
        self.links = links  # link and perf event fds (their Program closes them all at once)
        self.multi: bool | None = None if os.environ.get("OBS_UPROBE_MULTI", "1") != "0" else False
        self.fallback: str | None = None  # why links are not used, to be said once
        self.libs: list[str] = []        # slot -> path (the `lib` of SslContent)
        self.probe_names: list[str] = []  # for the heartbeat's attached_probes
        self._tail_ready = False

    def _load(self, name: str) -> Any:
        from bcc import BPF

        if self.multi is None:
            self.multi = self._multi_works(name)
        return self.bpf.load_func(name.encode(), BPF.KPROBE,
                                  attach_type=bpflink.TRACE_UPROBE_MULTI if self.multi else -1)

    def _multi_works(self, name: str) -> bool:
        """Whether this kernel makes uprobe_multi links: asked for one on a directory, it says
        EBADF (not a regular file); a kernel without them refuses the program or the attach
        type first."""
        from bcc import BPF

        try:
            fn = self.bpf.load_func(name.encode(), BPF.KPROBE,
                                    attach_type=bpflink.TRACE_UPROBE_MULTI)
            os.close(bpflink.uprobe_multi(fn.fd, "/", [0]))
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EBADF:
                return True
            self.fallback = f"a uprobe perf event per address: no uprobe_multi links ({e})"
            tried = self.bpf.funcs.pop(name.encode(), None)
            if tried is not None:  # loaded for links: a perf event takes it loaded plainly
                os.close(tried.fd)
            return False
        return True  # not reached: no link on a directory

    def _go_tail(self) -> None:
        """Go's Write entries tail-call one emitting program (bpf/ssl.bpf.c go_tail), loaded as
        they are (a tail call must not cross attach types)."""
        if not self._tail_ready:
            import ctypes

            self.bpf[b"go_tail"][ctypes.c_int(0)] = ctypes.c_int(self._load("go_write_emit").fd)
            self._tail_ready = True

    def attach(self, lib: Library) -> str | None:
        """Attach every probe point of lib; a one-line reason on failure."""
        if len(self.libs) >= MAX_SLOTS:
            return f"{lib.path}: not attached, all {MAX_SLOTS} library slots are in use"
        slot = len(self.libs)
        groups: dict[tuple[str, bool], list[int]] = {}  # (program, on return) -> addresses
        names: list[str] = []
        for p in lib.probes:
            groups.setdefault((f"{self.ENTRY[p.fn]}{slot}", False), []).append(p.addr)
            names.append(f"uprobe:{lib.path}:{p.label}")
            if p.uretprobe:
                groups.setdefault(("ssl_return", True), []).append(p.addr)
                names.append(f"uretprobe:{lib.path}:{p.label}")
            for at in p.returns:
                groups.setdefault((self.RETURN[p.fn], False), []).append(at)
                names.append(f"uprobe:{lib.path}:{p.label}:ret@{at:#x}")
        offsets = _with_file(lib.path, lambda m: _file_offsets(m, groups), None)
        if offsets is None:
            return f"{lib.path}: cannot attach: a probe address lies in no code segment"
        made: list[int] = []
        try:
            if any(p.fn == "go_write" for p in lib.probes):
                self._go_tail()
            for (prog, ret), offs in offsets.items():
                fd = self._load(prog).fd
                if self.multi:
                    made.append(bpflink.uprobe_multi(fd, lib.path, offs, ret))
                    continue
                for off in offs:
                    made.append(bpflink.uprobe_event(fd, lib.path, off, ret))
        except Exception as e:
            for fd in made:  # leave nothing half-attached
                os.close(fd)
            return f"{lib.path}: cannot attach: {e}"
        self.links += made
        self.libs.append(lib.path)
        self.probe_names += names
        return None


class SslProbes:
    """bpf/ssl.bpf.c compiled and attached to every library found now (and, on `rescan`,
    later): what obs-ssl and obs-llm --api load. `problems` holds one line per library that
    could not be attached and per file whose TLS stack cannot be read, for the tool to print;
    `unreadable` lists the latter (for the heartbeat)."""

    def __init__(self, defines: dict[str, int | bool], extra: Iterable[str | Path] = (),
                 exported_only: bool = False):
        from libobs.kernel.program import (
            Program,  # bcc is imported late (preflight reports it first)
        )

        self.program = Program("ssl.bpf.c", defines)
        self.finder = Finder(exported_only=exported_only)
        self.attacher = Attacher(self.program.bpf, self.program.links)
        self.problems: list[str] = []
        self.attached: list[Library] = []
        # file identity → (wall ns, library) of attaches after start-up: a program first met
        # when it exec'd is read only from then on (unreadable_of names the calls before)
        self.late: dict[tuple[int, int], tuple[int, Library]] = {}
        self._started = False
        self._named = 0  # finder.unreadable lines already passed on
        self.news: list[str] = []  # lines about libraries met between rescans, to be said
        self.attacher.probe_names.append("tracepoint:sched:sched_process_exec")  # execs()
        self._attach(self.finder.initial(str(p) for p in extra))
        self._started = True

    @property
    def unreadable(self) -> list[dict[str, str]]:
        return [u.fields() for u in self.finder.unreadable]

    @property
    def libs(self) -> list[str]:
        """slot -> path; the same list object grows as libraries are added."""
        return self.attacher.libs

    @property
    def probe_names(self) -> list[str]:
        return self.attacher.probe_names

    def describe(self) -> str:
        """One line: what is attached where."""
        return "; ".join(lib.describe() for lib in self.attached)

    def rescan(self) -> list[str]:
        """Attach to libraries that processes started mapping since; a line about each."""
        news, self.news = self.news, []
        return news + self._attach(self.finder.rescan())

    def started(self) -> None:
        """Judge the executables of processes that exec'd since the last call (bpf/ssl.bpf.c
        `execs`), attaching to those obs reads: a program is read from its first request."""
        table = self.program.table("execs")
        pids = [k.value for k in table]  # bcc tables iterate over keys
        for pid in pids:
            with contextlib.suppress(KeyError):
                del table[table.Key(pid)]
            found = self.finder.exe_of(pid)
            if found is not None:
                self.finder.exe_keys[0][pid] = found[1]  # for unreadable_of once it is gone
                self.news += self._attach(self.finder.new_libraries([found[0]]))

    def unreadable_of(self, pid: int, since: int | None = None) -> str | None:
        """`<stack> in <path>` when the executable of process `pid` holds a TLS stack obs
        cannot read, or, for a call that began at wall ns `since`, one obs attached to only
        after that (`…: attached N ms after this call began`); else None. An executable not
        judged yet (started since the last rescan) is judged now, and attached to when
        readable (its lines wait in `news`)."""
        found = self.finder.exe_of(pid)
        if found is not None:
            path, key = found
            self.news += self._attach(self.finder.new_libraries([path]))
        else:  # gone: what the last scans saw it run
            key = next((k[pid] for k in self.finder.exe_keys if pid in k), None)  # type: ignore[assignment]
            if key is None:
                return None
        u = self.finder.unreadable_at(key)
        if u:
            return f"{u.stack} in {u.path}"
        at, lib = self.late.get(key, (0, None))
        if lib is not None and since is not None and at > since:
            late_ms = (at - since) // 1_000_000
            return f"{lib.stack} in {lib.path}: attached {late_ms} ms after this call began"
        return None

    def _attach(self, libs: list[Library]) -> list[str]:
        notes, late = [], False
        for lib in libs:
            problem = self.attacher.attach(lib)
            if self.attacher.fallback:
                notes.append(self.attacher.fallback)
                self.problems.append(self.attacher.fallback)
                self.attacher.fallback = None
            if problem:
                self.problems.append(problem)
            else:
                self.attached.append(lib)
                if self._started:
                    self.late.setdefault(lib.key, (time.time_ns(), lib))
                    judgements.remember(lib.path)  # attached at the next start
                    late = True
            notes.append(problem or f"attached to {lib.describe()}")
        if late:
            self.finder.memo.save()  # their judgements too, once for all attached now
        fresh = [f"not read: {u.line()}" for u in self.finder.unreadable[self._named:]]
        self._named = len(self.finder.unreadable)
        self.problems += fresh
        return notes + fresh
