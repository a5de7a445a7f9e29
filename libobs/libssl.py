"""Which files to put OpenSSL uprobes on: shared libssl builds and binaries with OpenSSL linked
in statically that export its API (nodesource's node does).

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
import mmap
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSL_FUNCTIONS = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex")
SYSTEM_LIBSSL = (
    "/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3", "/usr/lib/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.1.1", "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.1.1",
)
RUNTIME_EXECUTABLES = ("node", "nodejs")  # known to ship OpenSSL statically, with exports
MAX_SLOTS = 16  # entry-probe sets compiled into bpf/ssl.bpf.c (SSL_SLOT)

ElfData = bytes | bytearray | memoryview | mmap.mmap

_EHDR = struct.Struct("<16xHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHT_DYNSYM = 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_STB_GLOBAL, _STB_WEAK = 1, 2
_STV_HIDDEN, _STV_INTERNAL = 2, 1


def exported_functions(elf: ElfData, wanted: Iterable[str] = SSL_FUNCTIONS) -> frozenset[str]:
    """Of `wanted`, the functions an ELF64 little-endian file defines and exports (.dynsym)."""
    data = memoryview(elf).cast("B")
    try:
        return _exported(data, [w.encode() for w in wanted])
    except (struct.error, ValueError, IndexError, UnicodeDecodeError):
        return frozenset()


def _exported(data: memoryview, wanted: list[bytes]) -> frozenset[str]:
    if bytes(data[:6]) != b"\x7fELF\x02\x01":  # 64-bit, little-endian
        return frozenset()
    (_type, _machine, _version, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
     shentsize, shnum, _shstrndx) = _EHDR.unpack_from(data, 0)
    if shentsize < _SHDR.size or shoff == 0:
        return frozenset()
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    for _name, kind, _fl, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != _SHT_DYNSYM or link >= len(sections) or entsize < _SYM.size:
            continue
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = data[str_off:str_off + str_size]
        if len(strtab) != str_size:
            return frozenset()
        raw_strtab = bytes(strtab)
        if not any(w + b"\0" in raw_strtab for w in wanted):
            return frozenset()  # the common case, decided without walking the symbols
        return _defined(data[offset:offset + size], entsize, raw_strtab, set(wanted))
    return frozenset()


def _defined(symtab: memoryview, entsize: int, strtab: bytes, wanted: set[bytes]) -> frozenset[str]:
    found: set[str] = set()
    for i in range(len(symtab) // entsize):
        name_off, info, other, shndx, _value, _size = _SYM.unpack_from(symtab, i * entsize)
        if shndx == 0 or info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC):
            continue  # undefined (imported) or not a function
        if info >> 4 not in (_STB_GLOBAL, _STB_WEAK) or other & 3 in (_STV_HIDDEN, _STV_INTERNAL):
            continue
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off:end] if end >= 0 else b""
        if name in wanted:
            found.add(name.decode())
    return frozenset(found)


def file_exports(path: str | Path, wanted: Iterable[str] = SSL_FUNCTIONS) -> frozenset[str]:
    """exported_functions() of a file on disk (mapped, not read: node is ~100 MB)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 64:
                return frozenset()
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                return exported_functions(m, wanted)
    except (OSError, ValueError):
        return frozenset()


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
    """A file to attach to: `path` opens it from here, `functions` are its exported SSL calls."""

    path: str
    functions: tuple[str, ...]
    key: tuple[int, int]  # (st_dev, st_ino): one uprobe per inode, however many paths lead to it


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Finder:
    """Discovers libraries, remembering every inode already judged so rescans stay cheap."""

    def __init__(self, proc: Path = Path("/proc")):
        self.proc = proc
        self._judged: dict[tuple[int, int], Library | None] = {}

    def check(self, path: str) -> Library | None:
        """The Library at `path` if it exports any SSL function, else None (cached per inode)."""
        key = _identity(path)
        if key is None:
            return None
        if key not in self._judged:
            funcs = file_exports(path)
            found = tuple(f for f in SSL_FUNCTIONS if f in funcs)
            self._judged[key] = Library(path, found, key) if found else None
        return self._judged[key]

    def defaults(self) -> list[str]:
        """Paths worth checking even when no running process maps them yet."""
        paths = list(SYSTEM_LIBSSL)
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
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
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
        return self.new_libraries([*extra, *self.defaults(), *self.from_processes()])

    def rescan(self) -> list[Library]:
        return self.new_libraries(self.from_processes())


