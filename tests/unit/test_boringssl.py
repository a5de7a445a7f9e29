"""libobs.tls.boringssl: SSL_read/SSL_write of a BoringSSL linked in statically, located by the
errors ssl_lib.cc reports (on small gcc-built programs of that shape; Claude Code's own
releases are tests/e2e/test_real_agents.py's), and the start-up cache of its answers."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.kernel import cache
from libobs.tls import boringssl, stacks
from tests.support import fakeboringssl


def nm_addresses(path):
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {p[2]: int(p[0], 16) for p in map(str.split, out.splitlines()) if len(p) == 3}


@pytest.mark.parametrize("variant", ["abi5-exec", "abi5-pie", "abi4-exec", "abi4-pie"])
def test_located_where_the_symbols_say(variant):
    exe = fakeboringssl.build(variant)
    found = boringssl.locate(exe.read_bytes())
    nm = nm_addresses(exe)
    assert found.error is None
    assert (found.ssl_read, found.ssl_write) == (nm["SSL_read"], nm["SSL_write"])
    assert [(p.fn, p.addr, p.uretprobe) for p in found.points()] == [
        ("SSL_read", nm["SSL_read"], True), ("SSL_write", nm["SSL_write"], True)]


def test_two_candidates_are_an_error_not_a_guess():
    found = boringssl.locate(fakeboringssl.build("twice").read_bytes())
    assert found.error and found.error.startswith("ambiguous: 2 SSL_write")
    assert found.points() == ()


def test_judged_as_a_readable_stack_or_named_with_the_reason():
    j = stacks.judge(fakeboringssl.build("abi5-exec").read_bytes())
    assert j.stack == boringssl.STACK and j.problem is None and len(j.points) == 2
    j = stacks.judge(fakeboringssl.build("twice").read_bytes())
    assert j.stack == boringssl.STACK and j.points == ()
    assert "not located (ambiguous" in (j.problem or "") and stacks.LOST in (j.problem or "")


def test_build_id_is_the_gnu_note():
    exe = fakeboringssl.build("abi5-pie")
    notes = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True,
                           check=True).stdout
    bid = boringssl.build_id(exe.read_bytes())
    assert bid and f"Build ID: {bid}" in notes


def test_plan_is_cached_by_build_id_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    data = fakeboringssl.build("abi4-exec").read_bytes()
    first = boringssl.plan(data, (len(data), 1))
    assert first == boringssl.locate(data) and first.error is None
    entries = list((tmp_path / "cache" / "boringssl").glob("*.json"))
    assert len(entries) == 1
    # the entry is what a second start reads (planted: no scan could give it)
    entries[0].write_text(json.dumps({"ssl_read": 1, "ssl_write": 2, "error": None}))
    assert boringssl.plan(data, (len(data), 1)) == boringssl.Located(1, 2)
    assert boringssl.plan(data, (len(data), 2)) == first  # another mtime: another entry
    entries[0].write_text(json.dumps({"ssl_read": "x"}))  # a bad entry is not trusted
    assert boringssl.plan(data, (len(data), 1)) == first


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([b"", b"\x7fELF\x02\x01"]),
       st.sampled_from([b"", boringssl.MARKER]))
def test_any_bytes_give_an_answer(blob, prefix, marker):
    data = prefix + blob + marker
    found = boringssl.locate(data)
    assert found.error or (found.ssl_read and found.ssl_write)
    assert boringssl.build_id(data) is None or isinstance(boringssl.build_id(data), str)
