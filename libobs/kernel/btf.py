"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The headers bcc compiles against may belong to another kernel build, so every kernel struct
the BPF programs read is addressed through offsets found here and passed in as -D constants.
Pure: `offsets(blob, wanted)` takes the BTF bytes and returns numbers.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_STRUCT, _UNION = 4, 5
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 8, 9, 10, 11, 18
# Bytes after the 12-byte common header, per kind: fixed part and per-vlen-entry size.
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
          15: (0, 12), 17: (4, 0), 19: (0, 12)}


class BtfError(Exception):
    pass


class Btf:
    def __init__(self, blob: bytes):
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", blob, 0)
        if magic != 0xEB9F:
            raise BtfError("not BTF (bad magic)")
        self.blob = blob
        self.tstart = hdr_len + type_off
        tend = self.tstart + type_len
        self.strs = blob[hdr_len + str_off: hdr_len + str_off + str_len]
        self.pos = array("I", [0])  # type id -> byte offset; id 0 is void
        self.by_name: dict[int, list[int]] = {}
        off = self.tstart
        unpack = struct.Struct("<III").unpack_from
        tid = 0
        while off < tend:
            tid += 1
            self.pos.append(off)
            name_off, info, _ = unpack(blob, off)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            if kind in (_STRUCT, _UNION) and name_off:
                self.by_name.setdefault(name_off, []).append(tid)
            fixed, per = _EXTRA.get(kind, (0, 0))
            off += 12 + fixed + per * vlen

    def _name_off(self, name: str) -> int | None:
        i = self.strs.find(b"\0" + name.encode() + b"\0")
        return None if i < 0 else i + 1

    def _name(self, off: int) -> str:
        end = self.strs.index(b"\0", off)
        return self.strs[off:end].decode()

    def _header(self, tid: int) -> tuple[int, int, int, int]:
        name_off, info, size_type = struct.unpack_from("<III", self.blob, self.pos[tid])
        return name_off, (info >> 24) & 0x1F, info, size_type

    def _resolve(self, tid: int) -> int:
        for _ in range(32):
            _, kind, _, ref = self._header(tid)
            if kind not in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
                return tid
            tid = ref
        return tid

    def _members(self, tid: int) -> Iterable[tuple[int, int, int]]:
        """(name_off, type id, bit offset) of a struct/union's members."""
        _, kind, info, _ = self._header(tid)
        kind_flag = info >> 31
        base = self.pos[tid] + 12
        for i in range(info & 0xFFFF):
            name_off, mtype, moff = struct.unpack_from("<III", self.blob, base + 12 * i)
            yield name_off, mtype, (moff & 0xFFFFFF) if kind_flag else moff

    def _find(self, tid: int, member_off: int) -> int | None:
        """Bit offset of a named member, looking through anonymous struct/union members."""
        for name_off, mtype, bits in self._members(tid):
            if name_off == member_off:
                return bits
            if name_off == 0:
                inner = self._resolve(mtype)
                if self._header(inner)[1] in (_STRUCT, _UNION):
                    sub = self._find(inner, member_off)
                    if sub is not None:
                        return bits + sub
        return None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of struct_name.member (a complete definition with that member)."""
        s_off = self._name_off(struct_name)
        m_off = self._name_off(member)
        if s_off is None or m_off is None:
            raise BtfError(f"BTF has no {struct_name}.{member}")
        for tid in self.by_name.get(s_off, []):
            _, kind, _, _ = self._header(tid)
            if kind != _STRUCT:
                continue
            bits = self._find(tid, m_off)
            if bits is not None:
                if bits % 8:
                    raise BtfError(f"{struct_name}.{member} is a bitfield")
                return bits // 8
        raise BtfError(f"BTF has no struct {struct_name} with member {member}")


def offsets(blob: bytes, wanted: dict[str, str]) -> dict[str, int]:
    """{"OFF_TASK_MM": "task_struct.mm", ...} -> {"OFF_TASK_MM": 1234, ...}."""
    btf = Btf(blob)
    out = {}
    for const, spec in wanted.items():
        sname, _, member = spec.partition(".")
        out[const] = btf.offset(sname, member)
    return out
