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


def test_a_symlinked_entry_is_refused(root, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"OFF_A": 2}')
    (root / "btf").mkdir(parents=True)
    (root / "btf" / "k.json").symlink_to(target)
    assert cache.load_json("btf", "k") is None
    assert cache.root_only(root / "btf" / "k.json").endswith("is a symbolic link")


def test_a_path_that_is_gone_is_not_root_only(root):
    assert "No such file" in cache.root_only(root / "absent" / "k.json")


def test_a_corrupt_entry_is_said_once_recomputed_and_rewritten(root, capsys):
    cache._warned.clear()
    cache.store_json("btf", "k", {"OFF_A": 1})
    (root / "btf" / "k.json").write_text('{"OFF_A": ')  # cut short, e.g. by a full disk
    calls = []

    def compute():
        calls.append(1)
        return {"OFF_A": 3}

    assert cache.cached_json("btf", "k", compute) == {"OFF_A": 3}
    assert cache.load_json("btf", "k") == {"OFF_A": 3}  # rewritten whole
    assert cache.cached_json("btf", "k", compute) == {"OFF_A": 3} and calls == [1]
    (root / "btf" / "k.json").write_text("not json")
    assert cache.load_json("btf", "k") is None and cache.load_json("btf", "k") is None
    err = capsys.readouterr().err
    assert err.count("ignoring a bad start-up cache entry") == 2, err  # once per distinct fault


def test_an_unwritable_cache_is_said_once_and_the_value_still_computed(tmp_path, monkeypatch,
                                                                        capsys):
    cache._warned.clear()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(cache, "ROOT", blocker / "cache")  # mkdir under a file: ENOTDIR
    for _ in range(2):
        assert cache.cached_json("btf", "k", lambda: {"OFF_A": 4}) == {"OFF_A": 4}
    err = capsys.readouterr().err
    assert err.count("cannot write the start-up cache") == 1, err
    assert not list(tmp_path.glob("**/*.tmp"))


def test_a_cache_directory_others_can_write_is_not_written(root):
    (root / "btf").mkdir(parents=True)
    os.chmod(root / "btf", 0o777)
    cache.store_json("btf", "k", {"OFF_A": 1})
    assert not (root / "btf" / "k.json").exists()


def test_keep_drops_the_least_recently_used(root):
    for i in range(4):
        cache.store_json("bpf", f"k{i}", i)
        os.utime(root / "bpf" / f"k{i}.json", ns=(i * 10**9, i * 10**9))
    cache.touch("bpf", "k0")  # used just now: kept
    cache.store_json("bpf", "k4", 4, keep=3)
    assert sorted(p.stem for p in (root / "bpf").glob("*.json")) == ["k0", "k3", "k4"]
