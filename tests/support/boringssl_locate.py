"""Locate SSL_read and SSL_write in an x86-64 executable with BoringSSL linked in statically and
its symbols stripped (Claude Code's Bun binary) — a research prototype for issue 13.

BoringSSL reports errors with OPENSSL_PUT_ERROR(SSL, reason), which compiles to
ERR_put_error(ERR_LIB_SSL=16, [0,] reason, "<...>/ssl/ssl_lib.cc", __LINE__): the file name is
a string in .rodata and each call site loads its address, the reason and the line as
immediates into the argument registers (which ones depends on the revision, see ABIS). Which reasons a function reports is a property of the source, not of the
compiler, so it identifies functions across releases better than byte signatures:

    SSL_write      ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED (0x42, QUIC), SSL_R_UNINITIALIZED (0xe2),
                   SSL_R_PROTOCOL_IS_SHUTDOWN (0xd7), SSL_R_BAD_LENGTH (0x6f)
    ssl_read_impl  SSL_R_UNINITIALIZED (0xe2), SSL_R_PROTOCOL_IS_SHUTDOWN (0xd7), no 0x42
    SSL_read       only 0x42 (SSL_peek's QUIC check, inlined) and a call to ssl_read_impl

Function starts are found by walking back from a site to a 16-aligned frame-pointer prologue
(push rbp; mov rbp, rsp; Bun keeps frame pointers). Everything is
checked and any doubt is an explicit failure (`Located.error`), never a guess: zero or several
candidates for a function, a missing string, an unexpected code shape.
"""

from __future__ import annotations

import mmap
import re
import struct
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

SHOULD_NOT_HAVE_BEEN_CALLED, UNINITIALIZED, PROTOCOL_IS_SHUTDOWN, BAD_LENGTH = 0x42, 0xE2, 0xD7, 0x6F
ERR_LIB_SSL = 16
PROLOGUE = b"\x55\x48\x89\xe5"  # push rbp; mov rbp, rsp
MAX_FUNC = 64 << 10


@dataclass
class Section:
    name: str
    addr: int
    offset: int
    size: int


@dataclass
class Located:
    path: str
    ssl_write: int | None = None  # virtual addresses
    ssl_read: int | None = None
    read_impl: int | None = None
    file_offsets: dict[str, int] = field(default_factory=dict)  # for uprobes
    error: str | None = None


