"""libobs.tls.libraries: the ELF reader, probe placement, /proc maps parsing and library discovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls import elf, libraries
from tests.support.tools import tool_cmd

REPO = Path(__file__).resolve().parents[2]
LIBSSL = Path("/lib/x86_64-linux-gnu/libssl.so.3")
LIBCRYPTO = Path("/lib/x86_64-linux-gnu/libcrypto.so.3")
needs_libssl = pytest.mark.skipif(not LIBSSL.exists(), reason=f"{LIBSSL} is not installed")


@pytest.fixture(scope="module")
def libssl_bytes() -> bytes:
    if not LIBSSL.exists():
        pytest.skip(f"{LIBSSL} is not installed")
    return LIBSSL.read_bytes()


def nm_addresses(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtWi":
            found[parts[2].split("@")[0]] = int(parts[0], 16)
    return found


# ---- ELF --------------------------------------------------------------------------------------

def test_exports_of_system_libssl_match_nm(libssl_bytes):
    addrs = libraries.exported_addresses(libssl_bytes)
    assert set(addrs) == set(libraries.SSL_FUNCTIONS)
    nm = nm_addresses(LIBSSL)
    assert addrs == {name: nm[name] for name in libraries.SSL_FUNCTIONS}


@needs_libssl
def test_libraries_that_only_import_or_lack_the_functions():
    assert libraries.file_exports(LIBCRYPTO) == frozenset()
    assert libraries.file_exports(Path(sys.executable).resolve()) == frozenset()
    assert libraries.file_exports("/etc/hostname") == frozenset()
    assert libraries.file_exports("/nonexistent") == frozenset()
    assert libraries.file_exports(LIBSSL) == frozenset(libraries.SSL_FUNCTIONS)


def test_truncated_and_garbled_elf_never_raise(libssl_bytes):
    for cut in (0, 5, 16, 63, 64, 200, 4096, len(libssl_bytes) // 2, len(libssl_bytes) - 1):
        assert libraries.exported_functions(libssl_bytes[:cut]) <= frozenset(libraries.SSL_FUNCTIONS)
        libraries.probe_points(libssl_bytes[:cut])
        elf.read_vaddr(libssl_bytes[:cut], 0x1000, 16, code_only=True)
    garbled = bytearray(libssl_bytes[:8192])
    garbled[0x28:0x30] = (2**63).to_bytes(8, "little")  # section headers "far away"
    assert libraries.exported_functions(bytes(garbled)) == frozenset()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(data):
    blob = b"\x7fELF\x02\x01" + data  # past the magic, into the header parsing
    assert libraries.exported_functions(blob) <= frozenset(libraries.SSL_FUNCTIONS)
    assert all(p.fn in libraries.SSL_FUNCTIONS for p in libraries.probe_points(blob))
    assert isinstance(elf.read_vaddr(blob, 0, 8, code_only=True), bytes)
    if not data.startswith(b"\x7fELF"):
        assert libraries.exported_functions(data) == frozenset()
        assert libraries.probe_points(data) == ()


def test_code_is_read_at_the_functions_address(libssl_bytes):
    addr = libraries.exported_addresses(libssl_bytes)["SSL_write"]
    code = elf.read_vaddr(libssl_bytes, addr, 16, code_only=True)
    dump = subprocess.run(["objdump", "-d", f"--start-address={addr}",
                           f"--stop-address={addr + 4}", str(LIBSSL)],
                          capture_output=True, text=True).stdout
    first = [ln for ln in dump.splitlines() if ln.strip().startswith(f"{addr:x}:")]
    if first:  # objdump is optional: binutils
        hex_bytes = first[0].split("\t")[1].split()
        assert code[:len(hex_bytes)] == bytes(int(b, 16) for b in hex_bytes)
    assert len(code) == 16
    assert elf.read_vaddr(libssl_bytes, 0x7FFF_FFFF_FFFF, 16, code_only=True) == b""


# ---- probe placement --------------------------------------------------------------------------

def rel(target: int, at: int) -> bytes:
    return (target - at).to_bytes(4, "little", signed=True)


@pytest.mark.parametrize(("code", "target"), [
    (b"\x48\x83\xec\x08\xe8" + rel(0x2000, 0x1009) + b"\x31\xd2", 0x2000),  # sub; call
    (b"\xf3\x0f\x1e\xfa\x48\x83\xec\x08\xe8" + rel(0x900, 0x100D), 0x900),  # endbr64 first
    (b"\x55\x48\x89\xe5\x41\x54\xe8" + rel(0x3000, 0x100B), 0x3000),  # push; mov; push; call
    (b"\x48\x81\xec\x00\x01\x00\x00\xe8" + rel(0x1000, 0x100C), 0x1000),
    (b"\x48\x83\xec\x08\x85\xd2\xe8" + rel(0x2000, 0x100B), None),  # test: not a thin wrapper
    (b"\xe9" + rel(0x2000, 0x1005), None),  # a tail jump is not a call
    (b"\x48\x83\xec", None),  # cut short
    (b"", None),
])
def test_wrapper_call_target(code, target):
    assert libraries.wrapper_call_target(code, 0x1000) == target


def test_probe_points_cover_all_four_functions(libssl_bytes):
    points = libraries.probe_points(libssl_bytes)
    covered = [fn for p in points for fn in p.covers]
    assert sorted(covered) == sorted(libraries.SSL_FUNCTIONS)
    for p in points:
        assert p.fn in libraries.SSL_FUNCTIONS
        assert elf.read_vaddr(libssl_bytes, p.addr, 1, code_only=True) != b""
        if len(p.covers) == 2:  # the shared internal function: it starts with a push
            assert p.fn.endswith("_ex") and p.label.startswith("ssl_")
            code = elf.read_vaddr(libssl_bytes, p.addr, 2, code_only=True)
            assert 0x50 <= code[0] <= 0x57 or (code[0] == 0x41 and 0x50 <= code[1] <= 0x57)
    exported = libraries.probe_points(libssl_bytes, exported_only=True)
    assert {p.label: p.addr for p in exported} == libraries.exported_addresses(libssl_bytes)


def test_library_description():
    lib = libraries.Library("/x/libssl.so.3", (
        libraries.ProbePoint("SSL_read_ex", 0x10, "ssl_read_internal@0x10",
                          ("SSL_read", "SSL_read_ex")),
        libraries.ProbePoint("SSL_write", 0x20, "SSL_write", ("SSL_write",))), (1, 2))
    assert lib.describe() == ("/x/libssl.so.3 (OpenSSL: SSL_read+SSL_read_ex via "
                              "ssl_read_internal@0x10, SSL_write)")


# ---- /proc maps and discovery -----------------------------------------------------------------

MAPS = """\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:01 1001    /usr/bin/python3.11
55d0c0a28000-55d0c0d00000 r-xp 00028000 fe:01 1001    /usr/bin/python3.11
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000000000-7f1000020000 r-xp 00020000 fe:01 2002    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1000030000-7f1000040000 r-xp 00030000 fe:01 2002    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2000000000-7f2000010000 r-xp 00000000 fe:01 3003    /tmp/gone/libssl.so.3 (deleted)
7f3000000000-7f3000010000 r-xp 00000000 00:05 4004    /memfd:jit (deleted)
7f4000000000-7f4000010000 r-xp 00000000 fe:01 5005    /opt/app/lib/my ssl.so
7fff00000000-7fff00021000 r-xp 00000000 00:00 0       [vdso]
garbage line
"""


def test_executable_mappings():
    dev = os.makedev(0xFE, 0x01)
    assert libraries.executable_mappings(MAPS) == [
        libraries.Mapping("/usr/bin/python3.11", dev, 1001),
        libraries.Mapping("/usr/lib/x86_64-linux-gnu/libssl.so.3", dev, 2002),
        libraries.Mapping("/opt/app/lib/my ssl.so", dev, 5005),
    ]
    assert libraries.executable_mappings("") == []


@needs_libssl
def test_finder_reads_proc_maps_and_reaches_other_namespaces(tmp_path):
    st = LIBSSL.stat()
    line = (f"7f1000000000-7f1000020000 r-xp 00000000 {os.major(st.st_dev):x}:"
            f"{os.minor(st.st_dev):x} {st.st_ino} {LIBSSL}\n")
    (tmp_path / "100").mkdir()
    (tmp_path / "100" / "maps").write_text(line)
    # a process whose /usr/lib/foo/libssl.so.3 is another inode than ours: reach it via root/
    (tmp_path / "200").mkdir()
    (tmp_path / "200" / "maps").write_text(
        line.replace(str(LIBSSL), "/usr/lib/foo/libssl.so.3").replace(str(st.st_ino), "77"))
    (tmp_path / "self").mkdir()
    finder = libraries.Finder(proc=tmp_path)
    assert sorted(finder.from_processes()) == sorted(
        [str(LIBSSL), f"{tmp_path}/200/root/usr/lib/foo/libssl.so.3"])
    [found] = finder.new_libraries(finder.from_processes())
    assert found.path == str(LIBSSL)
    assert finder.rescan() == []  # judged once
    assert finder.check(str(LIBSSL)) == found


def test_uprobes_missing_is_none_or_a_reason():
    reason = libraries.uprobes_missing()
    assert reason is None or "uprobe" in reason


# ---- the tool's option checks (no root needed: they come first) --------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--lib", "/etc/hostname"], "--lib /etc/hostname: no TLS stack obs reads"),
    (["--max-capture", "96"], "--max-capture must be a power of two"),
    (["--comm", "a-very-long-command-name"], "--comm must be 1-15 bytes"),
    (["--max-capture", "16"], "Invalid value for '--max-capture'"),
    (["--no-such-option"], "No such option"),
])
def test_bad_options_one_line_and_exit_2(args, message):
    p = subprocess.run(tool_cmd("obs-ssl", *args),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith(f"obs-ssl: {message}") and p.stderr.count("\n") == 1
