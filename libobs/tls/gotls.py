"""Go's crypto/tls in a Go binary: where (*Conn).Read and (*Conn).Write are, found through the
function table every Go binary keeps (.gopclntab, also in stripped ones), and where Read
returns (its RET instructions, by disassembly: Go moves goroutine stacks, which breaks
uretprobes' return-address swap, so peers and obs put plain uprobes on each RET).

Only the register ABI (Go >= 1.17 on amd64) is read: arguments in RAX (receiver), RBX (buffer),
RCX (length), Read's count in RAX at RET, the goroutine in R14. Everything here is total: a
hostile or truncated file gives a `GoPlan` with a problem, never an exception.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

from libobs.tls import elf
from libobs.tls.points import ProbePoint

READ = "crypto/tls.(*Conn).Read"
WRITE = "crypto/tls.(*Conn).Write"
BUILDINFO_MAGIC = b"\xff Go buildinf:"
# pclntab magics: Go 1.20+, 1.18-1.19, 1.16-1.17, 1.2-1.15
MAGIC_120, MAGIC_118, MAGIC_116, MAGIC_12 = 0xFFFFFFF1, 0xFFFFFFF0, 0xFFFFFFFA, 0xFFFFFFFB
_MAGICS = (MAGIC_120, MAGIC_118, MAGIC_116, MAGIC_12)
MAX_FUNC = 1 << 20  # bytes of one function disassembled at most
_VERSION = re.compile(rb"go1\.(\d+)(?:\.\d+)?")


# ---- is it Go, which Go ------------------------------------------------------------------------

def is_go(data: elf.ElfData) -> bool:
    """A Go binary: Go's sections, or (section headers gone) its build-info magic."""
    names = {s.name for s in elf.sections(data)}
    if names & {".go.buildinfo", ".gopclntab", ".note.go.buildid"}:
        return True
    return not names and elf.view(data) is not None and elf.find(data, BUILDINFO_MAGIC) >= 0


def _go_version(data: elf.ElfData) -> str | None:
    """The Go release that built the binary ("go1.19.8"), from its build info."""
    s = elf.section(data, ".go.buildinfo")
    blob = bytes(elf.section_bytes(data, s)[:4096]) if s else b""
    at = blob.find(BUILDINFO_MAGIC)
    if at < 0:
        at = elf.find(data, BUILDINFO_MAGIC)
        blob = bytes(memoryview(data)[at:at + 4096]) if at >= 0 else b""
        at = 0
    blob = blob[at:]
    if len(blob) < 32:
        return None
    ptr_size, flags = blob[14], blob[15]
    if flags & 2:  # Go 1.18+: varint-prefixed strings follow the header
        n, i = _uvarint(blob, 32)
        version = blob[i:i + n]
    else:  # older: pointers to string headers
        if ptr_size != 8:
            return None
        (ptr,) = struct.unpack_from("<Q", blob, 16)
        head = elf.read_vaddr(data, ptr, 16)
        if len(head) < 16:
            return None
        sptr, slen = struct.unpack("<QQ", head)
        version = elf.read_vaddr(data, sptr, min(slen, 64))
    m = _VERSION.fullmatch(version)
    return version.decode() if m else None


go_version = elf.total(_go_version, None)


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while i < len(b) and shift < 64:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        if not c & 0x80:
            return n, i
        shift += 7
    raise ValueError("bad varint")


def minor(version: str | None) -> int | None:
    m = _VERSION.fullmatch(version.encode()) if version else None
    return int(m.group(1)) if m else None


# ---- the function table ------------------------------------------------------------------------

@dataclass(frozen=True)
class Pclntab:
    magic: int
    data: memoryview
    text_start: int  # Go 1.18+: function entries are offsets from here

    @property
    def register_abi_possible(self) -> bool:
        """Go 1.16-1.17 share a magic; only 1.17 has the register ABI."""
        return self.magic in (MAGIC_120, MAGIC_118, MAGIC_116)


def _header_ok(b: memoryview) -> bool:
    return (len(b) >= 64 and int.from_bytes(b[:4], "little") in _MAGICS
            and b[4] == 0 and b[5] == 0 and b[6] in (1, 2, 4) and b[7] == 8)


