"""obs-merge --summary --live: the per-agent table, rendered to a rich Console over a StringIO,
and in a real run under a pseudo-terminal; without a terminal the NDJSON stream still flows."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import time
from pathlib import Path

import orjson
from rich.console import Console

from libobs.events import envelope
from libobs.export.live import table
from libobs.merge.sessions import Proc
from libobs.merge.summary import Summary
from tests.support.tools import tool_cmd
from tests.unit.test_summary import RUN, SESSION, replay

FIXTURES = Path(__file__).parents[1] / "fixtures"
FILES = [str(FIXTURES / f"{n}.ndjson") for n in RUN]


def render(width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(
        table(replay(RUN), {"events_in": 43}))
    return out.getvalue()


def test_the_table_has_a_row_per_agent_session() -> None:
    text = render()
    header = next(line for line in text.splitlines() if "SESSION" in line)
    for column in ("AGENT", "CALLS", "PROMPT/COMPL TOK", "COST USD", "TTFT ms p50/p95",
                   "TOOLS RUN", "DENIALS"):
        assert column in header
    (row,) = [line for line in text.splitlines() if SESSION in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == [SESSION, "python3", "3", "7721/695", "0.0348", "610/720", "6", "1"]
    assert "events in 43" in text and "genai-prices" in text


def test_unknown_counts_are_dashes_not_zeros() -> None:
    out = io.StringIO()
    summary = Summary()
    summary.add(envelope("LlmCall", {"pid": 1}, ts=1, host="h"),
                Proc(1, 0, agent="LlmCall", session="1@0"))
    Console(file=out, width=200, color_system=None).print(table(summary))
    (row,) = [line for line in out.getvalue().splitlines() if "1@0" in line]
    assert [c.strip() for c in row.strip("│ ").split("│")][2:6] == ["1", "-/-", "-", "-"]


def test_live_table_under_a_real_terminal() -> None:
    parent, child = pty.openpty()
    os.set_blocking(parent, False)
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
    p = subprocess.Popen(tool_cmd("obs-merge", "--summary", "--live", *FILES), stdout=child,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(parent, 65536)
        except BlockingIOError:
            if p.poll() is not None:
                break
            time.sleep(0.05)
            continue
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    p.wait(timeout=30)
    os.close(parent)
    text = seen.decode(errors="replace")
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    assert "PROMPT/COMPL TOK" in text and SESSION in text and "7721/695" in text
    assert '{"ts"' not in text  # the table replaces the stream on a terminal


def test_without_a_terminal_live_is_said_once_and_ndjson_flows() -> None:
    p = subprocess.run(tool_cmd("obs-merge", "--summary", "--live", "--format", "json", *FILES),
                       capture_output=True, timeout=60)
    assert p.returncode == 0
    lines = [orjson.loads(line) for line in p.stdout.splitlines()]
    assert len([ev for ev in lines if "event" in ev]) == 43 and "summary" in lines[-1]
    assert p.stderr.decode().count("--live needs a terminal") == 1


def test_many_sessions_show_the_most_recent() -> None:
    summary = Summary()
    for pid in range(1, 6):
        summary.add(envelope("LlmCall", {"pid": pid}, ts=pid, host="h"),
                    Proc(pid, 0, agent="LlmCall", session=f"{pid}@0"))
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table(summary, max_rows=2))
    text = out.getvalue()
    assert "5 agent sessions, the 2 most recently active shown" in text
    assert "5@0" in text and "4@0" in text and "3@0" not in text