def sections(data: bytes) -> list[Section]:
    """ELF64 little-endian section headers (named)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = raw[shstrndx][4]

    def name(off: int) -> str:
        end = data.find(b"\0", names + off)
        return data[names + off:end].decode("latin-1")
    return [Section(name(r[0]), r[3], r[4], r[5]) for r in raw if r[1] != 8]  # 8: NOBITS


def _va(secs: list[Section], off: int) -> int | None:
    for s in secs:
        if s.addr and s.offset <= off < s.offset + s.size:
            return s.addr + off - s.offset
    return None


def _nearest_imm(window: bytes, opcode: bytes, at: int) -> int | None:
    """The imm32 of the `opcode imm32` instruction nearest to position `at` in window."""
    best = None
    for m in re.finditer(re.escape(opcode) + b"(....)", window, re.S):
        d = abs(m.start() - at)
        if best is None or d < best[0]:
            best = (d, struct.unpack("<I", m[1])[0])
    return None if best is None else best[1]


# Where ERR_put_error's arguments go, by the BoringSSL revision's signature:
#   (library, unused, reason, file, line): file in rcx, reason in edx, line in r8d
#   (library, reason, file, line):         file in rdx, reason in esi, line in ecx
# as (opcode loading the file, opcode loading the reason, opcode loading the line); mov r32,
# imm32 is b8+reg (ecx b9, edx ba, esi be), mov r8d is 41 b8; lea reg, [rip+d] is 48 8d modrm.
ABIS = ((b"\xb9", b"\x48\x8d\x0d", b"\xba", b"\x41\xb8"),
        (b"\xba", b"\x48\x8d\x15", b"\xbe", b"\xb9"))


def err_sites(data: bytes, text: Section, string_va: int, pie: bool
              ) -> list[tuple[int, int, int]]:
    """(site VA, reason, line) of every ERR_put_error(ERR_LIB_SSL, ...) naming string_va."""
    code = data[text.offset:text.offset + text.size]
    sites = []
    for mov, lea, reason_op, line_op in ABIS:
        if not pie:  # mov r32, imm32 (a non-PIE binary's addresses fit)
            found = [m.start() for m in re.finditer(re.escape(mov + struct.pack("<I", string_va)),
                                                    code)]
        else:
            found = [m.start() for m in re.finditer(re.escape(lea), code)
                     if text.addr + m.start() + 7
                     + struct.unpack_from("<i", code, m.start() + 3)[0] == string_va]
        for i in found:
            lo = max(0, i - 32)
            window = code[lo:i + 40]
            lib = _nearest_imm(window, b"\xbf", i - lo)
            reason = _nearest_imm(window, reason_op, i - lo)
            line = _nearest_imm(window, line_op, i - lo)
            if lib == ERR_LIB_SSL and reason is not None and line is not None:
                sites.append((text.addr + i, reason, line))
    return sites


def function_start(data: bytes, text: Section, va: int) -> int | None:
    """The 16-aligned frame-pointer prologue nearest below va (None beyond MAX_FUNC)."""
    a = va & ~15
    while a > va - MAX_FUNC and a > text.addr:
        o = text.offset + a - text.addr
        if data[o:o + 4] == PROLOGUE:  # after padding, a ret or a jmp: all were seen
            return a
        a -= 16
    return None


def calls(data: bytes, text: Section, start: int, target: int) -> bool:
    """Does the function at start contain `call target` (e8 rel32) before its next prologue?"""
    o = text.offset + start - text.addr
    body = data[o:o + MAX_FUNC]
    nxt = [i for i in range(16, len(body) - 4, 16) if body[i:i + 4] == PROLOGUE][:1]
    body = body[:nxt[0] if nxt else len(body)]
    for m in re.finditer(rb"\xe8", body):
        rel = struct.unpack_from("<i", body, m.start() + 1)[0] if m.start() + 5 <= len(body) else None
        if rel is not None and start + m.start() + 5 + rel == target:
            return True
    return False


def locate(path: str | Path) -> Located:
    res = Located(str(path))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        data = m
        secs = sections(data)  # type: ignore[arg-type]
        text = next((s for s in secs if s.name == ".text"), None)
        if text is None:
            res.error = "not an x86-64 ELF with .text"
            return res
        end = data.find(b"/ssl/ssl_lib.cc\0")
        string_va = _va(secs, data.rfind(b"\0", 0, end) + 1) if end >= 0 else None
        if string_va is None:
            res.error = "no BoringSSL ssl_lib.cc string (not BoringSSL, or built without file names)"
            return res
        by_func: dict[int, set[int]] = defaultdict(set)
        pie = struct.unpack_from("<H", data, 0x10)[0] == 3  # ET_DYN
        for site, reason, _line in err_sites(data, text, string_va, pie):  # type: ignore[arg-type]
            start = function_start(data, text, site)  # type: ignore[arg-type]
            if start is not None:
                by_func[start].add(reason)
        write = [f for f, r in by_func.items()
                 if {SHOULD_NOT_HAVE_BEEN_CALLED, UNINITIALIZED, PROTOCOL_IS_SHUTDOWN,
                     BAD_LENGTH} <= r]
        impl = [f for f, r in by_func.items() if {UNINITIALIZED, PROTOCOL_IS_SHUTDOWN} <= r
                and SHOULD_NOT_HAVE_BEEN_CALLED not in r and BAD_LENGTH not in r]
        if len(write) != 1 or len(impl) != 1:
            res.error = f"ambiguous: {len(write)} SSL_write and {len(impl)} ssl_read_impl candidates"
            return res
        read = [f for f, r in by_func.items() if r == {SHOULD_NOT_HAVE_BEEN_CALLED}
                and calls(data, text, f, impl[0])]  # type: ignore[arg-type]
        if len(read) != 1:
            res.error = f"ambiguous: {len(read)} SSL_read candidates (SSL_peek not inlined?)"
            return res
        res.ssl_write, res.read_impl, res.ssl_read = write[0], impl[0], read[0]
        res.file_offsets = {name: va - text.addr + text.offset for name, va in
                            (("SSL_write", write[0]), ("SSL_read", read[0]))}
    return res


def build_ids(path: str | Path) -> str:
    out = []
    data = Path(path).read_bytes()[:1 << 20]
    for m in re.finditer(rb"Bun v\d+\.\d+\.\d+ \([0-9a-f]+\)", data):
        out.append(m[0].decode())
    return out[0] if out else "?"


if __name__ == "__main__":
    for p in sys.argv[1:]:
        r = locate(p)
        print(p, r.error or {k: hex(v) for k, v in r.file_offsets.items()},
              f"(SSL_write VA {r.ssl_write and hex(r.ssl_write)}, SSL_read VA "
              f"{r.ssl_read and hex(r.ssl_read)})")
