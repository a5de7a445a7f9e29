"""The start-up cache is read only when only root can write it, and keys change with inputs."""

import os

import pytest

from libobs.kernel import cache

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")


@pytest.fixture
def root(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setattr(cache, "ROOT", d)
    return d


def test_round_trip_root_only(root):
    cache.store_json("btf", "k", {"OFF_A": 1})
    assert cache.load_json("btf", "k") == {"OFF_A": 1}
    assert cache.root_only(root / "btf" / "k.json") is None


def test_group_writable_entry_is_refused(root, capsys):
    cache.store_json("btf", "k", {"OFF_A": 1})
    os.chmod(root / "btf" / "k.json", 0o666)
    assert cache.load_json("btf", "k") is None
    assert "writable by group or others" in capsys.readouterr().err


def test_entry_owned_by_another_user_is_refused(root):
    cache.store_json("btf", "k", {"OFF_A": 1})
    os.chown(root / "btf" / "k.json", 65534, 65534)
    assert cache.load_json("btf", "k") is None


def test_writable_parent_is_refused(root):
    cache.store_json("btf", "k", {"OFF_A": 1})
    os.chmod(root / "btf", 0o777)
    assert cache.load_json("btf", "k") is None


def test_key_changes_with_every_input():
    assert cache.key("a", b"blob", {"X": "t.x"}) != cache.key("a", b"blob2", {"X": "t.x"})
    assert cache.key("a", b"blob", {"X": "t.x"}) != cache.key("a", b"blob", {"X": "t.y"})
    assert cache.key("a", b"blob", {"X": "t.x"}) == cache.key("a", b"blob", {"X": "t.x"})


def test_keep_drops_the_least_recently_used(root):
    for i in range(4):
        cache.store_json("bpf", f"k{i}", i)
        os.utime(root / "bpf" / f"k{i}.json", ns=(i * 10**9, i * 10**9))
    cache.touch("bpf", "k0")  # used just now: kept
    cache.store_json("bpf", "k4", 4, keep=3)
    assert sorted(p.stem for p in (root / "bpf").glob("*.json")) == ["k0", "k3", "k4"]
