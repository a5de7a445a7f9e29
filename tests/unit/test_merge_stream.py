"""Reading many NDJSON sources (libobs.merge.input): files, pipes, FIFOs, --follow, bad lines."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.merge.input import Batch, Lines, Problem, Reader, Reporter, decode


def drain(reader: Reader, rounds: int = 200, until: int | None = None) -> Batch:
    total = Batch()
    for _ in range(rounds):
        if reader.done or (until is not None and len(total.lines) >= until):
            break
        b = reader.poll(0.05)
        total.lines += b.lines
        total.problems += b.problems
        total.ended += b.ended
    return total


def test_files_and_line_numbers(tmp_path: Path) -> None:
    a = tmp_path / "a.ndjson"
    a.write_bytes(b'{"n":1}\n\n   \n{"n":2}\n{"n":3}')  # blank lines count, no final newline
    b = tmp_path / "b.ndjson"
    b.write_bytes(b"")
    r = Reader([str(a), str(b)])
    got = drain(r)
    assert [(line.sid, line.lineno, line.data) for line in got.lines] == [
        (0, 1, b'{"n":1}'), (0, 4, b'{"n":2}'), (0, 5, b'{"n":3}')]
    assert sorted(got.ended) == [0, 1] and r.done and r.failed == []


def test_missing_source_fails_alone(tmp_path: Path) -> None:
    a = tmp_path / "a.ndjson"
    a.write_bytes(b"{}\n")
    r = Reader([str(tmp_path / "nope"), str(a)])
    got = drain(r)
    assert [line.data for line in got.lines] == [b"{}"]
    assert [(p.source, p.kind) for p in got.problems] == [(str(tmp_path / "nope"), "open_error")]
    assert r.failed == [str(tmp_path / "nope")]


def test_pipe_on_stdin_and_a_fifo(tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    r = Reader(["-", str(fifo)], stdin_fd=rfd)
    os.write(wfd, b'{"a":1}\n{"a"')
    assert [line.data for line in drain(r, rounds=5).lines] == [b'{"a":1}']
    wf = os.open(fifo, os.O_WRONLY)  # a reader exists, so this does not block
    os.write(wf, b'{"f":1}\n')
    os.close(wf)
    os.write(wfd, b':2}\n')
    os.close(wfd)
    got = drain(r)
    assert sorted(line.data for line in got.lines) == [b'{"a":2}', b'{"f":1}']
    assert r.done and r.name(0) == "<stdin>"
    assert os.get_blocking(rfd)  # stdin is shared with whoever started us: left as found
    os.close(rfd)


def test_fifo_without_writer_yet_is_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    r = Reader([str(fifo)])
    for _ in range(3):
        assert r.poll(0.01).ended == []  # no writer has come: not EOF
    wf = os.open(fifo, os.O_WRONLY)
    os.write(wf, b"{}\n")
    os.close(wf)
    assert [line.data for line in drain(r).lines] == [b"{}"]
    assert r.done


def test_follow_reopens_a_named_fifo_for_its_next_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    r = Reader([str(fifo)], follow=True, interval=0.01)
    lines = []
    for n in range(2):
        wf = os.open(fifo, os.O_WRONLY)
        os.write(wf, b'{"w":%d}\n' % n)
        os.close(wf)
        lines += drain(r, rounds=20, until=1).lines
    assert [line.data for line in lines] == [b'{"w":0}', b'{"w":1}']
    assert not r.done


def test_over_long_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b'{"ok":1}\n' + b"x" * 300_000 + b'\n{"ok":2}\n' + b"y" * 200_000)
    r = Reader([str(a)], max_line=100_000)
    got = drain(r)
    assert [(line.lineno, line.data) for line in got.lines] == [(1, b'{"ok":1}'), (3, b'{"ok":2}')]
    assert [(p.lineno, p.kind) for p in got.problems] == [(2, "too_long"), (4, "too_long")]


def test_a_long_line_is_assembled_in_linear_time() -> None:
    """A 15 MiB line in 64 KiB reads (the issue: 6 s): each byte is copied into the line once,
    and once more to hand the line out. Re-joining the partial line on every read, as before,
    moves n²/(2·chunk) bytes: 1.8 GB here."""
    size, chunk = 15 << 20, b"x" * (64 << 10)
    lines = Lines()
    for _ in range(size // len(chunk)):
        assert lines.feed(chunk, eof=False) == ([], [])
    assert lines.feed(b'"}\n{"next":1', eof=False) == ([(1, b"x" * size + b'"}')], [])
    assert lines.moved <= 2 * size + 64
    assert lines.feed(b"", eof=True) == ([(2, b'{"next":1')], [])


def test_the_default_max_line_is_64_mib_and_the_next_line_survives() -> None:
    lines = Lines()
    chunk = b"y" * (1 << 20)
    for _ in range(64):
        assert lines.feed(chunk, eof=False) == ([], [])  # 64 MiB exactly: still a line
    assert lines.feed(b"y", eof=False) == ([], [1])  # one byte more: reported, once
    assert lines.feed(chunk, eof=False) == ([], [])  # and dropped up to its newline
    assert lines.moved <= 64 << 20
    assert lines.feed(b'\n{"ok":1}\n', eof=False) == ([(2, b'{"ok":1}')], [])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=30),
       st.lists(st.integers(1, 64), min_size=1, max_size=10))
def test_lines_survive_any_chunking(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    rfd, wfd = os.pipe()
    r = Reader(["-"], stdin_fd=rfd, max_line=30)
    got: list[tuple[int, bytes]] = []
    problems: list[Problem] = []
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        os.write(wfd, data[pos:pos + n])
        pos, i = pos + n, i + 1
        b = r.poll(0)
        got += [(line.lineno, line.data) for line in b.lines]
        problems += b.problems
    os.close(wfd)
    b = drain(r)
    got += [(line.lineno, line.data) for line in b.lines]
    problems += b.problems
    os.close(rfd)
    want = [(n, line) for n, line in enumerate(lines, 1)
            if line and not line.isspace() and len(line) <= 30]
    assert got == want
    assert sorted(p.lineno or 0 for p in problems) == [
        n for n, line in enumerate(lines, 1) if len(line) > 30]


def test_follow_reads_growth_truncation_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "exec.ndjson"
    log.write_bytes(b'{"n":1}\n')
    r = Reader([str(log)], follow=True, interval=0.01)
    assert [line.data for line in drain(r, rounds=5, until=1).lines] == [b'{"n":1}']
    with log.open("ab") as f:
        f.write(b'{"n":2}\n{"n":')  # the writer is mid-line: wait for the rest
        f.flush()
        assert [line.data for line in drain(r, rounds=5, until=2).lines] == [b'{"n":2}']
        f.write(b"3}\n")
    assert [line.data for line in drain(r, rounds=10, until=1).lines] == [b'{"n":3}']
    log.write_bytes(b'{"n":4}\n')  # truncated and rewritten (copytruncate)
    time.sleep(0.02)
    assert [line.data for line in drain(r, rounds=10, until=1).lines] == [b'{"n":4}']
    log.rename(tmp_path / "exec.ndjson.1")
    log.write_bytes(b'{"n":5}\n')  # rotated: a new file under the name
    got = drain(r, rounds=20, until=1)
    assert [line.data for line in got.lines] == [b'{"n":5}']
    assert not r.done
    r.close()


def test_follow_waits_for_a_missing_file_and_can_start_at_the_end(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_bytes(b'{"old":1}\n')
    later = tmp_path / "later"
    r = Reader([str(old), str(later)], follow=True, from_end=True, interval=0.01)
    first = drain(r, rounds=5)
    assert first.lines == []
    assert [(p.source, p.kind) for p in first.problems] == [(str(later), "waiting")]
    later.write_bytes(b'{"later":1}\n')
    with old.open("ab") as f:
        f.write(b'{"old":2}\n')
    got = drain(r, rounds=20, until=2)
    assert sorted(line.data for line in got.lines) == [b'{"later":1}', b'{"old":2}']


def test_skipped_sources_are_not_read(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"{}\n")
    rfd, wfd = os.pipe()
    os.write(wfd, b"{}\n")
    r = Reader([str(a), "-"], stdin_fd=rfd)
    t = time.monotonic()
    assert r.poll(0.2, skip={0, 1}).lines == []
    assert time.monotonic() - t < 1  # waited, but did not spin or hang
    assert len(r.poll(0.2).lines) == 2
    os.close(wfd)
    os.close(rfd)


@pytest.mark.parametrize(("line", "kind"), [
    (b"{not json", "malformed"),
    (b"[1, 2]", "not_object"),
    (b'{"event": {"Dns": {}}}', "missing_ts"),
    (b'{"ts": "soon", "event": {"Dns": {}}}', "missing_ts"),
    (b'{"ts": 1.5, "event": {"Dns": {}}}', "missing_ts"),
    (b'{"ts": true, "event": {"Dns": {}}}', "missing_ts"),
    (b'{"ts": 1}', "not_event"),
    (b'{"ts": 1, "event": {"Dns": {}, "Egress": {}}}', "not_event"),
    (b'{"ts": 1, "event": {"Dns": 5}}', "not_event"),
])
def test_bad_lines_are_classified_and_skipped(line: bytes, kind: str) -> None:
    ev, problem = decode(line)
    assert ev is None and problem is not None and problem[0] == kind


def test_unknown_kind_is_reported_and_passed_through() -> None:
    ev, problem = decode(b'{"ts": 1, "event": {"FutureThing": {"x": 1}}}')
    assert ev == {"ts": 1, "event": {"FutureThing": {"x": 1}}}
    assert problem is not None and problem[0] == "unknown_kind"


@given(st.binary(max_size=200))
def test_decode_is_total(data: bytes) -> None:
    ev, problem = decode(data)
    assert (ev is None) <= (problem is not None)


def test_reporter_rate_limits_and_counts_everything() -> None:
    now = [0.0]
    written: list[str] = []
    rep = Reporter(written.append, rate=10, burst=5, clock=lambda: now[0])
    for i in range(100):
        rep.report(Problem("src", i + 1, "malformed", "not JSON"))
    assert written[0] == "obs-merge: src:1: not JSON\n"
    assert len(written) == 5 and rep.counts["malformed"] == 100
    now[0] = 10.0
    rep.report(Problem("src", 101, "malformed", "not JSON"))
    assert written[5:] == ["obs-merge: 95 more input problems not shown\n",
                           "obs-merge: src:101: not JSON\n"]
    rep.report(Problem("other", None, "open_error", "cannot open: gone"))
    assert written[-1] == "obs-merge: other: cannot open: gone\n"
