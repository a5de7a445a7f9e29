"""The compiled-program cache's pure parts: finding and relocating map references, checking an
entry's shape, and keys that change with every input (libobs/kernel/objcache.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.kernel import host, objcache

INSN = struct.Struct("<BBhi")


def ld_map(fd: int, dst: int = 1, src: int = objcache._PSEUDO_MAP_FD) -> bytes:
    """BPF_LD_IMM64 of a map fd: two slots, the second all zero but its imm (upper half)."""
    return INSN.pack(0x18, (src << 4) | dst, 0, fd) + INSN.pack(0, 0, 0, 0)


MOV = INSN.pack(0xB7, 0, 0, 0)         # r0 = 0
EXIT = INSN.pack(0x95, 0, 0, 0)
CONST64 = INSN.pack(0x18, 2, 0, 7) + INSN.pack(0, 0, 0, 1)   # r2 = (1 << 32) | 7, no map


def test_references_found_and_relocated():
    code = MOV + ld_map(40) + CONST64 + ld_map(41, dst=2) + ld_map(40) + EXIT
    refs = objcache.map_references(code, {40: 0, 41: 1})
    assert refs == [[1, 0], [5, 1], [7, 0]]
    out = objcache.relocate(code, refs, [9, 10])
    assert [INSN.unpack_from(out, 8 * i)[3] for i, _ in refs] == [9, 10, 9]
    assert out[:8] == MOV and out[24:40] == CONST64 and out[-8:] == EXIT
    assert len(out) == len(code)


@given(st.lists(st.sampled_from(["mov", "const", 0, 1, 2]), max_size=40),
       st.lists(st.integers(3, 1 << 20), min_size=3, max_size=3))
def test_relocation_changes_only_map_fds(parts, new_fds):
    old = {0: 100, 1: 101, 2: 102}
    code = b"".join(MOV if p == "mov" else CONST64 if p == "const" else ld_map(old[p])
                    for p in parts) + EXIT
    refs = objcache.map_references(code, {fd: m for m, fd in old.items()})
    assert [m for _, m in refs] == [p for p in parts if isinstance(p, int)]
    out = objcache.relocate(code, refs, new_fds)
    for i in range(len(code) // 8):
        a, b = INSN.unpack_from(code, 8 * i), INSN.unpack_from(out, 8 * i)
        hit = [m for j, m in refs if j == i]
        assert b == (a[:3] + (new_fds[hit[0]],) if hit else a)


@pytest.mark.parametrize(("code", "why"), [
    (ld_map(40, src=2), "64-bit load of kind 2"),      # a map value (global data)
    (ld_map(40, src=4), "64-bit load of kind 4"),      # a function pointer
    (ld_map(77), "fd 77, which is no map"),
    (MOV[:5], "whole number"),
])
def test_what_cannot_be_relocated_is_not_cached(code, why):
    with pytest.raises(objcache.Uncacheable, match=why):
        objcache.map_references(code, {40: 0})


def test_relocating_a_slot_that_is_no_map_reference_is_refused():
    with pytest.raises(objcache.Unusable):
        objcache.relocate(MOV + EXIT, [[0, 0]], [5])


GOOD = {"format": objcache.FORMAT, "license": "GPL", "kern_version": 1,
        "maps": [{"name": "events", "type": 27, "key_size": 0, "value_size": 0,
                  "max_entries": 4096, "flags": 0, "key_desc": "\"int\"",
                  "leaf_desc": "\"int\""}],
        "funcs": [{"name": "tracepoint__a__b", "insns": "", "maps": [[0, 0]]}]}


def test_checked_accepts_what_capture_writes():
    assert objcache.checked(GOOD) is GOOD


@pytest.mark.parametrize("bad", [
    None, [], {}, GOOD | {"format": objcache.FORMAT + 1}, GOOD | {"license": None},
    GOOD | {"maps": [GOOD["maps"][0] | {"type": 4}]},       # a map type we give no Table for
    GOOD | {"maps": [GOOD["maps"][0] | {"max_entries": "9"}]},
    GOOD | {"funcs": [GOOD["funcs"][0] | {"maps": [[0, 1]]}]},   # a map that is not there
    GOOD | {"funcs": [{"name": "x"}]},
])
def test_checked_refuses_other_shapes(bad):
    with pytest.raises(objcache.Unusable):
        objcache.checked(bad)


def test_key_changes_with_source_flags_kernel_and_toolchain(monkeypatch):
    ident = {"release": "6.18", "build": "#1", "machine": "x86_64", "btf": "aa", "headers": []}
    monkeypatch.setattr(host, "kernel_identity", lambda: ident)
    monkeypatch.setattr(objcache, "toolchain_identity", lambda: ["0.26"])
    base = objcache.entry_key("int x;", ["-DA=1"])
    assert base == objcache.entry_key("int x;", ["-DA=1"])
    assert base != objcache.entry_key("int y;", ["-DA=1"])
    assert base != objcache.entry_key("int x;", ["-DA=2"])
    for field, value in (("release", "6.19"), ("build", "#2"), ("btf", "bb"),
                         ("headers", [["/lib/modules/6.18/build", "/usr/src/other"]])):
        monkeypatch.setattr(host, "kernel_identity", lambda f=field, v=value: ident | {f: v})
        assert base != objcache.entry_key("int x;", ["-DA=1"]), field
    monkeypatch.setattr(host, "kernel_identity", lambda: ident)
    monkeypatch.setattr(objcache, "toolchain_identity", lambda: ["0.27"])
    assert base != objcache.entry_key("int x;", ["-DA=1"])
