"""Writers for events: NDJSON (the contract) and a human-readable line format.

Output never stalls the kernel side: when stdout is a pipe it is made non-blocking and lines
wait in a bounded buffer; if the reader stops reading and the buffer is full, new lines are
dropped and counted (`output_dropped`, reported in the heartbeat) while the tool keeps draining
the ring buffers. A closed pipe (`obs-x | head -1`) raises OutputClosed, which tools turn into a
quiet exit.

Any other write error (ENOSPC on a full disk, EIO, a closed stdout): a lossy sink (the kernel
tools) drops what it holds, counts those lines in `output_dropped`, keeps `write_error` for the
tool to say once and to exit non-zero at the end, and tries again with the next lines; a
lossless sink (obs-merge, which has no kernel side to protect) raises OutputFailed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections import Counter
from typing import Any, NamedTuple

import orjson

from libobs.events import envelope, event_kind
from libobs.terminal import safe

DEFAULT_BUFFER = 16 << 20


class OutputClosed(Exception):
    """The reader went away (EPIPE)."""


class OutputFailed(Exception):
    """A lossless sink's fd refused a write (its str: why)."""


def default_format(fd: int = 1) -> str:
    """human on a terminal, json otherwise."""
    try:
        return "human" if os.isatty(fd) else "json"
    except OSError:
        return "json"


_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def dumps(ev: dict[str, Any]) -> bytes:
    """One NDJSON line. Decoders already give clean values; if one slips through (surrogates,
    ints beyond 64 bits, bytes), the event is sanitised rather than the stream killed."""
    try:
        return orjson.dumps(ev, option=_OPTS)
    except TypeError:
        return orjson.dumps(_sanitise(ev), option=_OPTS)


class Line(NamedTuple):
    """An event already rendered as its NDJSON line: a busy decoder's events (obs-ssl's, one
    per SSL call) reuse their process's envelope instead of serialising it again each time.
    A Sink writes `json` as it is (human format: parsed back and shown as any event)."""

    kind: str
    json: bytes


_new_line = tuple.__new__  # a Line made in C: Line() costs 2.5x as much, once per event


def envelope_middle(kind: str, *, host: str, identity: dict[str, Any],
                    process: dict[str, Any] | None, provider: str | None) -> bytes:
    """What lies between `ts` and the fields in the NDJSON line of envelope(kind, ...):
    rendered from envelope() itself, so the two cannot disagree on keys or their order."""
    whole = dumps(envelope(kind, {}, ts=0, host=host, identity=identity, process=process,
                           provider=provider))
    return whole[len(b'{"ts":0'):-len(b"{}}}\n")]


def as_line(kind: str, ts: int, middle: bytes, fields: dict[str, Any]) -> Line:
    """dumps(envelope(kind, fields, ts=ts, ...)) as a Line, given that envelope's middle."""
    try:
        body = orjson.dumps(fields)
    except TypeError:
        body = orjson.dumps(_sanitise(fields))
    return _new_line(Line, (kind, b'{"ts":%d%s%s}}\n' % (ts, middle, body)))


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.encode("utf-8", errors="replace").decode("utf-8")
    if isinstance(obj, bool) or obj is None or isinstance(obj, float):
        return obj
    if isinstance(obj, int):
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, dict):
        return {str(_sanitise(k)): _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_sanitise(v) for v in obj]
    return str(obj)


def human(ev: dict[str, Any]) -> bytes:
    """One line: time, kind, pid/comm, then the event's fields as key=value."""
    kind = event_kind(ev) or "?"
    fields = ev["event"].get(kind) if kind != "?" else None
    fields = fields if isinstance(fields, dict) else {}
    ts = ev.get("ts")
    when = (time.strftime("%H:%M:%S", time.localtime(ts / 1e9)) + f".{ts % 10**9 // 10**6:03d}"
            if isinstance(ts, int) else "--:--:--.---")
    proc = ev.get("process")
    proc = proc if isinstance(proc, dict) else {}
    ident = ev.get("identity")
    ident = ident if isinstance(ident, dict) else {}
    parts = [when, f"{kind:<14}"]
    pid = fields.get("pid", proc.get("pid"))
    if pid is not None:
        parts.append(f"pid={pid}")
    comm = fields.get("comm", proc.get("comm"))
    if comm:
        parts.append(f"comm={comm}")
    if ev.get("provider"):
        parts.append(f"provider={ev['provider']}")
    for key, val in fields.items():
        if key in ("pid", "comm"):
            continue
        parts.append(f"{key}={_human_value(val)}")
    if ident.get("session"):
        parts.append(f"session={ident['session']}")
    # Any value may come from a watched process (a path, argv, comm, SNI, model, ...): the
    # whole line is escaped once here, so no field, present or future, can reach the terminal
    # raw. The format itself adds no control characters.
    return (safe(" ".join(parts)) + "\n").encode("utf-8", errors="replace")


