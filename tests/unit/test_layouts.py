"""The record headers are the one source of every layout: gcc compiles each bpf/<signal>.h and
prints every offset, size, enum value and constant, and libobs/kernel/layout.py must agree."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.kernel import layout
from libobs.kernel.records import HDR, KIND
from libobs.kernel.source import bpf_dir

HEADERS = ["records.h", "exec.h", "net.h", "ssl.h", "enforce.h"]
PRELUDE = """#include <stdio.h>
#include <stddef.h>
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64; typedef signed char s8; typedef short s16; typedef int s32;
typedef long long s64;
"""


def c_program(header: str, parsed: layout.Header) -> str:
    lines = [PRELUDE, f'#include "{header}"', "int main(void) {"]
    for name, lay in parsed.structs.items():
        lines.append(f'printf("size {name} %zu\\n", sizeof(struct {name}));')
        for f in lay.fields:
            lines.append(f'printf("offset {name}.{f.name} %zu\\n", '
                         f'offsetof(struct {name}, {f.name}));')
            lines.append(f'printf("sizeof {name}.{f.name} %zu\\n", '
                         f'sizeof(((struct {name} *)0)->{f.name}));')
    for name in parsed.enums:
        lines.append(f'printf("enum {name} %lld\\n", (long long){name});')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


def expected(parsed: layout.Header) -> list[str]:
    out = []
    for name, lay in parsed.structs.items():
        out.append(f"size {name} {lay.size}")
        for f in lay.fields:
            out += [f"offset {name}.{f.name} {f.offset}", f"sizeof {name}.{f.name} {f.size}"]
    out += [f"enum {name} {v}" for name, v in parsed.enums.items()]
    return out


@pytest.mark.parametrize("header", HEADERS)
def test_gcc_agrees_with_every_offset_and_size(header: str, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed (deploy/setup-host.sh installs it)")
    parsed = layout.read(header)
    assert parsed.structs, f"{header} defines no struct"
    src = tmp_path / "check.c"
    src.write_text(c_program(header, parsed))
    exe = tmp_path / "check"
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{bpf_dir()}", "-o", str(exe), str(src)],
                   check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert got.splitlines() == expected(parsed)


def test_kind_numbers_are_unique_and_below_the_lost_counters() -> None:
    values = list(KIND.values())
    assert len(values) == len(set(values)), KIND
    assert all(0 < v < layout.read("records.h").constants["OBS_KINDS"] for v in values)


def test_no_program_defines_a_kind_of_its_own() -> None:
    """Kind numbers live in records.h only: a #define K_* in a program would fork them."""
    for src in bpf_dir().glob("*.c"):
        assert "#define K_" not in src.read_text(), src.name


def test_header_unpacker_matches_the_c_header() -> None:
    assert HDR.size == layout.read("records.h")["obs_hdr"].size == 72


def test_defines_given_at_compile_time_win_over_defaults() -> None:
    small = layout.read("exec.h", {"MAX_ARGV": 4096})
    big = layout.read("exec.h")
    assert big["exec_rec"].size - small["exec_rec"].size == 131072 - 4096
    assert small["exec_rec"].offset("argv") == big["exec_rec"].offset("argv")


def test_nested_struct_and_padding() -> None:
    h = layout.parse("struct a { u8 x; u32 y; };\nstruct b { u16 p; struct a q; u8 r[3]; };")
    assert [(f.name, f.offset, f.code) for f in h["b"].fields] == [
        ("p", 0, "H"), ("q.x", 4, "B"), ("q.y", 8, "I"), ("r", 12, "3s")]
    assert h["b"].size == 16 and h["b"].unpacker("q", upto=layout.END).format == "<B3xI4x"


@pytest.mark.parametrize("text", [
    "struct a { float x; };", "struct a { u8 x[N]; };", "struct a { struct zz b; };",
    "struct a { u8 x[2]; struct a *p; };",
])
def test_unknown_c_is_an_error_not_a_guess(text: str) -> None:
    with pytest.raises(layout.LayoutError):
        layout.parse(text)


@given(st.text(max_size=300))
def test_parser_fails_only_with_layout_error(text: str) -> None:
    with contextlib.suppress(layout.LayoutError):
        layout.parse(text)


def test_spilled_records_rejoin_the_batch_in_kernel_time_order() -> None:
    """A record that took the spill ring (the main ring's reservation failed for a moment) is
    put back where its timestamp says: a request must not reach the decoder after its reply."""
    from libobs.kernel.records import in_time_order, record_ts

    def rec(kind: str, ts: int) -> bytes:
        return HDR.pack(KIND[kind], 1, 1, 0, 0, 0, 1, 0, ts, 0, 0, b"c")

    tcp = layout.read("net.h")["tcp_rec"]
    send = bytearray(tcp.size)
    send[:4] = KIND["K_SEND"].to_bytes(4, "little")
    send[tcp.offset("ts"):tcp.offset("ts") + 8] = (15).to_bytes(8, "little")
    main = [rec("K_SSL", 10), rec("K_SSL", 30), bytes(send)]
    spilled = [rec("K_SSL", 20)]
    assert [record_ts(r) for r in in_time_order(main, spilled)] == [10, 15, 20, 30]
    assert in_time_order(main, []) is main  # nothing spilled: the batch as it came
    assert record_ts(b"\x01") == 0
