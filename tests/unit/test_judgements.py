"""TLS library judgements kept between runs (libobs/tls/judgements.py): found again only for
the same file judged by the same code, and stored exactly."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.kernel import cache
from libobs.tls import judgements
from libobs.tls.points import ProbePoint
from libobs.tls.stacks import Judgement

points = st.builds(ProbePoint, st.text(max_size=20), st.integers(0, 2**64 - 1),
                   st.text(max_size=40), st.tuples(st.text(max_size=12)),
                   st.lists(st.integers(0, 2**64 - 1), max_size=4).map(tuple), st.booleans())
verdicts = st.builds(Judgement, st.none() | st.text(max_size=30),
                     st.lists(points, max_size=4).map(tuple), st.none() | st.text(max_size=30))


@given(verdicts)
def test_round_trip(j):
    import json
    assert judgements.from_json(json.loads(json.dumps(judgements.to_json(j)))) == j


@pytest.mark.parametrize("bad", [None, [], {}, {"stack": 1, "problem": None, "points": []},
                                 {"stack": None, "problem": None, "points": [[1, 2]]},
                                 {"stack": None, "problem": None, "points": [["f", "x", "l", [], [], True]]}])
def test_other_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        judgements.from_json(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="the start-up cache is root-only")
def test_same_file_found_again_changed_file_judged_again(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"x" * 100)
    calls: list[str] = []
    verdict = Judgement("OpenSSL", (ProbePoint("SSL_read", 0x1234, "SSL_read", ("SSL_read",)),))

    def judge(path: str, exported_only: bool) -> Judgement:
        calls.append(path)
        return verdict

    def run(exported_only: bool = False) -> tuple[Judgement, int]:
        memo = judgements.Memo(judge)
        found = memo.judge(str(lib), exported_only)
        memo.save()
        return found, memo.hits

    assert run() == (verdict, 0) and len(calls) == 1
    assert run() == (verdict, 1) and len(calls) == 1        # from the cache
    assert run(exported_only=True) == (verdict, 0) and len(calls) == 2   # other options
    lib.write_bytes(b"y" * 100)                              # same size, new content
    os.utime(lib, ns=(1, 1))
    assert run() == (verdict, 0) and len(calls) == 3
    assert run() == (verdict, 1) and len(calls) == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="the start-up cache is root-only")
def test_saved_again_only_when_changed(tmp_path, monkeypatch):
    """A late attach saves the judgements again: unchanged since the last save, nothing is
    written; a file judged since, the whole run's entry."""
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    stored: list[dict[str, object]] = []
    real_store = cache.store_json
    monkeypatch.setattr(cache, "store_json",
                        lambda kind, key, value, **kw: (stored.append(dict(value)),
                                                        real_store(kind, key, value, **kw)))
    libs = [tmp_path / f"lib{i}.so" for i in range(2)]
    for lib in libs:
        lib.write_bytes(b"x" * 100)
    memo = judgements.Memo(lambda path, exported_only: Judgement(None))
    memo.judge(str(libs[0]), False)
    memo.save()
    memo.save()
    assert len(stored) == 1
    memo.judge(str(libs[1]), False)
    memo.save()
    memo.save()
    assert len(stored) == 2 and len(stored[1]) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the start-up cache is root-only")
def test_programs_met_are_remembered_newest_first_while_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    progs = [tmp_path / f"prog{i}" for i in range(6)]
    for p in progs:
        p.write_bytes(b"\x7fELF")
    assert judgements.remembered() == []
    for p in progs:
        judgements.remember(str(p))
    judgements.remember(str(progs[3]))  # met again: newest, listed once
    judgements.remember("/proc/1/root/usr/bin/x")  # a container's file, only while it lives
    judgements.remember(str(tmp_path / "gone"))
    want = [str(progs[i]) for i in (3, 5, 4, 2)]
    assert judgements.remembered() == want
    assert len(want) == judgements.PROGRAMS_KEPT
    os.utime(progs[5], ns=(1, 1))  # changed: another file as far as obs can tell
    assert judgements.remembered() == [str(progs[i]) for i in (3, 4, 2)]


@pytest.mark.skipif(os.geteuid() != 0, reason="the start-up cache is root-only")
@pytest.mark.parametrize("garbage", [{"a": 1}, [1, 2], [["x"]], [[1, 2]], "text"])
def test_a_garbage_programs_entry_names_nothing(tmp_path, monkeypatch, garbage):
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    cache.store_json(judgements.PROGRAMS, judgements.PROGRAMS, garbage)
    assert judgements.remembered() == []
    judgements.remember(str(tmp_path))
    assert judgements.remembered() == [str(tmp_path)]
