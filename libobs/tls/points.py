"""Where one TLS function's probes go in a file (shared by every stack's finder)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbePoint:
    """One entry probe, plus where its call is seen to return. `fn` names the calling
    convention (a key of libssl.Attacher.ENTRY); `covers` the functions whose calls it sees.
    `uretprobe`: a return probe on the function; `returns`: uprobes at these addresses (the
    RET instructions) instead, for Go, whose moving stacks uretprobes corrupt."""

    fn: str
    addr: int        # virtual address in the file
    label: str       # for humans and attached_probes
    covers: tuple[str, ...]
    returns: tuple[int, ...] = ()
    uretprobe: bool = True
