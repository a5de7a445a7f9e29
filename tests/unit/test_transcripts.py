"""Following the transcripts an agent process has open (libobs.net.transcripts): found
through the real /proc/<pid>/fd of a real process, read only as they grow, bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.net import transcripts as tr
from libobs.net.transcripts import Tail, Transcripts, transcript_kind

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "transcripts"
ROLLOUT = (FIXTURES / "codex-0.171.0-rollout.jsonl").read_bytes()
HOLDER = """
import sys
f = open(sys.argv[1], "ab")
print("open", flush=True)
for line in sys.stdin:
    f.write(bytes.fromhex(line))
    f.flush()
    print("ok", flush=True)
"""


def test_transcript_kind() -> None:
    assert transcript_kind("/h/.codex/sessions/2026/12/02/rollout-2026-12-02T06-34-41-x.jsonl")\
        == "codex"
    assert transcript_kind("/h/.claude/projects/-tmp-w/5bb2dca4-8765-4c9f-88d8-3288dbdef346"
                           ".jsonl") == "claude"
    for other in ("/h/.codex/sessions/2026/12/02/rollout-x.jsonl (deleted)", "socket:[123]",
                  "/h/.codex/state_5.sqlite", "/h/.codex/sessions/rollout-x.jsonl",
                  "/h/.claude/projects/p/notes.jsonl"):
        assert transcript_kind(other) is None


class Holder:
    """A real process holding a transcript open for appending, as the agents do."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.p.stdout is not None and self.p.stdout.readline() == "open\n"

    def write(self, data: bytes) -> None:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(data.hex() + "\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline() == "ok\n"

    def exit(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(10)


@pytest.fixture
def rollout(tmp_path: Path) -> Iterator[tuple[Holder, Path]]:
    path = tmp_path / "home/.codex/sessions/2026/12/02/rollout-2026-12-02T06-34-41-x.jsonl"
    h = Holder(path)
    yield h, path
    if h.p.poll() is None:
        h.exit()


def test_found_through_the_process_and_read_as_it_grows(rollout: tuple[Holder, Path]) -> None:
    h, path = rollout
    said: list[str] = []
    t = Transcripts(say=said.append)
    lines = ROLLOUT.splitlines(keepends=True)
    first = lines.index(next(ln for ln in lines if b"token_usage_record" in ln))
    h.write(b"".join(lines[:first]))
    t.watch(h.p.pid, now_ns=0)
    assert t.has(h.p.pid) and t.counts["files"] == 1 and str(path) in said[0]
    assert not t.has(os.getpid())
    t.poll(h.p.pid, now_ns=1)
    assert t.facts.get(h.p.pid, []) == []  # no usage line yet
    h.write(b"".join(lines[first:]))
    t.poll(h.p.pid, now_ns=2)
    assert [f.fields["prompt_tokens"] for f in t.facts[h.p.pid]] == [4601, 4611]
    assert t.counts["usage_lines"] == 2 and "bad_lines" not in t.counts
    t.watch(h.p.pid, now_ns=5 * 10**9)  # a rescan does not follow the same file twice
    assert len(t.tails) == 1
    # the agent exits: what it wrote last is still read, then the file is let go
    h.write(lines[-2])  # a token_count: covered by the token_usage_records, not a call
    h.write(lines[-3].replace(b'"input_tokens":4611', b'"input_tokens":9999'))
    h.exit()
    assert not Path(f"/proc/{h.p.pid}").exists()
    t.poll(h.p.pid, now_ns=3)
    assert [f.fields["prompt_tokens"] for f in t.facts[h.p.pid]] == [4601, 4611, 9999]
    t.forget_gone(now_ns=10, idle_ns=100)
    assert t.has(h.p.pid)  # grown recently
    t.forget_gone(now_ns=1000, idle_ns=100)
    assert not t.has(h.p.pid)


def test_take_is_bounded_by_time_and_the_next_call(rollout: tuple[Holder, Path]) -> None:
    h, _ = rollout
    t = Transcripts()
    h.write(ROLLOUT)
    t.watch(h.p.pid, 0)
    t.poll(h.p.pid, 0)
    a, b = t.facts[h.p.pid]
    assert t.take(h.p.pid, a.ts + 1, b.ts, before=b.ts) is None  # a too early, b not before
    assert t.take(h.p.pid, a.ts - 5, b.ts + 5, before=None) == a  # the earliest
    assert t.take(h.p.pid, a.ts - 5, b.ts + 5, before=None) == b
    assert t.take(h.p.pid, 0, 2**63, None) is None


def test_a_new_file_is_read_from_near_its_end(tmp_path: Path) -> None:
    """What was written long before obs looked is not read: at most BACKLOG bytes back, from
    the first whole line in them."""
    path = tmp_path / "f"
    old = b"x" * (tr.BACKLOG + 10) + b"\n"
    path.write_bytes(old + b"one\ntwo\nthr")
    fd = os.open(path, os.O_RDONLY)
    try:
        tail = Tail.at_end(fd, "codex")
        counts: dict[str, int] = {}
        assert tail.lines(counts) == [b"one", b"two"]
        with path.open("ab") as f:
            f.write(b"ee\n")
        assert tail.lines(counts) == [b"three"]
        path.write_bytes(b"")  # truncated
        assert tail.lines(counts) == [] and counts["truncated"] == 1
    finally:
        os.close(fd)


def test_long_lines_are_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setattr(tr, "MAX_LINE", 100)
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        tail, counts = Tail.at_end(fd, "codex"), {}
        with path.open("ab") as f:
            for piece in (b"a\n" + b"L" * 150, b"L" * 150, b"L\nb\n"):
                f.write(piece)
                f.flush()
                assert max(map(len, tail.lines(counts)), default=0) <= 100
        assert tail.partial == b"" and counts == {"long_lines": 1}
    finally:
        os.close(fd)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       st.lists(st.integers(1, 60), min_size=1, max_size=30))
def test_lines_come_out_whole_however_they_are_written(lines: list[bytes], cuts: list[int]
                                                       ) -> None:
    """Any split of the appended bytes into writes gives back exactly the complete lines."""
    import tempfile
    data = b"".join(ln + b"\n" for ln in lines)
    with tempfile.NamedTemporaryFile() as f:
        tail, counts, got, off = Tail.at_end(f.fileno(), "codex"), {}, [], 0
        for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
            if off >= len(data):
                break
            os.pwrite(f.fileno(), data[off:off + cut], off)
            off += cut
            got += tail.lines(counts)
        got += tail.lines(counts)
    assert got == lines and counts == {}


def test_a_fifo_named_like_a_transcript_is_not_opened(tmp_path: Path) -> None:
    """O_NONBLOCK + a regular-file check: a watched process cannot make obs block."""
    fifo = tmp_path / ".codex/sessions/2026/12/02/rollout-x.jsonl"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-c", "import os,sys,time; "
                          "fd = os.open(sys.argv[1], os.O_RDWR); print('open', flush=True); "
                          "time.sleep(30)", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "open\n"
        t0 = time.monotonic()
        t = Transcripts()
        t.watch(p.pid, 0)
        assert not t.has(p.pid) and time.monotonic() - t0 < 5
    finally:
        p.kill()
        p.wait()


def test_a_poll_reads_a_bounded_amount_and_the_rest_later(
        rollout: tuple[Holder, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tr, "MAX_READ", 1024)
    h, path = rollout
    t = Transcripts()
    t.watch(h.p.pid, 0)
    h.write(ROLLOUT)
    [tail] = t.tails.values()
    polls = 0
    while tail.offset < len(ROLLOUT):
        before = tail.offset
        t.poll(h.p.pid, polls)
        assert 0 < tail.offset - before <= 4 * 1024
        polls += 1
    assert polls == -(-len(ROLLOUT) // 4096)
    assert [f.fields["prompt_tokens"] for f in t.facts[h.p.pid]] == [4601, 4611]
