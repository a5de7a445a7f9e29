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
