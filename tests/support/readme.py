"""Measured tables in README.md: a nox session measures, then puts its table between
``<!-- begin NAME -->`` and ``<!-- end NAME -->``, so the README never holds a hand-written
measurement (issues 13 and 14: "measured by a nox session, not written by hand")."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with what lies between the markers of ``name`` replaced by ``body``."""
    pattern = re.compile(rf"(<!-- begin {re.escape(name)} [^\n]*-->\n).*?(<!-- end {re.escape(name)} -->)",
                         re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README.md needs exactly one '<!-- begin {name} ... -->' … "
                         f"'<!-- end {name} -->' pair")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def write(name: str, body: str, path: Path = README) -> None:
    path.write_text(replace_block(path.read_text(), name, body))
