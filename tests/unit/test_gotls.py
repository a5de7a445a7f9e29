"""libobs.tls.gotls and libobs.tls.elf on real Go binaries built here (unstripped and
stripped) and on hostile bytes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libobs.tls import elf, gotls
from tests.support import gobuild


@pytest.fixture(scope="module")
def binaries() -> dict[str, bytes]:
    return {name: gobuild.build(prog, stripped).read_bytes()
            for name, prog, stripped in (("client", "goclient", False),
                                         ("stripped", "goclient", True),
                                         ("notls", "gonotls", True))}


@pytest.fixture(scope="module")
def unstripped_path() -> Path:
    return gobuild.build("goclient")


def nm(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (ln.split(None, 2) for ln in out.splitlines())
            if len(parts) == 3}


def objdump_rets(path: Path, start: int, end: int) -> list[int]:
    out = subprocess.run(["objdump", "-d", f"--start-address={start:#x}",
                          f"--stop-address={end:#x}", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s.*\tret", out, re.M)]


def test_function_table_matches_the_symbol_table(binaries, unstripped_path):
    symbols = nm(unstripped_path)
    for name in ("client", "stripped"):
        tab = gotls.pclntab(binaries[name])
        assert tab is not None and tab.magic in (gotls.MAGIC_118, gotls.MAGIC_120)
        found = gotls.functions(tab, (gotls.READ, gotls.WRITE))
        assert {n: entry for n, (entry, _end) in found.items()} == {
            gotls.READ: symbols[gotls.READ], gotls.WRITE: symbols[gotls.WRITE]}
        assert all(end > entry for entry, end in found.values())


def test_version_from_build_info(binaries):
    want = subprocess.run([gobuild.go(), "version"], capture_output=True, text=True,
                          check=True).stdout.split()[2]
    assert gotls.go_version(binaries["client"]) == want
    assert gotls.go_version(binaries["stripped"]) == want
    assert gotls.is_go(binaries["stripped"])
    assert not gotls.is_go(Path("/bin/true").read_bytes())


def test_rets_are_objdumps(binaries, unstripped_path):
    tab = gotls.pclntab(binaries["client"])
    entry, end = gotls.functions(tab, (gotls.READ,))[gotls.READ]
    code = elf.read_vaddr(binaries["client"], entry, end - entry, code_only=True)
    assert gotls.rets(code, entry) == objdump_rets(unstripped_path, entry, end)


def test_plan_unstripped_equals_stripped(binaries):
    a, b = gotls.plan(binaries["client"]), gotls.plan(binaries["stripped"])
    assert a == b and a.problem is None
    read, write = a.points
    assert (read.fn, write.fn) == ("go_read", "go_write")
    assert not read.uretprobe and not write.uretprobe
    assert len(read.returns) >= 2 and write.returns == ()
    tab = gotls.pclntab(binaries["client"])
    for p, name in ((read, gotls.READ), (write, gotls.WRITE)):
        entry, end = gotls.functions(tab, (name,))[name]
        assert entry < p.addr < entry + 256  # past the stack check, not at the entry
        assert all(entry < r < end for r in p.returns)


def test_pie_table_found_by_its_magic():
    """-buildmode=pie: no .gopclntab section (the table is in .data.rel.ro)."""
    path = gobuild.build("goclient", pie=True)
    data = path.read_bytes()
    assert elf.section(data, ".gopclntab") is None
    tab = gotls.pclntab(data)
    assert tab is not None
    symbols = nm(path)
    found = gotls.functions(tab, (gotls.READ, gotls.WRITE))
    assert {n: e for n, (e, _end) in found.items()} == {n: symbols[n] for n in found}
    assert len(found) == 2 and gotls.plan(data).problem is None


def test_go_without_crypto_tls_is_a_named_problem(binaries):
    plan = gotls.plan(binaries["notls"])
    assert plan.points == () and "crypto/tls" in (plan.problem or "")


def test_rets_synthetic():
    ret_in_immediate = b"\xb8\xc3\x00\x00\x00"  # mov $0xc3, %eax: a C3 byte that is no RET
    code = b"\x48\x89\xc3" + ret_in_immediate + b"\xc3" + b"\xcc" * 5
    assert gotls.rets(code, 0x1000) == [0x1000 + 8]
    assert gotls.rets(code[:3] + b"\x0f\xff\xff\xff" * 4, 0x1000) is None  # undecodable tail
    assert gotls.rets(b"", 0) is None


def test_after_prologue_synthetic():
    check = b"\x49\x3b\x66\x10" + b"\x76\x10"  # cmp 0x10(%r14),%rsp; jbe +0x10
    sub = b"\x48\x83\xec\x68"                    # sub $0x68,%rsp (single-stepped)
    spill = b"\x48\x89\x44\x24\x70"              # mov %rax,0x70(%rsp): reads RAX only
    assert gotls.after_prologue(check + b"\x55", 0x400) == 0x406
    # the first emulated instruction while RAX/RBX/RCX/R14 still hold the arguments
    assert gotls.after_prologue(check + sub + spill + b"\x90", 0x400) == 0x406 + 4 + 5
    clobber = b"\x31\xc0"                          # xor %eax,%eax
    assert gotls.after_prologue(check + sub + clobber + b"\x90", 0x400) == 0x406
    assert gotls.after_prologue(check + sub + b"\xeb\x00", 0x400) == 0x406 + 4  # jmp: emulated
    indirect = b"\xff\xe2"                         # jmp *%rdx: neither emulated nor straight
    assert gotls.after_prologue(check + sub + indirect + b"\x90", 0x400) == 0x406
    assert gotls.after_prologue(b"\x55\x48\x89\xe5", 0x400) == 0x400  # no check: the entry


def _mutations(data: bytes, tab_at: int) -> st.SearchStrategy[bytes]:
    def mutate(edits: list[tuple[int, int]]) -> bytes:
        b = bytearray(data)
        for where, value in edits:
            b[where % len(b)] = value
        return bytes(b)

    spots = st.one_of(st.integers(0, 255), st.integers(tab_at, tab_at + 4096))
    return st.lists(st.tuples(spots, st.integers(0, 255)), min_size=1, max_size=8).map(mutate)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_go_binaries_never_raise(binaries, data):
    """Headers and the function table of a real binary, corrupted: a plan or a problem."""
    real = binaries["stripped"]
    tab = elf.section(real, ".gopclntab")
    assert tab is not None
    bad = data.draw(_mutations(real, tab.offset))
    plan = gotls.plan(bad)
    assert isinstance(plan, gotls.GoPlan)
    assert plan.points or plan.problem
    gotls.go_version(bad)
    gotls.is_go(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x7fELF\x02\x01"]))
def test_random_bytes_never_raise(blob, prefix):
    data = prefix + blob
    assert isinstance(gotls.plan(data), gotls.GoPlan)
    assert gotls.pclntab(data) is None or isinstance(gotls.pclntab(data), gotls.Pclntab)
    elf.sections(data)
    elf.read_vaddr(data, 0x400000, 64)
    elf.symbols(data, ".dynsym", frozenset({b"PR_Read"}))
    magic = b"\xf0\xff\xff\xff\x00\x00\x01\x08"
    tab = gotls.Pclntab(gotls.MAGIC_118, memoryview(magic + blob), 0)
    assert isinstance(gotls.functions(tab, (gotls.READ,)), dict)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_truncated_real_tables_never_raise(binaries, cut_bytes):
    real = binaries["stripped"]
    tab = elf.section(real, ".gopclntab")
    assert tab is not None
    cut = len(cut_bytes) * 997 % tab.size
    t = gotls.Pclntab(gotls.MAGIC_118, memoryview(real)[tab.offset:tab.offset + cut], 0x401000)
    assert isinstance(gotls.functions(t, (gotls.READ, gotls.WRITE)), dict)


def test_old_go_is_named_not_probed(binaries):
    """Go 1.16 shares its table's magic with 1.17 but passes arguments on the stack: the build
    info's version decides; Go <= 1.15 is known by its magic alone."""
    real = binaries["stripped"]
    version = gotls.go_version(real)
    assert version is not None
    tab = elf.section(real, ".gopclntab")
    assert tab is not None
    old = bytearray(real)
    at = old.find(version.encode(), elf.section(real, ".go.buildinfo").offset)
    old[at:at + len(version)] = b"go1.16" + version[6:].encode()
    assert gotls.go_version(bytes(old)).startswith("go1.16")
    plan = gotls.plan(bytes(old))
    assert plan.points == () and "stack" in (plan.problem or "")
    ancient = bytearray(real)
    ancient[tab.offset:tab.offset + 4] = gotls.MAGIC_12.to_bytes(4, "little")
    plan = gotls.plan(bytes(ancient))
    assert plan.points == () and "stack" in (plan.problem or "")