def _human_value(val: Any) -> str:
    if isinstance(val, dict) and set(val) == {"secs", "nanos"} and all(
            type(v) is int and 0 <= v < 1 << 64 for v in val.values()):  # else shown as JSON
        ms = val["secs"] * 1000 + val["nanos"] / 1e6
        return f"{ms:.1f}ms"
    if isinstance(val, list):
        return orjson.dumps(val).decode()
    if isinstance(val, str) and (" " in val or not val):
        return orjson.dumps(val).decode()
    if isinstance(val, dict):
        return orjson.dumps(val).decode()
    return str(val)


class Sink:
    """Serialises events to an fd. Lines are written at the latest by flush(), which the run
    loop calls after every batch it drains: nothing waits for more data to arrive."""

    def __init__(self, fmt: str = "json", fd: int = 1, max_buffer: int = DEFAULT_BUFFER,
                 autoflush: bool = True, lossless: bool = False):
        if fmt not in ("json", "human"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fd = fd
        self.render = dumps if fmt == "json" else human
        self.max_buffer = max_buffer
        self.autoflush = autoflush
        self.pending = bytearray()
        self.counts: Counter[str] = Counter()
        self.output_dropped = 0
        self.write_error: str | None = None  # the first write error of a lossy sink
        self._write_error_said = False
        self.lossless = lossless
        self._nonblocking = False
        self._refused = False  # the fd's last write would have blocked
        try:
            mode = os.fstat(fd).st_mode
            if lossless:
                # No kernel side to protect (obs-merge): a slow reader slows us down instead.
                os.set_blocking(fd, True)
            elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                os.set_blocking(fd, False)
                self._nonblocking = True
        except OSError:
            pass

    def emit(self, ev: dict[str, Any] | Line) -> None:
        if isinstance(ev, Line):
            kind, line = ev
            if self.render is not dumps:
                line = self.render(orjson.loads(line))
        else:
            kind, line = next(iter(ev["event"])), self.render(ev)
        if len(self.pending) + len(line) > self.max_buffer:
            # A stalled reader must not make each line cost a failing write() (measured: 1.6x
            # the cost of a line written), which would slow the draining of the kernel side:
            # once the fd refused, only the loop's own flush() per batch tries again.
            if not self._refused:
                self.flush()
            if len(self.pending) + len(line) > self.max_buffer:
                self.output_dropped += 1
                return
        self.counts[kind] += 1
        self.pending += line
        if self.autoflush and not self._refused:
            self.flush()

    def emit_many(self, evs: list[dict[str, Any]]) -> None:
        """emit() each, with one write for all of them (obs-merge's batches: a write per
        event was a tenth of its time). Each line is appended as it is made: a list of
        orjson's lines holds several times their length."""
        render, pending, room = self.render, self.pending, self.max_buffer - len(self.pending)
        done = 0
        for ev in evs:
            line = render(ev)
            room -= len(line)
            if room < 0:
                break
            pending += line
            done += 1
        self.counts.update([next(iter(ev["event"])) for ev in evs[:done]])
        if done < len(evs):  # the buffer is full: emit() flushes or drops and counts
            autoflush, self.autoflush = self.autoflush, False
            try:
                for ev in evs[done:]:
                    self.emit(ev)
            finally:
                self.autoflush = autoflush
        if self.autoflush and not self._refused:
            self.flush()

    def write_raw(self, data: bytes, timeout: float = 5.0) -> None:
        """Text that is not an event (a summary table), after everything already emitted."""
        self.pending += data
        self.drain(timeout)

    def flush(self) -> None:
        """Write what the fd accepts now; raises OutputClosed when the reader is gone."""
        self._refused = False
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                self._refused = True
                return
            except BrokenPipeError as e:
                raise OutputClosed from e
            except OSError as e:
                if e.errno == errno.EPIPE:
                    raise OutputClosed from e
                why = e.strerror or str(e)
                if self.lossless:
                    raise OutputFailed(why) from e
                self.write_error = self.write_error or why
                self.output_dropped += self.pending.count(b"\n")
                self.pending.clear()
                return
            del self.pending[:n]

    def write_error_news(self) -> str | None:
        """The line a tool says, once, when its stdout first refused a write; else None."""
        if self.write_error is None or self._write_error_said:
            return None
        self._write_error_said = True
        return (f"cannot write output: {self.write_error}; lines that cannot be written are "
                "counted (output_dropped), exit status will be 1")

    def drain(self, timeout: float = 2.0) -> None:
        """At exit: give a slow reader a little time to take what is buffered."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.flush()
            if self.pending:
                time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(OutputClosed):
            self.drain()
        if self._nonblocking:
            with contextlib.suppress(OSError):
                os.set_blocking(self.fd, True)


def quiet_broken_pipe() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
