"""Decoding of the records BPF programs write: the common header, kinds and path slots.

Layouts and kind numbers come from bpf/records.h through libobs/kernel/layout.py.
"""

from __future__ import annotations

from typing import NamedTuple

from libobs.kernel import layout

RECORDS = layout.read("records.h")
KIND = RECORDS.enums                        # "K_EXEC" → 1: one number space for every program
_HDR = RECORDS["obs_hdr"]
HDR = _HDR.unpacker(*(f.name for f in _HDR.fields))
PATH_SLOT = RECORDS.constants["PATH_SLOT"]
PATH_DEPTH = RECORDS.constants["PATH_DEPTH"]


class Hdr(NamedTuple):
    kind: int
    pid: int
    tid: int
    ppid: int
    uid: int
    len: int
    pgid: int
    pad: int
    ts: int
    cgroup_id: int
    start_bt: int
    comm: bytes


if Hdr._fields != tuple(f.name for f in _HDR.fields):
    raise layout.LayoutError(f"Hdr fields {Hdr._fields} differ from bpf/records.h obs_hdr")
_new_hdr = tuple.__new__


def hdr(raw: bytes) -> Hdr:
    return _new_hdr(Hdr, HDR.unpack_from(raw, 0))


_TS = _HDR.offset("ts")
_TCP_KINDS = frozenset(KIND[k] for k in ("K_SEND", "K_DATA", "K_STATE"))
_TCP_TS = layout.read("net.h")["tcp_rec"].offset("ts")  # the one record without an obs_hdr


def record_ts(raw: bytes) -> int:
    """The kernel timestamp of any ring record (0 when it is too short to hold one)."""
    off = _TCP_TS if int.from_bytes(raw[:4], "little") in _TCP_KINDS else _TS
    return int.from_bytes(raw[off:off + 8], "little") if len(raw) >= off + 8 else 0


def in_time_order(main: list[bytes], spilled: list[bytes]) -> list[bytes]:
    """Records of the main ring and of the spill ring (where a record goes when the main
    ring's reservation fails for a moment) as one batch in kernel time order: a request
    written to the spill ring must not reach a decoder after the response that followed it.
    The main ring is in order already, so the sort is close to linear."""
    if not spilled:
        return main
    return sorted(main + spilled, key=record_ts)


def comm(h: Hdr) -> str:
    return h.comm.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def cstring(raw: bytes | memoryview, off: int, limit: int) -> bytes:
    """Bytes of a NUL-terminated string at raw[off:off+limit]."""
    chunk = bytes(raw[off:off + limit])
    return chunk.split(b"\0", 1)[0]


def join_slots(raw: bytes, off: int, slots: int, complete: bool) -> bytes:
    """A path from leaf-first dentry-name slots: b"/a/b/c". An empty slot is a mount crossing.
    An incomplete walk (too deep) is marked with a leading "…/" instead of a false root."""
    names = []
    find = raw.find
    for i in range(slots - 1, -1, -1):  # root first
        o = off + i * PATH_SLOT
        e = find(b"\0", o, o + PATH_SLOT)
        if e < 0:
            e = o + PATH_SLOT
        if e > o and raw[o:e] != b"/":
            names.append(raw[o:e])
    path = b"/" + b"/".join(names)
    return path if complete else "…".encode() + path


def split_argv(block: bytes) -> list[bytes]:
    """The NUL-separated argv block of mm->arg_start..arg_end."""
    if block.endswith(b"\0"):
        block = block[:-1]
    return block.split(b"\0") if block else []
