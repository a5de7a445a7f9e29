import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.events import Clock, duration
from libobs.exec.decode import exit_status
from libobs.kernel import btf, records


def _btf(types: bytes, strs: bytes) -> bytes:
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs))
    return hdr + types + strs


def test_btf_offsets_through_anonymous_union():
    # strings: "" "int" "outer" "a" "b" "inner"
    strs = b"\0int\0outer\0a\0b\0inner\0"
    s = {n: strs.index(n.encode() + b"\0") for n in ["int", "outer", "a", "b", "inner"]}
    t_int = struct.pack("<III", s["int"], 1 << 24, 4) + struct.pack("<I", 32)       # id 1
    # id 2: anonymous union { int b; } ; id 3: struct outer { int a; <anon> @ bit 64; }
    t_union = struct.pack("<III", 0, (5 << 24) | 1, 4) + struct.pack("<III", s["b"], 1, 0)
    t_outer = struct.pack("<III", s["outer"], (4 << 24) | 2, 16) + \
        struct.pack("<III", s["a"], 1, 0) + struct.pack("<III", 0, 2, 64)
    blob = _btf(t_int + t_union + t_outer, strs)
    assert btf.offsets(blob, {"A": "outer.a", "B": "outer.b"}) == {"A": 0, "B": 8}
    with pytest.raises(btf.BtfError):
        btf.offsets(blob, {"X": "outer.inner"})


def test_real_vmlinux_offsets_present():
    if not btf.VMLINUX.exists():
        pytest.skip("no /sys/kernel/btf/vmlinux on this host")
    from libobs.kernel import host
    offs = host.struct_offsets()
    assert set(offs) == set(host.STRUCT_FIELDS)
    assert offs["OFF_QSTR_NAME"] == 8 and offs["OFF_PATH_DENTRY"] == 8


def test_bad_magic():
    with pytest.raises(btf.BtfError):
        btf.Btf(b"\0" * 64)


def test_join_slots():
    slots = b"c\0".ljust(256, b"\0") + b"".ljust(256, b"\0") + b"b\0".ljust(256, b"\0")
    assert records.join_slots(slots, 0, 3, True) == b"/b/c"
    assert records.join_slots(slots, 0, 3, False) == "…".encode() + b"/b/c"
    assert records.join_slots(b"", 0, 0, True) == b"/"


def test_split_argv():
    assert records.split_argv(b"ls\0-l\0/tmp\0") == [b"ls", b"-l", b"/tmp"]
    assert records.split_argv(b"") == []
    assert records.split_argv(b"a\0\0b\0") == [b"a", b"", b"b"]


@pytest.mark.parametrize("code,want", [
    (3 << 8, (3, None, False)), (9, (None, 9, False)), (11 | 0x80, (None, 11, True)),
    (0, (0, None, False)),
])
def test_exit_status(code, want):
    assert exit_status(code) == want


@given(st.integers(min_value=-(10**12), max_value=10**15))
def test_duration(ns):
    d = duration(ns)
    assert 0 <= d["nanos"] < 10**9 and d["secs"] * 10**9 + d["nanos"] == max(0, ns)


def test_clock_offset_is_wall_minus_mono():
    import time
    c = Clock.now()
    assert abs(c.wall(time.monotonic_ns()) - time.time_ns()) < 5_000_000
