import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.events import envelope
from libobs.tool.sink import Sink, as_line, dumps, envelope_middle, human

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ev(i=0, **fields):
    return envelope("ToolExec", {"pid": i, **fields}, ts=1_764_100_000_123_456_789 + i, host="h")


def test_dumps_is_one_line_json():
    line = dumps(ev(argv=["a\nb", "\udcff"]))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line)["event"]["ToolExec"]["pid"] == 0


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.binary(), st.none())))
def test_any_fields_make_valid_json(fields):
    line = dumps(ev(**{"x": fields}))
    orjson.loads(line)


def test_big_ints_do_not_kill_the_stream():
    orjson.loads(dumps(ev(x=2**70)))


def test_human_line():
    out = human(envelope("ProcessExit", {"pid": 5, "comm": "bash", "exit_code": 3,
                                         "duration": {"secs": 1, "nanos": 500_000_000}},
                         ts=0, host="h"))
    assert b"ProcessExit" in out and b"pid=5" in out and b"exit_code=3" in out
    assert b"duration=1500.0ms" in out and out.endswith(b"\n")


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.binary(), st.none())),
       st.text(), st.one_of(st.none(), st.text()), st.integers(0, 2**63))
def test_a_line_is_its_event_dumped(fields, comm, provider, ts):
    """A Line from an envelope's rendered middle is what dumps makes of that envelope, whatever
    the values (surrogates, bytes, big ints sanitised the same way)."""
    identity = {"agent": comm, "task": "7", "session": None}
    process = {"pid": 7, "comm": comm}
    for proc in (process, None):
        kw = {"host": "h", "identity": identity, "process": proc, "provider": provider}
        line = as_line("SslContent", ts, envelope_middle("SslContent", **kw), fields)
        assert line.kind == "SslContent"
        assert line.json == dumps(envelope("SslContent", fields, ts=ts, **kw))


def test_a_sink_takes_lines_as_events(tmp_path):
    event = envelope("LlmApi", {"pid": 5, "model": "m x"}, ts=1, host="h")
    middle = envelope_middle("LlmApi", host="h", identity=event["identity"], process=None,
                             provider=None)
    for fmt in ("json", "human"):
        path = tmp_path / fmt
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        s = Sink(fmt, fd=fd)
        s.emit(event)
        s.emit(as_line("LlmApi", 1, middle, event["event"]["LlmApi"]))
        s.close()
        os.close(fd)
        first, second = path.read_bytes().splitlines()
        assert first == second and s.counts["LlmApi"] == 2


def test_counts_and_writes_to_fd(tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    s = Sink("json", fd=fd)
    for i in range(3):
        s.emit(ev(i))
    s.close()
    os.close(fd)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(x)["event"]["ToolExec"]["pid"] for x in lines] == [0, 1, 2]
    assert s.counts["ToolExec"] == 3


def test_stalled_reader_drops_and_counts_never_blocks():
    r, w = os.pipe()
    s = Sink("json", fd=w, max_buffer=64 * 1024)
    for i in range(20_000):  # ~3 MB into a 64 KiB pipe that nobody reads
        s.emit(ev(i))
    assert s.output_dropped > 0
    assert s.counts["ToolExec"] + s.output_dropped == 20_000
    os.close(r)
    os.close(w)


def test_emit_many_is_emit_of_each_with_one_write(tmp_path, monkeypatch):
    evs = [ev(i, argv=["x" * (i % 50)]) for i in range(300)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda f, b: writes.append(len(b)) or real_write(f, b))
    s = Sink("json", fd=fd, lossless=True)
    s.emit_many(evs)
    os.close(fd)
    assert path.read_bytes() == b"".join(dumps(e) for e in evs)
    assert len(writes) == 1 and s.counts["ToolExec"] == 300


def test_emit_many_into_a_stalled_reader_drops_and_counts_like_emit():
    r, w = os.pipe()
    s = Sink("json", fd=w, max_buffer=64 * 1024)
    for start in range(0, 20_000, 500):
        s.emit_many([ev(i) for i in range(start, start + 500)])
    assert s.output_dropped > 0
    assert s.counts["ToolExec"] + s.output_dropped == 20_000
    assert len(s.pending) <= 64 * 1024
    os.close(r)
    os.close(w)


