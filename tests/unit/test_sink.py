import os
import subprocess
import sys
import textwrap

import orjson
from hypothesis import given
from hypothesis import strategies as st

from libobs.events import envelope
from libobs.sink import Sink, dumps, human

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
        from libobs.sink import Sink, OutputClosed, quiet_broken_pipe
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
