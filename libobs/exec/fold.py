"""FileAccess folding, the user-space half: turns bpf/exec.bpf.c's fold slots into counts.

The kernel counts a thread's repeated write-opens of one file in a slot named (tid, gen) and
sends a record for the slot's first open, for the first open after each fold window, and for
the slot's rest when the thread moves on (another file, exec, exit). Records carry the slot's
cumulative count; in between, user space reads the slots themselves. The ledger remembers, per
slot, how many opens were already reported, so each event's `count` is what is new and every
open is counted exactly once, whichever of the three reports it first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

MAX_SLOTS = 65536  # the kernel map's size: one slot per thread that write-opened a file


@dataclass
class Slot:
    reported: int            # opens already in events
    path: str
    flags: int
    identity: dict[str, Any]  # the envelope parts of the slot's first record: a tail sent at
    process: dict[str, Any]   # exec would otherwise carry the new program's comm
    pid: int
    missed: int = 0           # consecutive slot reads that did not find it


class FoldLedger:
    def __init__(self) -> None:
        self.slots: dict[tuple[int, int], Slot] = {}
        self.orphans = 0  # opens in tails whose first record the ring lost (counted there)

    def opened(self, tid: int, gen: int, opens: int, path: str, flags: int, pid: int,
               identity: dict[str, Any], process: dict[str, Any]) -> int:
        """An open record: the count it adds (0 when a slot read already reported it)."""
        if not gen:
            return opens  # not folded (map full, or no file behind the fd)
        slot = self.slots.get((tid, gen))
        if slot is None:
            if len(self.slots) >= MAX_SLOTS:
                self.slots.pop(next(iter(self.slots)))
            self.slots[(tid, gen)] = Slot(opens, path, flags, identity, process, pid)
            return opens
        new = opens - slot.reported
        slot.path = path  # the latest walk: a renamed file shows its new name
        slot.reported = max(slot.reported, opens)
        return max(0, new)

    def ended(self, tid: int, gen: int, opens: int) -> tuple[Slot, int] | None:
        """A slot's tail: (slot, count to report), or None when nothing is new or the slot's
        first record never arrived."""
        slot = self.slots.pop((tid, gen), None)
        if slot is None:
            self.orphans += opens
            return None
        new = opens - slot.reported
        return (slot, new) if new > 0 else None

    def read(self, entries: Iterable[tuple[int, int, int, int]]
             ) -> Iterator[tuple[Slot, int, int]]:
        """(slot, count, ts of its latest open) for every slot read from the kernel
        (tid, gen, opens, last_ts) that counted opens not yet reported."""
        seen = set()
        for tid, gen, opens, last_ts in entries:
            key = (tid, gen)
            slot = self.slots.get(key)
            if slot is None:
                continue  # its first record is still in the ring
            seen.add(key)
            slot.missed = 0
            if opens > slot.reported:
                yield slot, opens - slot.reported, last_ts
                slot.reported = opens
        # A slot gone from the kernel sent its tail first; gone twice, its tail was lost.
        for key in [k for k in self.slots if k not in seen]:
            slot = self.slots[key]
            slot.missed += 1
            if slot.missed >= 2:
                del self.slots[key]


def kernel_slots(table: Any) -> list[tuple[int, int, int, int]]:
    """(tid, gen, opens, last_ts) of every slot in bcc table `fold`."""
    return [(int(k.value), int(v.gen), int(v.opens), int(v.last_ts)) for k, v in table.items()]
