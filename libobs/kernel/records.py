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