def test_stalled_reader_costs_no_write_per_dropped_line(monkeypatch):
    r, w = os.pipe()
    s = Sink("json", fd=w, max_buffer=64 * 1024)
    for i in range(5_000):  # the pipe and the buffer are full
        s.emit(ev(i))
    assert s.output_dropped > 0
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: writes.append(fd) or real_write(fd, b))
    for i in range(1_000):
        s.emit(ev(i))
    assert writes == []  # dropped without asking the fd each time
    s.flush()  # the run loop's flush per batch still tries
    assert writes == [w]
    os.close(r)
    os.close(w)


def test_head_1_exits_quietly():
    code = textwrap.dedent("""
        import sys
        from libobs.events import envelope
        from libobs.tool.sink import Sink, OutputClosed, quiet_broken_pipe
        s = Sink("json")
        try:
            for i in range(1_000_000):
                s.emit(envelope("ToolExec", {"pid": i}, ts=i, host="h"))
        except OutputClosed:
            quiet_broken_pipe()
            sys.exit(0)
        sys.exit(3)
    """)
    p = subprocess.run(f"{sys.executable} -c '{code}' | head -1", shell=True, cwd=REPO,
                       capture_output=True, text=True, executable="/bin/bash",
                       env={**os.environ, "PYTHONPATH": REPO})
    assert p.returncode == 0
    assert p.stderr == ""
    assert orjson.loads(p.stdout)["event"]["ToolExec"]["pid"] == 0


def test_a_full_disk_is_counted_by_a_lossy_sink_and_never_raises():
    """Kernel tools keep draining when stdout refuses writes (ENOSPC): lines are dropped and
    counted, the error kept for the tool to say once and to exit 1 at the end."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = Sink("json", fd=fd)
        for i in range(5):
            sink.emit(ev(i))
        sink.close()
    finally:
        os.close(fd)
    assert sink.output_dropped == 5 and not sink.pending
    assert sink.write_error == os.strerror(28)  # ENOSPC


def test_a_full_disk_stops_a_lossless_sink():
    from libobs.tool.sink import OutputFailed

    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = Sink("json", fd=fd, lossless=True)
        try:
            sink.emit(ev())
        except OutputFailed as e:
            assert str(e) == os.strerror(28)
        else:
            raise AssertionError("a lossless sink dropped a line silently")
    finally:
        os.close(fd)


def test_a_write_error_is_news_once():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = Sink("json", fd=fd)
        assert sink.write_error_news() is None
        sink.emit(ev())
        first = sink.write_error_news()
        sink.emit(ev(1))
    finally:
        os.close(fd)
    assert first is not None and first.startswith("cannot write output: No space left")
    assert sink.write_error_news() is None and sink.output_dropped == 2


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        Sink("xml", fd=1)


def test_a_value_orjson_cannot_take_becomes_its_text():
    assert orjson.loads(dumps(ev(x=Path("/a"), y={1, 2})))["event"]["ToolExec"]["x"] == "/a"


def test_a_batching_sink_writes_once_its_buffer_is_full():
    """autoflush off (the run loop flushes per batch): a full buffer is written before a line
    would be dropped, so a reader that keeps up loses nothing."""
    r, w = os.pipe()
    try:
        s = Sink("json", fd=w, max_buffer=1024, autoflush=False)
        for i in range(40):
            s.emit(ev(i))
        assert s.output_dropped == 0 and s.counts["ToolExec"] == 40
        written = os.read(r, 1 << 16)
        assert 1024 >= len(s.pending) > 0 and written.endswith(b"\n")
        s.flush()
        written += os.read(r, 1 << 16)
        assert [orjson.loads(ln)["event"]["ToolExec"]["pid"] for ln in written.splitlines()] \
            == list(range(40))
    finally:
        os.close(r)
        os.close(w)


def test_a_sink_on_a_closed_fd_counts_instead_of_raising():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    s = Sink("json", fd=w)  # fstat fails: no blocking mode to set
    s.emit(ev(1))
    assert s.output_dropped == 1 and s.write_error == os.strerror(9)  # EBADF