def _pclntab(data: elf.ElfData) -> Pclntab | None:
    s = elf.section(data, ".gopclntab")
    tab = elf.section_bytes(data, s) if s else memoryview(b"")
    if not _header_ok(tab):  # sections stripped or moved (PIE: .data.rel.ro): find the header
        tab = memoryview(b"")
        view = elf.view(data)
        for magic in _MAGICS:
            needle = struct.pack("<I", magic) + b"\0\0\x01\x08"
            at = elf.find(data, needle)
            if view is not None and at >= 0 and _header_ok(view[at:at + 64]):
                tab = view[at:]
                break
    if not _header_ok(tab):
        return None
    magic = int.from_bytes(tab[:4], "little")
    text = 0
    if magic in (MAGIC_120, MAGIC_118):
        text = int.from_bytes(tab[24:32], "little")
        if text == 0:  # PIE: relocated at load; the file's .text address is the link one
            t = elf.section(data, ".text")
            text = t.addr if t else 0
    return Pclntab(magic, tab, text)


pclntab = elf.total(_pclntab, None)


def _functions(tab: Pclntab, wanted: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Of `wanted`, the functions in the table: name -> (entry vaddr, end vaddr)."""
    b = tab.data
    word = struct.Struct("<Q")

    def w(i: int) -> int:
        return int(word.unpack_from(b, 8 + 8 * i)[0])

    nfunc = w(0)
    if tab.magic in (MAGIC_120, MAGIC_118):
        names, functab = w(3), w(7)
        entry_fmt, name_base = struct.Struct("<II"), names
    elif tab.magic == MAGIC_116:
        names, functab = w(2), w(6)
        entry_fmt, name_base = struct.Struct("<QQ"), names
    else:
        functab, names = 8 + 8, 0
        entry_fmt, name_base = struct.Struct("<QQ"), 0
    if nfunc > len(b) // entry_fmt.size:
        return {}
    want = {n.encode() + b"\0": n for n in wanted}
    out: dict[str, tuple[int, int]] = {}
    base = functab if tab.magic != MAGIC_12 else 0
    rows = memoryview(b)[functab:functab + (nfunc + 1) * entry_fmt.size]
    entries = list(entry_fmt.iter_unpack(rows[:nfunc * entry_fmt.size]))
    if len(entries) != nfunc:
        return {}
    for i, (entry, funcoff) in enumerate(entries):
        nameoff = int.from_bytes(b[base + funcoff + entry_fmt.size // 2:
                                   base + funcoff + entry_fmt.size // 2 + 4], "little", signed=True)
        start = name_base + nameoff
        name = bytes(b[start:start + 64])
        for key, n in want.items():
            if name.startswith(key):
                if i + 1 < nfunc:
                    end = entries[i + 1][0]
                else:  # the table's final entry: the end of the last function
                    end = entry_fmt.unpack_from(rows, nfunc * entry_fmt.size)[0]
                text = tab.text_start if tab.magic in (MAGIC_120, MAGIC_118) else 0
                out[n] = (text + entry, text + end)
        if len(out) == len(want):
            break
    return out


functions = elf.total(_functions, {})


# ---- probe points from code --------------------------------------------------------------------

def _disassembler():  # type: ignore[no-untyped-def]
    import capstone  # a dependency of this module only (pyproject: capstone)

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def rets(code: bytes, vaddr: int) -> list[int] | None:
    """Addresses of every RET in a function's code (at vaddr), or None when the code does not
    disassemble to its end (then a RET could be missed: better not to probe at all)."""
    if not code:
        return None
    out, end = [], 0
    for addr, size, mnemonic, _ops in _disassembler().disasm_lite(code, vaddr):
        if mnemonic in ("ret", "retq"):
            out.append(addr)
        end = addr + size - vaddr
    trailing = code[end:]
    if trailing.strip(b"\xcc\x90\x00"):  # only padding may follow the last instruction
        return None
    return out


def after_prologue(code: bytes, vaddr: int) -> int:
    """Where the entry probe goes: past Go's stack check (`cmp ..(%r14), ..; jbe morestack`),
    and there, if the straight-line code that follows reaches an instruction x86 uprobes
    emulate (nop, push, call, jmp) before anything writes RAX, RBX, RCX or R14, on that one.

    Past the check: when the stack must grow the function re-runs from its entry after
    runtime.morestack, so a probe at the entry would see that call twice. An emulated
    instruction: Go 1.17-1.20 prologues start with `sub $n, %rsp`, which a uprobe must
    single-step, several times dearer. The entry itself where no check is found."""
    import capstone
    from capstone import x86

    cs = _disassembler()
    cs.detail = True
    at, seen_check, past = vaddr, False, None
    for n, insn in enumerate(cs.disasm(code[:256], vaddr)):
        if past is None:
            if insn.mnemonic == "cmp" and "r14" in insn.op_str:
                seen_check = True
            elif seen_check and insn.mnemonic in ("jbe", "jna"):
                past = insn.address + insn.size
                at = past
            elif n >= 4:
                return vaddr
            continue
        if _emulated(bytes(insn.bytes)):
            return int(insn.address)
        _read, written = insn.regs_access()
        if set(written) & _arg_regs() or insn.group(capstone.CS_GRP_JUMP) or \
                insn.group(capstone.CS_GRP_RET) or insn.group(capstone.CS_GRP_INT) or \
                insn.id == x86.X86_INS_INVALID or n > 48:
            break
    return at


def _emulated(b: bytes) -> bool:
    """nop, push, call and relative jumps: what x86 uprobes emulate instead of single-step."""
    if not b:
        return False
    if b[0] in (0x90, 0xE8, 0xE9, 0xEB) or 0x50 <= b[0] <= 0x57 or 0x70 <= b[0] <= 0x7F:
        return True
    return len(b) > 1 and ((b[0] == 0x41 and 0x50 <= b[1] <= 0x57)
                           or (b[0] == 0x0F and 0x80 <= b[1] <= 0x8F))


@functools.cache
def _arg_regs() -> frozenset[int]:
    """RAX, RBX, RCX, R14 and their parts, as capstone numbers them."""
    from capstone import x86

    names = ["RAX", "EAX", "AX", "AL", "AH", "RBX", "EBX", "BX", "BL", "BH",
             "RCX", "ECX", "CX", "CL", "CH", "R14", "R14D", "R14W", "R14B"]
    return frozenset(getattr(x86, f"X86_REG_{n}") for n in names)


@dataclass(frozen=True)
class GoPlan:
    """What to attach in a Go binary, or why nothing can be."""

    version: str | None
    points: tuple[ProbePoint, ...] = ()
    problem: str | None = None


def plan(data: elf.ElfData) -> GoPlan:
    """Probe points for crypto/tls in a Go binary (is_go(data) is assumed)."""
    try:
        return _plan(data)
    except elf.ERRORS as e:
        return GoPlan(None, problem=f"Go binary unreadable ({e.__class__.__name__})")


def _plan(data: elf.ElfData) -> GoPlan:
    version = go_version(data)
    tab = pclntab(data)
    if tab is None:
        return GoPlan(version, problem="Go binary without a readable .gopclntab")
    v = minor(version)
    if not tab.register_abi_possible or (v is not None and v < 17) or \
            (v is None and tab.magic == MAGIC_116):
        return GoPlan(version, problem=f"Go {version or '< 1.17'} passes arguments on the "
                                       "stack (only the register ABI, Go >= 1.17, is read)")
    found = functions(tab, (READ, WRITE))
    if set(found) != {READ, WRITE}:
        return GoPlan(version, problem="Go binary without crypto/tls.(*Conn).Read/Write "
                                       "(its TLS, if any, is not Go's crypto/tls)")
    points = []
    for name, fn in ((READ, "go_read"), (WRITE, "go_write")):
        entry, end = found[name]
        if not 0 < end - entry <= MAX_FUNC:
            return GoPlan(version, problem=f"{name}: implausible size {end - entry}")
        code = elf.read_vaddr(data, entry, end - entry, code_only=True)
        at = after_prologue(code, entry)
        returns: tuple[int, ...] = ()
        if name == READ:  # Write is captured at entry (bpf/ssl.bpf.c says why)
            found_rets = rets(code, entry)
            if not found_rets:
                return GoPlan(version, problem=f"{name}: its RET instructions were not found")
            returns = tuple(found_rets)
        label = name.removeprefix("crypto/tls.")
        points.append(ProbePoint(fn, at, label, (name,), returns, uretprobe=False))
    return GoPlan(version, tuple(points))
