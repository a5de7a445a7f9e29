"""TLS ClientHello parsing: which server name did the client ask for?

Input is the first bytes a client wrote on a TCP socket, taken from the kernel, so it is
untrusted, may be truncated and may not be TLS at all. Everything is bounds-checked and
`parse_sni` returns None rather than raising.

How much to capture: a classic ClientHello is ~250-520 bytes, but hybrid post-quantum key
shares (X25519MLKEM768 adds 1,184 bytes) push it past 1.5 KiB, and clients that put the
key_share before server_name place the SNI after byte 1,200. Capturing the first 4 KiB of
the first write(s) covers every hello seen in practice; a hello cut before the end of its SNI
extension yields None, one cut after it still yields the name.
"""

from __future__ import annotations

import re

_CONTENT_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_NAME_TYPE_HOST = 0
_MAX_RECORD = 1 << 14  # TLSPlaintext.length limit (RFC 8446 5.1)

# Letters, digits, '-' and '_' (seen in real hostnames), dot-separated, no empty label.
_HOSTNAME = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


class _Short(Exception):
    """A length field points past the bytes we have."""


class _Reader:
    """Cursor over bytes whose reads raise _Short instead of returning less."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _Short
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, len_width: int) -> bytes:
        return self.take(self.uint(len_width))

    def remaining(self) -> int:
        return len(self.data) - self.pos


def is_client_hello(data: bytes) -> bool:
    """Cheap pre-filter: a handshake record whose first message is a ClientHello."""
    return len(data) > 5 and data[0] == _CONTENT_HANDSHAKE and data[1] == 3 and data[5] == 1


def parse_sni(data: bytes) -> str | None:
    """The lowercased host_name from a ClientHello's server_name extension, else None."""
    try:
        return _hello_sni(_handshake_message(bytes(data)))
    except Exception:  # untrusted input: any surprise means "not a usable hello"
        return None


def _handshake_message(data: bytes) -> bytes:
    """Reassemble the first handshake message from consecutive handshake records.

    Returns as much of it as `data` holds (possibly a truncated prefix).
    """
    message = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        content_type, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if content_type != _CONTENT_HANDSHAKE or major != 3 or minor > 4:
            break
        if not 0 < length <= _MAX_RECORD:
            break
        message += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(message) >= 4 and len(message) >= 4 + int.from_bytes(message[1:4], "big"):
            break
    return bytes(message)


def _hello_sni(message: bytes) -> str | None:
    reader = _Reader(message)
    if reader.uint(1) != _HANDSHAKE_CLIENT_HELLO:
        return None
    body = _Reader(reader.take(min(reader.uint(3), reader.remaining())))
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    extensions = _Reader(body.take(min(body.uint(2), body.remaining())))
    while extensions.remaining():
        ext_type = extensions.uint(2)
        ext_data = extensions.vector(2)
        if ext_type == _EXT_SERVER_NAME:
            return _server_name(ext_data)
    return None


def _server_name(ext_data: bytes) -> str | None:
    names = _Reader(_Reader(ext_data).vector(2))
    while names.remaining():
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == _NAME_TYPE_HOST:
            return _hostname(name)
    return None


def _hostname(raw: bytes) -> str | None:
    # RFC 6066 forbids the trailing dot, but some clients send it; it names the same host.
    if raw.endswith(b"."):
        raw = raw[:-1]
    if len(raw) > 253 or not _HOSTNAME.fullmatch(raw):
        return None
    return raw.decode("ascii").lower()
