"""obs-merge --live: the per-agent summary as a rich table refreshed in place on a terminal.

`table` is pure (a Summary in, a rich Table out) so tests render it to a Console over a
StringIO; `LiveView` only refreshes it, at most `fps` times a second.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from libobs.export.cost import CATALOGUE
from libobs.merge.summary import Cost, Samples, SessionStats, Summary

MS = 1_000_000
MAX_ROWS = 40


def table(summary: Summary, stream: dict[str, Any] | None = None, max_rows: int = MAX_ROWS
          ) -> Table:
    """One row per agent session: calls, tokens, cost, TTFT p50/p95, tools run, denials; the
    `max_rows` most recently active when there are more (the rest are said, not shown)."""
    caption = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (stream or {}).items()
                        if isinstance(v, int) and not isinstance(v, bool) and v)
    n = len(summary.sessions)
    hidden = max(0, n - max_rows)
    title = f"obs-merge: {n} agent session{'s' if n != 1 else ''}" + (
        f", the {max_rows} most recently active shown" if hidden else "")
    t = Table(title=title,
              caption=f"{caption}  (cost: {CATALOGUE})".lstrip(), caption_justify="left")
    for name, justify in (("SESSION", "left"), ("AGENT", "left"), ("CALLS", "right"),
                          ("PROMPT/COMPL TOK", "right"), ("COST USD", "right"),
                          ("TTFT ms p50/p95", "right"), ("TOOLS RUN", "right"),
                          ("DENIALS", "right")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in list(summary.sessions.values())[hidden:]:
        t.add_row(*row(s))
    return t


def row(s: SessionStats) -> list[str]:
    calls = sum(r.calls or r.api_responses for r in s.llm.values())
    tokens_in = [r.tokens["prompt"] for r in s.llm.values() if "prompt" in r.tokens]
    tokens_out = [r.tokens["completion"] for r in s.llm.values() if "completion" in r.tokens]
    cost = Cost()
    ttft = Samples()
    for r in s.llm.values():
        cost.merge(r.cost)
        for v in r.ttft.values:
            ttft.add(v)
    p50, p95 = ttft.percentile(50), ttft.percentile(95)
    return [s.session, s.agent or "-", str(calls),
            f"{sum(tokens_in) if tokens_in else '-'}/{sum(tokens_out) if tokens_out else '-'}",
            cost.text().removeprefix("$"),
            "-" if p50 is None or p95 is None else f"{p50 / MS:.0f}/{p95 / MS:.0f}",
            str(sum(t.runs for t in s.tools.values())),
            str(sum(s.denied.counts.values()) + s.denied.more)]


class LiveView:
    def __init__(self, console: Console | None = None, fps: float = 4.0) -> None:
        self.console = console or Console()
        self.live = Live(Table(), console=self.console, auto_refresh=False, transient=False)
        self.period = 1 / fps
        self.next = 0.0
        self.live.start()

    def update(self, summary: Summary, stream: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self.next:
            self.next = now + self.period
            self.live.update(table(summary, stream), refresh=True)

    def close(self) -> None:
        self.live.stop()
