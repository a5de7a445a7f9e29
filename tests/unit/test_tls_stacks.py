"""libobs.tls.stacks: which stack a file is, where its plaintext functions are, and what is
named as unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls import libraries as libssl
from libobs.tls import stacks
from tests.support import fakestack
from tests.unit.test_libssl import nm_addresses

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


def read(name: str) -> bytes:
    path = LIBDIR / name
    if not path.exists():
        pytest.fail(f"{path} missing: deploy/setup-host.sh installs it")
    return path.read_bytes()


@pytest.mark.parametrize("lib,stack,names", [
    ("libgnutls.so.30", "GnuTLS", stacks.GNUTLS),
    ("libnspr4.so", "NSS", stacks.NSPR),
])
def test_exported_stacks(lib, stack, names):
    j = stacks.judge(read(lib))
    assert j.stack == stack and j.problem is None
    nm = nm_addresses(LIBDIR / lib)
    assert {p.label for p in j.points} == set(names)
    for p in j.points:
        assert p.fn == names[p.label] and p.fn in libssl.Attacher.ENTRY
        assert p.addr in (nm[p.label], nm[p.label] + 4)  # + endbr64
        assert p.uretprobe and p.returns == ()


@pytest.mark.parametrize("client", ["libcurl-gnutls.so.4", "libcurl-nss.so.4", "libcurl.so.4"])
def test_clients_of_shared_stacks_are_not_stacks(client):
    assert stacks.judge(read(client)) == stacks.NONE


def test_static_stack_markers():
    assert stacks.judge(fakestack.build(b"nothing to see").read_bytes()) == stacks.NONE
    for marker, name in stacks.MARKERS:
        j = stacks.judge(fakestack.build(marker).read_bytes())
        assert j.stack == name and j.points == () and "no probes" in (j.problem or "")
    # no socket call imported: not searched (a marker alone in libicudata-like data is no TLS)
    assert stacks.judge(Path("/bin/true").read_bytes() + b"\0rustls\0") == stacks.NONE


def test_finder_names_each_unreadable_file_once(tmp_path):
    rusty = fakestack.build(b"rustls-0.23.12/src/conn.rs")
    finder = libssl.Finder(proc=tmp_path)  # no pids under it
    assert finder.new_libraries([str(rusty), str(rusty)]) == []
    assert finder.new_libraries([str(rusty)]) == []
    assert [u.line() for u in finder.unreadable] == [
        f"{rusty}: rustls: rustls linked in: obs has no probes for it: {stacks.LOST} are lost"]


def test_finder_returns_gnutls_with_its_stack():
    finder = libssl.Finder(proc=Path("/nonexistent"))
    libs = finder.new_libraries([str(LIBDIR / "libgnutls.so.30")])
    assert [lib.stack for lib in libs] == ["GnuTLS"]
    assert "GnuTLS: gnutls_record_recv" in libs[0].describe()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x7fELF\x02\x01"]))
def test_random_bytes(blob, prefix):
    j = stacks.judge(prefix + blob)
    assert isinstance(j, stacks.Judgement)


def test_fn_enumeration_matches_the_c():
    """bpf/ssl.bpf.c's FN_* numbers, the decoder's names and read set, and the C's own
    is_read expression agree."""
    import re

    from libobs.tls.decode import FN_NAMES, READ_FNS

    bpf = Path(__file__).resolve().parents[2] / "bpf"
    c = (bpf / "ssl.bpf.c").read_text()
    numbers = {m.group(1): int(m.group(2))
               for m in re.finditer(r"^#define (FN_\w+) (\d+)", (bpf / "ssl.h").read_text(), re.M)}
    assert sorted(numbers.values()) == list(range(len(FN_NAMES)))
    c_reads = set(re.search(r"u32 is_read = ([^;]+);", c).group(1).replace("a->fn ==", "")
                  .replace("||", " ").split())
    assert {numbers[n] for n in c_reads} == READ_FNS
    assert {FN_NAMES[i] for i in READ_FNS} == {
        "SSL_read", "SSL_read_ex", "gnutls_record_recv", "PR_Read", "PR_Recv",
        "crypto/tls.(*Conn).Read"}


def test_lib_option_accepts_every_stack_obs_reads():
    """obs-ssl --lib: libssl, libgnutls, libnspr4 and Go binaries with crypto/tls, not others."""
    from tests.support import gobuild

    for path in (LIBDIR / "libssl.so.3", LIBDIR / "libgnutls.so.30", LIBDIR / "libnspr4.so",
                 gobuild.build("goclient", stripped=True)):
        assert libssl.file_readable(path), path
    for path in (gobuild.build("gonotls"), LIBDIR / "libcurl-gnutls.so.4", Path("/etc/hostname")):
        assert not libssl.file_readable(path), path
