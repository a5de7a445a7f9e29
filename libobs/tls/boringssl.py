"""BoringSSL linked statically into a stripped x86-64 executable (Claude Code's Bun binary):
where SSL_read and SSL_write are, with no symbols to say so.

BoringSSL reports errors with OPENSSL_PUT_ERROR(SSL, reason), which compiles to
ERR_put_error(ERR_LIB_SSL=16, [0,] reason, "<...>/ssl/ssl_lib.cc", __LINE__): the file name is a
string in .rodata and each call site loads its address, the reason and the line as immediates
into the argument registers (which ones depends on the revision: ABIS). Which reasons a
function reports is a property of the source, not of the compiler, so it names functions across
releases better than byte signatures or per-build offset tables:

    SSL_write      ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED (0x42, QUIC), SSL_R_UNINITIALIZED (0xe2),
                   SSL_R_PROTOCOL_IS_SHUTDOWN (0xd7), SSL_R_BAD_LENGTH (0x6f)
    ssl_read_impl  SSL_R_UNINITIALIZED (0xe2), SSL_R_PROTOCOL_IS_SHUTDOWN (0xd7), no 0x42
    SSL_read       only 0x42 (SSL_peek's QUIC check, inlined) and a call to ssl_read_impl

Function starts: the 16-aligned frame-pointer prologue (push rbp; mov rbp, rsp) below a site
(Bun keeps frame pointers). Any doubt is an explicit failure (`Located.error`), never a guess:
zero or several candidates for a function, no ssl_lib.cc string, no prologue. Verified on
Claude Code 2.1.110, 2.1.200, 2.1.328 and 2.1.332 (Bun 1.3.13-1.4.6), two ERR_put_error ABIs.

The scan reads all of .text (~1 s for a 400 MB binary): `plan` keeps its result in the root-only
start-up cache (libobs.kernel.cache) under the file's GNU build id, size and mtime.

Everything is total: any bytes in, a `Located` out (with an error), never an exception.
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from dataclasses import dataclass

from libobs.kernel import cache
from libobs.tls import elf
from libobs.tls.points import ProbePoint

MARKER = b"/ssl/ssl_lib.cc\0"  # a BoringSSL built with file names (OPENSSL_PUT_ERROR's)
STACK = "BoringSSL (static)"
SHOULD_NOT_HAVE_BEEN_CALLED, UNINITIALIZED, PROTOCOL_IS_SHUTDOWN, BAD_LENGTH = 0x42, 0xE2, 0xD7, 0x6F
ERR_LIB_SSL = 16
PROLOGUE = b"\x55\x48\x89\xe5"  # push rbp; mov rbp, rsp
MAX_FUNC = 64 << 10
LOCATOR_VERSION = 2  # part of the cache key: a changed locator never trusts an old answer
_ET_DYN = 3
_NT_GNU_BUILD_ID = 3

# Where ERR_put_error's arguments go, by the BoringSSL revision's signature:
#   (library, unused, reason, file, line): file in rcx, reason in edx, line in r8d
#   (library, reason, file, line):         file in rdx, reason in esi, line in ecx
# as (mov loading the file, lea loading the file, mov loading the reason, mov loading the
# line); mov r32, imm32 is b8+reg (ecx b9, edx ba, esi be), mov r8d is 41 b8; lea reg, [rip+d]
# is 48 8d modrm.
ABIS = ((b"\xb9", b"\x48\x8d\x0d", b"\xba", b"\x41\xb8"),
        (b"\xba", b"\x48\x8d\x15", b"\xbe", b"\xb9"))


@dataclass(frozen=True)
class Located:
    """SSL_read/SSL_write virtual addresses, or why they were not found."""

    ssl_read: int | None = None
    ssl_write: int | None = None
    error: str | None = None

    def points(self) -> tuple[ProbePoint, ...]:
        """Probe points for bpf/ssl.bpf.c: OpenSSL's SSL_read/SSL_write calling convention
        (BoringSSL kept it), bytes counted from the return value at a uretprobe."""
        if self.error or self.ssl_read is None or self.ssl_write is None:
            return ()
        return (ProbePoint("SSL_read", self.ssl_read, f"SSL_read@{self.ssl_read:#x}",
                           ("SSL_read",)),
                ProbePoint("SSL_write", self.ssl_write, f"SSL_write@{self.ssl_write:#x}",
                           ("SSL_write",)))


def has_boringssl(data: elf.ElfData) -> bool:
    return elf.view(data) is not None and elf.find(data, MARKER) >= 0


def _nearest_imm(window: bytes, opcode: bytes, at: int) -> int | None:
    """The imm32 of the `opcode imm32` instruction nearest to position `at` in window."""
    best = None
    for m in re.finditer(re.escape(opcode) + b"(....)", window, re.S):
        d = abs(m.start() - at)
        if best is None or d < best[0]:
            best = (d, struct.unpack("<I", m[1])[0])
    return None if best is None else best[1]


def err_sites(code: bytes, text_va: int, string_va: int, pie: bool) -> list[tuple[int, int]]:
    """(site VA, reason) of every ERR_put_error(ERR_LIB_SSL, ...) naming string_va in code."""
    sites = []
    for mov, lea, reason_op, line_op in ABIS:
        if not pie:  # mov r32, imm32: a non-PIE binary's addresses fit
            if string_va >= 1 << 32:
                continue
            found = [m.start() for m in re.finditer(re.escape(mov + struct.pack("<I", string_va)),
                                                    code)]
        else:
            found = [m.start() for m in re.finditer(re.escape(lea), code)
                     if m.start() + 7 <= len(code) and text_va + m.start() + 7
                     + struct.unpack_from("<i", code, m.start() + 3)[0] == string_va]
        for i in found:
            lo = max(0, i - 32)
            window = code[lo:i + 40]
            lib = _nearest_imm(window, b"\xbf", i - lo)  # edi: the library
            reason = _nearest_imm(window, reason_op, i - lo)
            line = _nearest_imm(window, line_op, i - lo)
            if lib == ERR_LIB_SSL and reason is not None and line is not None:
                sites.append((text_va + i, reason))
    return sites


def function_start(code: bytes, text_va: int, va: int) -> int | None:
    """The 16-aligned frame-pointer prologue nearest below va (None beyond MAX_FUNC). After
    int3 padding, a ret or a jmp: all were seen."""
    a = va & ~15
    while a > va - MAX_FUNC and a >= text_va:
        o = a - text_va
        if code[o:o + 4] == PROLOGUE:
            return a
        a -= 16
    return None


def calls(code: bytes, text_va: int, start: int, target: int) -> bool:
    """Does the function at start contain `call target` (e8 rel32) before the next prologue?"""
    o = start - text_va
    body = code[o:o + MAX_FUNC]
    nxt = next((i for i in range(16, len(body) - 4, 16) if body[i:i + 4] == PROLOGUE), len(body))
    body = body[:nxt]
    at = body.find(b"\xe8")
    while 0 <= at <= len(body) - 5:
        if start + at + 5 + struct.unpack_from("<i", body, at + 1)[0] == target:
            return True
        at = body.find(b"\xe8", at + 1)
    return False


def _string_va(data: elf.ElfData, secs: list[elf.Section]) -> int | None:
    end = elf.find(data, MARKER)
    if end < 0:
        return None
    start = bytes(memoryview(data)[max(0, end - 512):end]).rfind(b"\0")
    off = (max(0, end - 512) + start + 1) if start >= 0 else max(0, end - 512)
    for s in secs:
        if s.addr and s.kind != 8 and s.offset <= off < s.offset + s.size:
            return s.addr + off - s.offset
    return None


def _locate(data: elf.ElfData) -> Located:
    view = elf.view(data)
    if view is None:
        return Located(error="not an x86-64 ELF file")
    secs = elf.sections(data)
    text = next((s for s in secs if s.name == ".text"), None)
    if text is None:
        return Located(error="no .text section")
    string_va = _string_va(data, secs)
    if string_va is None:
        return Located(error="no BoringSSL ssl_lib.cc string")
    code = bytes(elf.section_bytes(data, text))
    pie = struct.unpack_from("<H", view, 0x10)[0] == _ET_DYN
    by_func: dict[int, set[int]] = defaultdict(set)
    for site, reason in err_sites(code, text.addr, string_va, pie):
        start = function_start(code, text.addr, site)
        if start is not None:
            by_func[start].add(reason)
    write = [f for f, r in by_func.items()
             if {SHOULD_NOT_HAVE_BEEN_CALLED, UNINITIALIZED, PROTOCOL_IS_SHUTDOWN, BAD_LENGTH} <= r]
    impl = [f for f, r in by_func.items() if {UNINITIALIZED, PROTOCOL_IS_SHUTDOWN} <= r
            and SHOULD_NOT_HAVE_BEEN_CALLED not in r and BAD_LENGTH not in r]
    if len(write) != 1 or len(impl) != 1:
        how = "not found" if not write or not impl else "ambiguous"
        return Located(error=f"{how}: {len(write)} SSL_write and {len(impl)} ssl_read_impl "
                             f"candidates among {len(by_func)} functions reporting ssl_lib.cc "
                             "errors")
    read = [f for f, r in by_func.items() if r == {SHOULD_NOT_HAVE_BEEN_CALLED}
            and calls(code, text.addr, f, impl[0])]
    if len(read) != 1:
        return Located(error=f"{'not found' if not read else 'ambiguous'}: {len(read)} SSL_read "
                             "candidates")
    return Located(ssl_read=read[0], ssl_write=write[0])


locate = elf.total(_locate, Located(error="malformed ELF file"))
locate.__doc__ = "SSL_read/SSL_write of the BoringSSL linked into an ELF file (see the module)."


def _build_id(data: elf.ElfData) -> str | None:
    s = elf.section(data, ".note.gnu.build-id")
    note = bytes(elf.section_bytes(data, s)[:256]) if s else b""
    if len(note) < 16:
        return None
    namesz, descsz, kind = struct.unpack_from("<III", note, 0)
    desc = 12 + (namesz + 3) // 4 * 4
    if kind != _NT_GNU_BUILD_ID or note[12:12 + namesz] != b"GNU\0" or desc + descsz > len(note):
        return None
    return note[desc:desc + descsz].hex()


build_id = elf.total(_build_id, None)
build_id.__doc__ = "The GNU build id (hex) of an ELF file's .note.gnu.build-id, or None."


def plan(data: elf.ElfData, stamp: tuple[int, int] | None = None) -> Located:
    """locate(), cached when the file has a build id and `stamp` ((size, mtime_ns) of the
    file) is known: the ~1 s scan is done once per build and machine."""
    bid = build_id(data)
    if bid is None or stamp is None:
        return locate(data)
    name = cache.key("boringssl", LOCATOR_VERSION, bid, list(stamp))

    def compute() -> dict[str, int | str | None]:
        found = locate(data)
        return {"ssl_read": found.ssl_read, "ssl_write": found.ssl_write, "error": found.error}
    value = cache.cached_json("boringssl", name, compute)
    if not isinstance(value, dict) or not all(
            isinstance(value.get(k), t) for k, t in (("ssl_read", (int, type(None))),
                                                     ("ssl_write", (int, type(None))),
                                                     ("error", (str, type(None))))):
        return locate(data)
    return Located(value["ssl_read"], value["ssl_write"], value["error"])
