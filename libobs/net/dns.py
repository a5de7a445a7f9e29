"""DNS messages (RFC 1035) parsed in userspace from untrusted bytes.

Hand-written rather than built on dnslib: dnslib is a test-only dependency, and the parser
must be total — any bytes in, a result or None out. Compression pointers are followed at most
_MAX_JUMPS times, so pointer cycles end instead of looping.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_HEADER_LEN = 12
_QR = 0x8000
_MAX_NAME = 255  # wire length limit of a name (RFC 1035 3.1)
_MAX_JUMPS = 64  # a real name never needs more than a few pointers
_CLASS_IN = 1
_TYPE_A, _TYPE_CNAME, _TYPE_AAAA = 1, 5, 28

_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 39: "DNAME", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 255: "ANY", 257: "CAA",
}  # fmt: skip


@dataclass(frozen=True)
class DnsQuery:
    id: int
    query: str  # lowercased, no trailing dot; "." for the root
    qtype: str  # mnemonic, or "TYPE<n>" (RFC 3597) when unknown


@dataclass(frozen=True)
class DnsAnswer:
    id: int
    query: str
    qtype: str
    answers: list[str]  # A/AAAA addresses and CNAME targets, in wire order


class _Malformed(Exception):
    """The message ends early or breaks a wire-format rule."""


def qtype_name(qtype: int) -> str:
    return _QTYPES.get(qtype, f"TYPE{qtype}")


def parse_query(data: bytes, tcp: bool = False) -> DnsQuery | None:
    """The first question of a DNS query (QR clear), or None."""
    try:
        msg = _message(bytes(data), tcp)
        ident, flags, qdcount = _header(msg)
        if flags & _QR or qdcount == 0:
            return None
        name, qtype, _ = _question(msg, _HEADER_LEN)
        return DnsQuery(ident, name, qtype_name(qtype))
    except Exception:  # untrusted input: anything unexpected means "not a query"
        return None


def parse_response(data: bytes, tcp: bool = False) -> DnsAnswer | None:
    """The first question of a DNS response (QR set) and its A/AAAA/CNAME answers, or None.

    A response cut short after its question keeps the answers that were complete: the
    kernel may capture only a prefix of a large response.
    """
    try:
        msg = _message(bytes(data), tcp)
        ident, flags, qdcount = _header(msg)
        if not flags & _QR or qdcount == 0:
            return None
        name, qtype, pos = _question(msg, _HEADER_LEN)
        return DnsAnswer(ident, name, qtype_name(qtype), _answers(msg, pos, qdcount))
    except Exception:  # untrusted input: anything unexpected means "not a response"
        return None


def _message(data: bytes, tcp: bool) -> bytes:
    """Strip DNS-over-TCP's 2-byte length prefix; keep what we have if it claims more."""
    if not tcp:
        return data
    if len(data) < 2:
        raise _Malformed
    return data[2 : 2 + int.from_bytes(data[:2], "big")]


def _header(msg: bytes) -> tuple[int, int, int]:
    """(id, flags, qdcount)."""
    if len(msg) < _HEADER_LEN:
        raise _Malformed
    return _u16(msg, 0), _u16(msg, 2), _u16(msg, 4)


def _answers(msg: bytes, pos: int, qdcount: int) -> list[str]:
    answers: list[str] = []
    try:
        for _ in range(qdcount - 1):  # only the first question counts; skip the rest
            pos = _question(msg, pos)[2]
        for _ in range(_u16(msg, 6)):
            answer, pos = _record(msg, pos)
            if answer is not None:
                answers.append(answer)
    except _Malformed:
        pass  # truncated: keep the complete records before the cut
    return answers


def _question(msg: bytes, pos: int) -> tuple[str, int, int]:
    """(name, qtype, position after the question)."""
    name, pos = _name(msg, pos)
    qtype = _u16(msg, pos)
    _u16(msg, pos + 2)  # qclass: must be present, value ignored (mDNS sets its top bit)
    return name, qtype, pos + 4


def _record(msg: bytes, pos: int) -> tuple[str | None, int]:
    """(A/AAAA/CNAME answer text or None, position after the record)."""
    _, pos = _name(msg, pos)
    rtype, rclass, rdlength = _u16(msg, pos), _u16(msg, pos + 2), _u16(msg, pos + 8)
    start, end = pos + 10, pos + 10 + rdlength
    if end > len(msg):
        raise _Malformed
    if rclass & 0x7FFF != _CLASS_IN:  # top bit is mDNS cache-flush
        return None, end
    rdata = msg[start:end]
    if rtype == _TYPE_A and rdlength == 4:
        return str(ipaddress.IPv4Address(rdata)), end
    if rtype == _TYPE_AAAA and rdlength == 16:
        return str(ipaddress.IPv6Address(rdata)), end
    if rtype == _TYPE_CNAME:
        target, target_end = _name(msg, start)
        return (target if target_end == end else None), end
    return None, end


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """(presentation-form name, position after the name where it started)."""
    labels: list[str] = []
    wire_len = 1
    after: int | None = None  # set at the first pointer: the name ends there in the stream
    jumps = 0
    while True:
        length = _u8(msg, pos)
        if length & 0xC0 == 0xC0:
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise _Malformed
            if after is None:
                after = pos + 2
            pos = ((length & 0x3F) << 8) | _u8(msg, pos + 1)
            continue
        if length & 0xC0:  # 0x40/0x80: extended/reserved label types
            raise _Malformed
        if length == 0:
            break
        wire_len += length + 1
        if wire_len > _MAX_NAME or pos + 1 + length > len(msg):
            raise _Malformed
        labels.append(_label(msg[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return (".".join(labels) or "."), (after if after is not None else pos + 1)


def _label(raw: bytes) -> str:
    """Lowercase text; bytes that are not plain printable ASCII become \\DDD escapes."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in b".\\" else f"\\{b:03d}" for b in raw.lower()
    )


def _u8(msg: bytes, pos: int) -> int:
    if pos >= len(msg):
        raise _Malformed
    return msg[pos]


def _u16(msg: bytes, pos: int) -> int:
    if pos + 2 > len(msg):
        raise _Malformed
    return (msg[pos] << 8) | msg[pos + 1]