def uprobes_missing() -> str | None:
    """Why this kernel cannot take uprobes, or None."""
    if Path("/sys/bus/event_source/devices/uprobe/type").exists():
        return None
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(tracefs, "uprobe_events").exists():
            return None
    return "this kernel has no uprobe support (CONFIG_UPROBE_EVENTS)"


class Attacher:
    """Puts the entry/return probes of bpf/ssl.bpf.c on libraries, one slot each."""

    ENTRY = {"SSL_read": "ssl_read_enter_", "SSL_read_ex": "ssl_read_ex_enter_",
             "SSL_write": "ssl_write_enter_", "SSL_write_ex": "ssl_write_ex_enter_"}

    def __init__(self, bpf: Any):
        self.bpf = bpf
        self.libs: list[str] = []        # slot -> path (the `lib` of SslContent)
        self.probe_names: list[str] = []  # for the heartbeat's attached_probes

    def attach(self, lib: Library) -> str | None:
        """Attach to every SSL function lib exports; a one-line reason on failure."""
        if len(self.libs) >= MAX_SLOTS:
            return f"{lib.path}: not attached, all {MAX_SLOTS} library slots are in use"
        slot = len(self.libs)
        done: list[str] = []
        for fn in lib.functions:
            try:
                self.bpf.attach_uprobe(name=lib.path.encode(), sym=fn.encode(),
                                       fn_name=f"{self.ENTRY[fn]}{slot}".encode())
                self.bpf.attach_uretprobe(name=lib.path.encode(), sym=fn.encode(),
                                          fn_name=b"ssl_return")
            except Exception as e:
                for name in done:  # leave nothing half-attached
                    self._detach(lib.path, name)
                return f"{lib.path}: cannot attach {fn}: {e}"
            done.append(fn)
        self.libs.append(lib.path)
        for fn in done:
            self.probe_names += [f"uprobe:{lib.path}:{fn}", f"uretprobe:{lib.path}:{fn}"]
        return None

    def _detach(self, path: str, fn: str) -> None:
        for detach in (self.bpf.detach_uprobe, self.bpf.detach_uretprobe):
            with contextlib.suppress(Exception):  # best effort: cleanup() detaches the rest
                detach(name=path.encode(), sym=fn.encode())


class SslProbes:
    """bpf/ssl.bpf.c compiled and attached to every library found now (and, on `rescan`,
    later): what obs-ssl and obs-llm --api load. `problems` holds one line per library that
    could not be attached, for the tool to print."""

    def __init__(self, defines: dict[str, int | bool], extra: Iterable[str] = (),
                 finder: Finder | None = None):
        from libobs.probes import Program  # bcc is imported late (preflight reports it first)

        self.program = Program("ssl.bpf.c", defines)
        self.finder = finder or Finder()
        self.attacher = Attacher(self.program.bpf)
        self.problems: list[str] = []
        self.attached: dict[str, tuple[str, ...]] = {}
        self._attach(self.finder.initial(extra))

    @property
    def libs(self) -> list[str]:
        """slot -> path; the same list object grows as libraries are added."""
        return self.attacher.libs

    @property
    def probe_names(self) -> list[str]:
        return self.attacher.probe_names

    def describe(self) -> str:
        """One line: what is attached where."""
        return "; ".join(f"{path} ({', '.join(fns)})" for path, fns in self.attached.items())

    def rescan(self) -> list[str]:
        """Attach to libraries that processes started mapping since; a line about each."""
        return self._attach(self.finder.rescan())

    def _attach(self, libs: list[Library]) -> list[str]:
        notes = []
        for lib in libs:
            problem = self.attacher.attach(lib)
            if problem:
                self.problems.append(problem)
            else:
                self.attached[lib.path] = lib.functions
            notes.append(problem or f"attached to {lib.path} ({', '.join(lib.functions)})")
        return notes
