"""The compiled-program cache (libobs/kernel/objcache.py) in the real kernel: a program loaded
from the cache is the program bcc compiled (same instructions by the kernel's own tag, same
maps, same attach points); a tool started twice compiles once and reports the right events
from the cached program; an entry the kernel refuses is said once and compiled again."""

from __future__ import annotations

import base64
import ctypes
import json
import subprocess
from pathlib import Path

import pytest

from libobs.kernel import cache, objcache, program
from libobs.kernel.source import source_text
from tests.support.tools import running

pytestmark = pytest.mark.kernel

BUILDS = [
    ("exec.bpf.c", {"MAX_ARGV": 128 << 10, "FILES": True, "FOLD_NS": 10**9}),
    ("exec.bpf.c", {"MAX_ARGV": 128 << 10}),
    ("net.bpf.c", {"SNI": True, "DNS": True}),
    ("net.bpf.c", {"SNI": True, "LLM": True}),
    ("ssl.bpf.c", {"MAX_CAPTURE": 16 << 10}),
]


def fdinfo(fd: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setattr(cache, "ROOT", d)
    cache._warned.clear()
    return d


@pytest.mark.parametrize(("source", "extra"), BUILDS, ids=[f"{s}-{sorted(e)}" for s, e in BUILDS])
def test_cached_program_is_the_compiled_program(source, extra):
    from bcc import BPF

    flags = program.cflags(program.base_defines(1 << 22) | extra)
    compiled = BPF(text=source_text(source).encode(), cflags=flags)
    entry = json.loads(json.dumps(objcache.capture(compiled)))  # as it comes from disk
    cached = objcache._bpf_class()(entry)
    try:
        assert sorted(cached.tracepoint_fds) == sorted(compiled.tracepoint_fds)
        assert cached.tracepoint_fds or source == "ssl.bpf.c", "nothing autoattached"
        for f in entry["funcs"]:
            name = f["name"].encode()
            kind = BPF.TRACEPOINT if name.startswith(b"tracepoint__") else BPF.KPROBE
            a, b = compiled.load_func(name, kind), cached.load_func(name, kind)
            ia, ib = fdinfo(a.fd), fdinfo(b.fd)
            assert (ia["prog_tag"], ia["prog_type"]) == (ib["prog_tag"], ib["prog_type"]), name
        for i, spec in enumerate(entry["maps"]):
            name = spec["name"].encode()
            want, got = fdinfo(compiled[name].map_fd), fdinfo(cached.map_fds[i])
            keys = ("map_type", "key_size", "value_size", "max_entries", "map_flags")
            assert [want[k] for k in keys] == [got[k] for k in keys], spec["name"]
            t, c = cached[name], compiled[name]
            assert (t.max_entries, t.flags, t.ttype, type(t)) == (
                c.max_entries, c.flags, c.ttype, type(c)), name
            assert ctypes.sizeof(t.Key) == ctypes.sizeof(c.Key), name
            assert ctypes.sizeof(t.Leaf) == ctypes.sizeof(c.Leaf), name
    finally:
        cached.cleanup()
        compiled.cleanup()


def test_tables_work_on_a_cached_program(cache_dir):
    defines = program.base_defines(1 << 22) | {"MAX_ARGV": 4096}
    program.Program("exec.bpf.c", defines).close()
    p = program.Program("exec.bpf.c", defines)
    try:
        assert p.from_cache
        lost = p.table("lost")
        assert p.lost() == 0 and len(lost) == lost.max_entries > 0
        pending = p.table("sec_pending")
        pending[ctypes.c_uint32(0xFFFFFFF0)] = pending.Leaf()
        assert ctypes.c_uint32(0xFFFFFFF0) in pending
        del pending[ctypes.c_uint32(0xFFFFFFF0)]
        assert ctypes.c_uint32(0xFFFFFFF0) not in pending
        events: list[bytes] = []
        p.open_ring("events", events.append)
        subprocess.run(["/bin/true"], check=True)
        deadline = 50
        while not events and deadline:
            p.poll(100)
            deadline -= 1
        assert events, "no record from the cached program's ring buffer"
    finally:
        p.close()


def test_tool_twice_compiles_once_and_reports_from_the_cache(tmp_path):
    d = tmp_path / "cache"
    env = {"OBS_CACHE_DIR": str(d)}
    for run, want in (("cold", (0, 1)), ("warm", (1, 0))):
        with running("obs-exec", "--heartbeat-interval", "0.5", env=env) as r:
            p = subprocess.Popen(["/bin/sh", "-c", "exit 7", run])
            assert p.wait() == 7
            [ex] = r.wait_events("ToolExec", lambda f, p=p: f["pid"] == p.pid)
            assert ex["argv"] == ["/bin/sh", "-c", "exit 7", run]
            assert ex["filename"] == "/bin/sh"
            [pe] = r.wait_events("ProcessExit", lambda f, p=p: f["pid"] == p.pid)
            assert pe["exit_code"] == 7 and pe["signal"] is None
            [hb] = r.wait_events("CollectorHeartbeat")
            assert (hb["programs_cached"], hb["programs_compiled"]) == want, run
            assert "tracepoint:sched:sched_process_exec" in hb["attached_probes"]
        assert r.status == 0, r.stderr()
        assert r.stderr() == "", r.stderr()
        assert len(list((d / "bpf").glob("*.json"))) == 1


def _corrupt(d: Path, edit) -> None:
    [f] = (d / "bpf").glob("*.json")
    entry = json.loads(f.read_text())
    edit(entry)
    f.write_text(json.dumps(entry))


def _bad_opcode(entry) -> None:
    for fn in entry["funcs"]:
        code = bytearray(base64.b64decode(fn["insns"]))
        code[0] = 0xFF
        fn["insns"] = base64.b64encode(bytes(code)).decode()


@pytest.mark.parametrize("edit", [_bad_opcode,
                                  lambda e: e["maps"].pop(),
                                  lambda e: e["funcs"][0].update(insns="@@@"),
                                  lambda e: e["maps"][0].update(type=99)])
def test_unusable_entry_is_said_and_compiled(cache_dir, capsys, edit):
    defines = program.base_defines(1 << 22) | {"MAX_ARGV": 4096}
    program.Program("exec.bpf.c", defines).close()
    _corrupt(cache_dir, edit)
    p = program.Program("exec.bpf.c", defines)
    try:
        assert not p.from_cache
        assert "tracepoint:sched:sched_process_exec" in p.attached()
    finally:
        p.close()
    err = capsys.readouterr().err
    assert err.count("not using the cached BPF program") == 1, err
    p = program.Program("exec.bpf.c", defines)  # the compile wrote a good entry back
    assert p.from_cache
    p.close()


def test_truncated_entry_is_said_and_compiled(cache_dir, capsys):
    defines = program.base_defines(1 << 22) | {"MAX_ARGV": 4096}
    program.Program("exec.bpf.c", defines).close()
    [f] = (cache_dir / "bpf").glob("*.json")
    f.write_text(f.read_text()[:1000])
    p = program.Program("exec.bpf.c", defines)
    p.close()
    assert not p.from_cache
    assert "ignoring a bad start-up cache entry" in capsys.readouterr().err


def test_other_flags_are_another_entry(cache_dir):
    base = program.base_defines(1 << 22)
    for argv_kib in (4, 8, 4):
        p = program.Program("exec.bpf.c", base | {"MAX_ARGV": argv_kib << 10})
        p.close()
    assert p.from_cache
    assert len(list((cache_dir / "bpf").glob("*.json"))) == 2
