"""Text made safe for a terminal: what a watched process wrote must not steer the operator's screen.

A file name, an argv word, a comm, an SNI, a DNS name or a model name is chosen by the process
being watched. Printed raw, ``ESC [ 1 A ESC [ 2 K`` erases the line above, OSC sequences retitle
the window or write the clipboard, and bidi overrides make ``evil\u202egpj.sh`` read as
``evilhs.jpg``. Every code point that a terminal may act on instead of showing is escaped
visibly: C0 controls (``\\n``, ``\\t``, ``\\r`` by name, the rest as ``\\xNN``; ESC is
``\\x1b``), DEL, C1 controls (``\\x80``-``\\x9f``, which some terminals read as CSI), the bidi
embeddings, overrides and isolates, and the line/paragraph separators (``\\uNNNN``).

Only human-facing text goes through here: NDJSON output stays byte-exact (JSON escapes
control characters itself, and consumers need the real value).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]


def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)):
        table[cp] = _NAMED.get(chr(cp), f"\\x{cp:02x}")
    for cp in (*_BIDI, 0x2028, 0x2029):
        table[cp] = f"\\u{cp:04x}"
    return table


_ESCAPES = _table()


def safe(text: str) -> str:
    """``text`` with every terminal-active code point escaped visibly (see the module doc)."""
    return text.translate(_ESCAPES)


def quote(text: str, limit: int = 200) -> str:
    """``safe(text)`` for a diagnostic, cut to ``limit`` characters with the rest counted."""
    if len(text) > limit:
        return safe(text[:limit]) + f"...({len(text) - limit} more)"
    return safe(text)
