"""Section headers, symbols and code of ELF64 little-endian files, read totally: any bytes in,
data or "nothing" out, never an exception (the files come from whatever processes map)."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

ElfData = bytes | bytearray | memoryview | mmap.mmap

_EHDR = struct.Struct("<16xHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_PT_LOAD, _PF_X = 1, 1
_SHT_NOBITS = 8
_STT_NOTYPE, _STT_FUNC, _STT_GNU_IFUNC = 0, 2, 10
_STB_GLOBAL, _STB_WEAK = 1, 2
_STV_INTERNAL, _STV_HIDDEN = 1, 2
ERRORS = (struct.error, ValueError, IndexError, UnicodeDecodeError, OverflowError, TypeError)


class Section(NamedTuple):
    name: str
    kind: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


def total(fn: Callable[..., Any], default: Any) -> Callable[..., Any]:
    """fn made total: the parsing errors of hostile bytes give `default`."""
    def wrapped(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except ERRORS:
            return default
    wrapped.__doc__ = fn.__doc__
    return wrapped


def find(data: ElfData, needle: bytes, limit: int | None = None) -> int:
    """data.find(needle) within the first `limit` bytes, without copying an mmap."""
    end = len(data) if limit is None else min(limit, len(data))
    if isinstance(data, memoryview):
        data = bytes(data)  # (callers pass bytes or an mmap; a view is rare and small)
    return int(data.find(needle, 0, end))  # type: ignore[union-attr]


def view(elf: ElfData) -> memoryview | None:
    data = memoryview(elf).cast("B")
    return data if bytes(data[:6]) == b"\x7fELF\x02\x01" else None


def _sections(elf: ElfData) -> list[Section]:
    data = view(elf)
    if data is None:
        return []
    hdr = _EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum, shstrndx = hdr[5], hdr[10], hdr[11], hdr[12]
    if shoff == 0 or shentsize < _SHDR.size or shnum > 65535:
        return []
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    if shstrndx >= len(raw):
        return []
    str_off, str_size = raw[shstrndx][4], raw[shstrndx][5]
    names = bytes(data[str_off:str_off + min(str_size, 1 << 20)])
    out = []
    for name_off, kind, _fl, addr, offset, size, link, _info, _align, entsize in raw:
        end = names.find(b"\0", name_off)
        name = names[name_off:end].decode("ascii", "replace") if end >= 0 else ""
        out.append(Section(name, kind, addr, offset, size, link, entsize))
    return out


sections: Callable[[ElfData], list[Section]] = total(_sections, [])


def section(elf: ElfData, name: str) -> Section | None:
    return next((s for s in sections(elf) if s.name == name), None)


def section_bytes(elf: ElfData, s: Section) -> memoryview:
    """A section's file contents (empty for NOBITS or out of bounds)."""
    data = view(elf)
    if data is None or s.kind == _SHT_NOBITS or s.offset + s.size > len(data):
        return memoryview(b"")
    return data[s.offset:s.offset + s.size]


def _load_segments(elf: ElfData) -> list[tuple[int, int, int, int]]:
    """(flags, offset, vaddr, filesz) of each PT_LOAD."""
    data = view(elf)
    if data is None:
        return []
    phoff, phentsize, phnum = (_EHDR.unpack_from(data, 0)[i] for i in (4, 8, 9))
    out = []
    for i in range(min(phnum, 4096)):
        kind, flags, offset, vaddr, _pa, filesz, _memsz, _align = _PHDR.unpack_from(
            data, phoff + i * phentsize)
        if kind == _PT_LOAD:
            out.append((flags, offset, vaddr, filesz))
    return out


load_segments: Callable[[ElfData], list[tuple[int, int, int, int]]] = total(_load_segments, [])


def file_offset(elf: ElfData, vaddr: int, code_only: bool = False) -> tuple[int, int] | None:
    """Where virtual address `vaddr` lies in the file, and how many of its segment's file
    bytes follow it there; None where no (executable, with code_only) segment has it."""
    for flags, offset, pvaddr, filesz in load_segments(elf):
        if code_only and not flags & _PF_X:
            continue
        if pvaddr <= vaddr < pvaddr + filesz:
            return offset + vaddr - pvaddr, pvaddr + filesz - vaddr
    return None


def read_vaddr(elf: ElfData, vaddr: int, size: int, code_only: bool = False) -> bytes:
    """Up to `size` file bytes at virtual address `vaddr` (b"" where no segment has them)."""
    data = view(elf)
    at = None if data is None else file_offset(elf, vaddr, code_only)
    if data is None or at is None:
        return b""
    start, left = at
    return bytes(data[start:start + min(size, left)])


def _symbols(elf: ElfData, table: str, wanted: frozenset[bytes], exported: bool = False
             ) -> dict[str, tuple[int, int, bool]]:
    """Of `wanted`, the function symbols of section `table` (".dynsym" or ".symtab"):
    name -> (address, size, defined); with `exported`, only the functions the file defines
    for others to call (global or weak, default or protected visibility)."""
    secs = sections(elf)
    tab = next((s for s in secs if s.name == table), None)
    if tab is None or tab.link >= len(secs) or tab.entsize < _SYM.size:
        return {}
    strtab = bytes(section_bytes(elf, secs[tab.link]))
    if not any(w + b"\0" in strtab for w in wanted):
        return {}  # the common case, decided without walking the symbols
    syms = section_bytes(elf, tab)
    if tab.entsize != _SYM.size:
        return {}
    syms = syms[:len(syms) - len(syms) % _SYM.size]
    out: dict[str, tuple[int, int, bool]] = {}
    for name_off, info, other, shndx, value, size in _SYM.iter_unpack(syms):
        kind = info & 0xF
        if kind not in (_STT_NOTYPE, _STT_FUNC, _STT_GNU_IFUNC):  # NOTYPE: imports
            continue
        defined = shndx != 0 and value != 0
        if exported and (not defined or kind == _STT_NOTYPE or other & 3 in (
                _STV_INTERNAL, _STV_HIDDEN) or info >> 4 not in (_STB_GLOBAL, _STB_WEAK)):
            continue
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off:end] if end >= 0 else b""
        if name in wanted:
            out[name.decode()] = (value, size, defined)
    return out


symbols: Callable[..., dict[str, tuple[int, int, bool]]] = total(_symbols, {})


def exported(elf: ElfData, wanted: Iterable[str]) -> dict[str, int]:
    """Of `wanted`, the functions the file exports (.dynsym), with their virtual addresses."""
    found = symbols(elf, ".dynsym", frozenset(w.encode() for w in wanted), exported=True)
    return {name: addr for name, (addr, _size, _defined) in found.items()}
