"""Which TLS stack a file holds, and where its plaintext functions are: GnuTLS
(gnutls_record_send/recv), NSS's NSPR I/O layer (PR_Write/PR_Read/PR_Send/PR_Recv), Go's
crypto/tls (gotls), BoringSSL linked in statically without symbols (boringssl: Claude Code's
Bun), or a stack obs cannot read, named so the tool can say so.

NSS: the SSL layer (libssl3) is an NSPR I/O layer pushed on the socket's file descriptor; an
application's PR_Write/PR_Read/PR_Send/PR_Recv on that descriptor enter it with plaintext,
while the layer reaches the socket below through method pointers, not these exports, so the
exported functions never see ciphertext. They do see every other NSPR descriptor's I/O (files,
plain sockets): bpf/ssl.bpf.c skips descriptors with no layer pushed (identity 0).

OpenSSL itself is libssl.py's: this module is asked about files that export no SSL_read.
"""

from __future__ import annotations

from dataclasses import dataclass

from libobs.tls import boringssl, elf, gotls
from libobs.tls.points import ProbePoint

GNUTLS = {"gnutls_record_recv": "gnutls_recv", "gnutls_record_send": "gnutls_send"}
NSPR = {"PR_Read": "pr_read", "PR_Write": "pr_write", "PR_Recv": "pr_recv", "PR_Send": "pr_send"}
SYSTEM_LIBRARIES = (
    "/lib/x86_64-linux-gnu/libgnutls.so.30", "/usr/lib/x86_64-linux-gnu/libgnutls.so.30",
    "/usr/lib64/libgnutls.so.30",
    "/lib/x86_64-linux-gnu/libnspr4.so", "/usr/lib/x86_64-linux-gnu/libnspr4.so",
    "/usr/lib64/libnspr4.so",
)
# Functions whose import marks a file as a client of a shared TLS library obs probes already.
_CLIENT_IMPORTS = frozenset({b"SSL_read", b"SSL_read_ex", b"SSL_write", b"SSL_write_ex",
                             *(n.encode() for n in GNUTLS), *(n.encode() for n in NSPR)})
# A TLS stack's bytes must reach a socket: a dynamically linked file calling none of these
# is not searched for markers.
_SOCKET_CALLS = frozenset({b"connect", b"send", b"sendto", b"sendmsg", b"recv", b"recvfrom",
                           b"recvmsg", b"socket"})
_DYNSYM_WANTED = _CLIENT_IMPORTS | _SOCKET_CALLS
# Byte strings that betray a statically linked TLS stack without exports obs could probe.
MARKERS = (
    (b"rustls", "rustls"),
    (b"BoringSSL", "BoringSSL"),
    (b"wolfSSL", "wolfSSL"),
    (b"mbed TLS ", "Mbed TLS"), (b"Mbed TLS ", "Mbed TLS"),
    (b"ssl/record/rec_layer_s3.c", "OpenSSL (static, SSL_read not exported)"),
    (b"ssl/statem/statem_clnt.c", "OpenSSL (static, SSL_read not exported)"),
    (b"GnuTLS error", "GnuTLS (static, gnutls_record_send not exported)"),
)
MAX_SCAN = 1 << 30  # bytes of a file searched for markers


# What is lost when a file's stack cannot be read (said with the problem, and in the heartbeat).
LOST = "TLS plaintext: model, tokens and request paths of its LLM calls"


@dataclass(frozen=True)
class Judgement:
    """A file's TLS stack: probe points to attach, or a problem to name once, or neither
    (no TLS here)."""

    stack: str | None
    points: tuple[ProbePoint, ...] = ()
    problem: str | None = None


NONE = Judgement(None)


def _exported(data: elf.ElfData, syms: dict[str, tuple[int, int, bool]],
              names: dict[str, str], stack: str) -> Judgement | None:
    defined = {n: syms[n][0] for n in names if n in syms and syms[n][2]}
    if not defined:
        return None
    points = []
    for name, fn in names.items():
        if name in defined:
            code = elf.read_vaddr(data, defined[name], 4, code_only=True)
            skip = 4 if code == b"\xf3\x0f\x1e\xfa" else 0  # endbr64: still the entry
            points.append(ProbePoint(fn, defined[name] + skip, name, (name,)))
    return Judgement(stack, tuple(points))


def judge(data: elf.ElfData, stamp: tuple[int, int] | None = None) -> Judgement:
    """The TLS stack in an ELF file that exports no OpenSSL. `stamp`, the file's (size,
    mtime_ns), lets slow answers (boringssl.plan) be cached."""
    if elf.view(data) is None:
        return NONE
    syms = elf.symbols(data, ".dynsym", _DYNSYM_WANTED)  # one walk of the symbols for all
    for names, stack in ((GNUTLS, "GnuTLS"), (NSPR, "NSS")):
        found = _exported(data, syms, names, stack)
        if found:
            return found
    if gotls.is_go(data):
        plan = gotls.plan(data)
        version = plan.version or "unknown Go version"
        stack = f"Go crypto/tls ({version})" if plan.points else f"Go ({version})"
        return Judgement(stack, plan.points, plan.problem)
    if any(n.encode() in _CLIENT_IMPORTS for n in syms):
        return NONE  # uses a shared library that is judged (and probed) on its own
    if _dynamic(data) and not any(n.encode() in _SOCKET_CALLS for n in syms):
        return NONE  # dynamic, and no socket call: no TLS (spares scanning libicudata & co)
    return static(data, stamp)


def _dynamic(data: elf.ElfData) -> bool:
    """Dynamically linked: a .dynsym with symbols. A static-pie (Codex's musl binary) has a
    .dynsym too, holding only the null symbol."""
    s = elf.section(data, ".dynsym")
    return s is not None and s.entsize > 0 and s.size > s.entsize


def static(data: elf.ElfData, stamp: tuple[int, int] | None = None) -> Judgement:
    """A statically linked TLS stack, by the strings it carries (in .rodata: a tenth of a
    large binary; the whole file where sections are gone): BoringSSL's is located
    (boringssl.plan), the others are named as stacks obs has no probes for."""
    ro = elf.section(data, ".rodata")
    region = elf.section_bytes(data, ro) if ro else elf.view(data)
    if region is None:
        return NONE
    blob = bytes(region[:MAX_SCAN])  # bytes.find is several times faster than re or mmap's
    if boringssl.MARKER in blob:
        found = boringssl.plan(data, stamp)
        if found.points():
            return Judgement(boringssl.STACK, found.points())
        return Judgement(boringssl.STACK, problem=f"SSL_read/SSL_write not located "
                                                  f"({found.error}): {LOST} are lost")
    for needle, stack in MARKERS:
        if needle in blob:
            return Judgement(stack, problem=f"{stack} linked in: obs has no probes for it: "
                                            f"{LOST} are lost")
    return NONE

