"""What obs-merge makes of the merged stream besides writing it: the summary it always keeps,
the --live table, the --trace timeline file. `emit` fans each merged event out to them and
to the output stream (unless only the summary is wanted, or the live table has the terminal)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import typer

from libobs.export.trace import Timeline
from libobs.merge.sessions import Proc
from libobs.merge.summary import Summary
from libobs.tool.sink import Sink


class Views:
    def __init__(self, summary: Summary, sink: Sink | None,
                 stream: Callable[[], dict[str, Any]] = dict, *, trace: Path | None = None,
                 live: bool = False, say: Callable[[str], Any] = lambda _: None, fd: int = 1
                 ) -> None:
        self.summary, self.sink, self.stream = summary, sink, stream
        self.trace_path = trace
        self.timeline = Timeline() if trace is not None else None
        self.live = None
        if live and os.isatty(fd):
            from libobs.export.live import LiveView
            self.live = LiveView()
        elif live:
            say("obs-merge: --live needs a terminal on stdout; writing NDJSON as without it\n")

    def emit(self, out: list[tuple[dict[str, Any], Proc | None]]) -> None:
        add = self.summary.add
        for ev, root in out:
            add(ev, root)
        if self.timeline is not None:
            for ev, root in out:
                self.timeline.add(ev, root)
        if self.sink is not None and self.live is None and out:
            self.sink.emit_many([ev for ev, _ in out])
        if self.live is not None:
            self.live.update(self.summary, self.stream())

    def close(self) -> bool:
        """Last refresh of the table; the timeline written. True when stdout is still free
        for the summary (no live table on it)."""
        if self.live is not None:
            self.live.update(self.summary, self.stream(), force=True)
            self.live.close()
        if self.timeline is not None and self.trace_path is not None:
            self.trace_path.write_bytes(orjson.dumps(self.timeline.document()))
        return self.live is None


def writable(path: Path | None) -> Path | None:
    """--trace's check: fail at start, not after a day of merging."""
    if path is not None:
        try:
            path.touch()
        except OSError as e:
            raise typer.BadParameter(f"cannot write {path}: {e.strerror}") from None
    return path
