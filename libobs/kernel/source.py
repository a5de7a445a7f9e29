"""The BPF C sources: where they are, and their text with local headers inlined."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_LOCAL_INCLUDE = re.compile(r'^#include "([a-z0-9_]+\.h)"$', re.M)


def bpf_dir() -> Path:
    """bpf/ of a source checkout, else the installed share/obs/bpf."""
    here = Path(__file__).resolve().parents[2] / "bpf"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "obs" / "bpf"


def source_text(name: str) -> str:
    """bpf/<name> with its local headers inlined. bcc rewrites map syntax (events.lookup(),
    ringbuf_output...) only in the main file; in an #included header it would compile to an
    indirect call the kernel rejects."""
    seen: set[str] = set()

    def inline(m: re.Match[str]) -> str:
        header = m.group(1)
        if header in seen:
            return ""
        seen.add(header)
        return _LOCAL_INCLUDE.sub(inline, (bpf_dir() / header).read_text())

    return _LOCAL_INCLUDE.sub(inline, (bpf_dir() / name).read_text())
