"""Reading many NDJSON sources at once: stdin, files, FIFOs and `<(cmd)` process substitutions.

Pipes, FIFOs, terminals and sockets are read non-blocking through one selector; regular files
(and anything epoll refuses, such as /dev/null) are always readable, so they are read a chunk
per poll round. Each source has its own line numbers and its own partial-line buffer; a line
longer than `max_line` is dropped (reported once) up to its newline, so one runaway writer
cannot exhaust memory. A source that ends or fails ends alone: the others keep being read.

`--follow` (tail -F semantics): a regular file at EOF is re-checked every `interval` seconds;
growth is read, truncation restarts at offset 0, a replaced file (new inode) is read from its
start after the old one is drained, a missing file is waited for. A named FIFO is reopened when
its writer closes. stdin and inherited pipes (/dev/fd/N) still end at EOF.

Callers may `skip` sources for a round (obs-merge pauses a source that is far ahead of the
others in event time, so the reorder heap stays small when replaying big files).
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import stat
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from libobs.events import KINDS
from libobs.merge import shape
from libobs.terminal import quote

MAX_LINE = 64 << 20  # obs-ssl's largest capture (16 MiB), JSON-escaped, fits
CHUNK = 64 << 10
FOLLOW_INTERVAL = 0.25


class Line(NamedTuple):  # a tuple: made for every line read, so made cheaply
    sid: int
    lineno: int
    data: bytes


_line = functools.partial(tuple.__new__, Line)  # Line(*t) in C: Line() is a Python call


@dataclass(frozen=True)
class Problem:
    """Something wrong with the input, reported as `source:line: what`."""

    source: str
    lineno: int | None
    kind: str  # counter key: malformed, not_object, ...
    what: str

    def text(self) -> str:
        where = self.source if self.lineno is None else f"{self.source}:{self.lineno}"
        return f"{where}: {self.what}"


@dataclass
class Batch:
    lines: list[Line] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # source ids that ended during this poll


class Lines:
    """One source's line assembly: chunks in, numbered complete lines out.

    Linear in the bytes read: a line spanning many reads grows one buffer, so each byte is
    copied into it once (`moved` counts those copies; re-joining the partial line on every
    read made a 15 MiB line cost 6 s). A line longer than `max_line` is dropped up to its
    newline and reported once. Blank lines are skipped but numbered.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.buf = bytearray()
        self.lineno = 0
        self.discarding = False  # inside an over-long line, dropping bytes up to its newline
        self.moved = 0

    def restart(self) -> None:
        self.buf.clear()
        self.discarding = False

    def feed(self, data: bytes, eof: bool) -> tuple[list[tuple[int, bytes]], list[int]]:
        """(lines as (lineno, bytes), linenos of over-long lines) completed by `data`."""
        out: list[tuple[int, bytes]] = []
        too_long: list[int] = []
        parts = data.split(b"\n")
        tail = parts.pop()  # after the last newline: the start of the next line
        if parts:
            head = parts[0]
            if self.buf and not self.discarding:  # the only line that needs joining
                self.buf += head
                self.moved += len(head) + len(self.buf)
                parts[0] = bytes(self.buf)
            elif self.discarding:  # the end of an over-long line already reported: counted
                parts[0] = b""
                self.discarding = False
            lineno, max_line = self.lineno, self.max_line  # locals: this runs per line
            for part in parts:
                lineno += 1
                if len(part) > max_line:
                    too_long.append(lineno)
                elif part and not part.isspace():
                    out.append((lineno, part))
            self.lineno = lineno
            self.buf.clear()
        if not self.discarding and tail:
            if len(self.buf) + len(tail) > self.max_line:
                too_long.append(self.lineno + 1)
                self.discarding = True
                self.buf.clear()
            else:
                self.buf += tail
                self.moved += len(tail)
        if eof:
            if self.buf or self.discarding:
                self.lineno += 1
                if not self.discarding and not self.buf.isspace():
                    out.append((self.lineno, bytes(self.buf)))
            self.restart()
        return out, too_long


@dataclass
class _Source:
    sid: int
    name: str
    path: str | None  # None for stdin and pipes
    fd: int | None = None
    pipe: int | None = None  # a pipe handed over (a --run child's stdout): ours to close
    selectable: bool = False
    registered: bool = False
    lines: Lines = field(default_factory=lambda: Lines(MAX_LINE))
    ended: bool = False
    failed: bool = False
    fifo: bool = False
    regular: bool = False
    ino: int | None = None
    pos: int = 0
    next_check: float = 0.0
    waiting_reported: bool = False


class Reader:
    def __init__(
        self,
        specs: list[str],
        *,
        follow: bool = False,
        from_end: bool = False,
        max_line: int = MAX_LINE,
        stdin_fd: int | None = 0,
        pipes: Sequence[tuple[str, int]] = (),
        interval: float = FOLLOW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.follow = follow
        self.from_end = from_end
        self.max_line = max_line
        self.stdin_fd = stdin_fd
        self.interval = interval
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.sources = [
            _Source(sid, "<stdin>" if spec == "-" else spec, None if spec == "-" else spec,
                    lines=Lines(max_line))
            for sid, spec in enumerate(specs)
        ]
        self.sources += [_Source(len(self.sources) + i, name, None, pipe=fd, lines=Lines(max_line))
                         for i, (name, fd) in enumerate(pipes)]
        self._startup = Batch()  # problems met while opening, handed out by the first poll
        for src in self.sources:
            self._open(src, self._startup, first=True)

    # -- public ---------------------------------------------------------------------------
    def name(self, sid: int) -> str:
        return self.sources[sid].name

    @property
    def done(self) -> bool:
        return all(s.ended for s in self.sources)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.sources if s.failed]

    def poll(self, timeout: float, skip: Collection[int] = ()) -> Batch:
        """Read what is available now, waiting up to `timeout` when nothing is."""
        batch, self._startup = self._startup, Batch()
        now = self.clock()
        for src in self.sources:
            if src.ended or src.sid in skip:
                continue
            if src.fd is None:
                if now >= src.next_check:
                    self._open(src, batch, first=False)
            elif not src.selectable:
                self._read_file(src, batch, now)
        self._sync_registrations(skip)
        if batch.lines or batch.ended or batch.problems or self._file_ready(skip):
            timeout = 0.0
        elif any(s.fd is None or not s.selectable for s in self.sources if not s.ended):
            timeout = min(timeout, self.interval)  # followed files and waits are re-checked
        if self.selector.get_map():
            for key, _ in self.selector.select(timeout):
                self._read_stream(key.data, batch)
        elif timeout > 0:
            time.sleep(timeout)
        return batch

    def close(self) -> None:
        for src in self.sources:
            self._close_fd(src)
        self.selector.close()

    # -- opening --------------------------------------------------------------------------
    def _open(self, src: _Source, batch: Batch, first: bool) -> None:
        if src.pipe is not None:
            fd = src.pipe
        elif src.path is None:
            if self.stdin_fd is None:
                self._fail(src, batch, "open_error", "cannot read: standard input is closed")
                return
            fd = self.stdin_fd
        else:
            try:
                fd = os.open(src.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                # Following, a file that does not exist yet (or vanished in a rotation) is
                # waited for; anything else on the first open is an error.
                if self.follow and (not first or isinstance(e, FileNotFoundError)):
                    src.next_check = self.clock() + self.interval
                    if not src.waiting_reported:
                        src.waiting_reported = True
                        batch.problems.append(Problem(
                            src.name, None, "waiting", f"cannot open ({_err(e)}), waiting"))
                    return
                self._fail(src, batch, "open_error", f"cannot open: {_err(e)}")
                return
        try:
            st = os.fstat(fd)
        except OSError as e:
            self._fail(src, batch, "open_error", f"cannot stat: {_err(e)}")
            return
        src.fd = fd
        src.ino = st.st_ino
        src.pos = 0
        src.next_check = 0.0
        # Only a FIFO with a name in the file system has a next writer; /dev/fd/N does not.
        src.fifo = stat.S_ISFIFO(st.st_mode) and src.path is not None and not src.path.startswith(
            ("/dev/fd/", "/proc/", "/dev/stdin"))
        src.regular = stat.S_ISREG(st.st_mode)
        if src.regular:
            if first and self.follow and self.from_end:
                src.pos = st.st_size
            return
        try:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, src)
            src.selectable = src.registered = True
        except PermissionError:  # epoll refuses some fds (/dev/null): read them like files
            pass
        except OSError as e:
            self._fail(src, batch, "open_error", f"cannot watch: {_err(e)}")

    def _sync_registrations(self, skip: Collection[int]) -> None:
        # A paused stream is unregistered so a readable-but-paused fd cannot spin select().
        for src in self.sources:
            if not src.selectable or src.fd is None or src.ended:
                continue
            want = src.sid not in skip
            if want and not src.registered:
                self.selector.register(src.fd, selectors.EVENT_READ, src)
            elif not want and src.registered:
                self.selector.unregister(src.fd)
            src.registered = want

    def _file_ready(self, skip: Collection[int]) -> bool:
        """A non-selectable source that should be read again right away."""
        now = self.clock()
        return any(
            not s.ended and s.fd is not None and not s.selectable and s.sid not in skip
            and now >= s.next_check
            for s in self.sources
        )

    # -- reading --------------------------------------------------------------------------
    def _read_file(self, src: _Source, batch: Batch, now: float) -> None:
        """One chunk from a regular file (or another fd epoll refused)."""
        assert src.fd is not None
        if now < src.next_check:
            return
        try:
            # pread on a path we opened: the offset is ours, so truncation can be detected.
            if src.regular and src.path is not None:
                data = os.pread(src.fd, CHUNK, src.pos)
            else:
                data = os.read(src.fd, CHUNK)
        except BlockingIOError:
            src.next_check = now + self.interval
            return
        except OSError as e:
            self._split(src, b"", batch, eof=True)
            self._fail(src, batch, "read_error", f"read error: {_err(e)}")
            return
        if data:
            src.pos += len(data)
            self._split(src, data, batch, eof=False)
        elif not self.follow or src.path is None or not src.regular:
            self._split(src, b"", batch, eof=True)
            self._end(src, batch)
        else:
            src.next_check = now + self.interval
            self._check_rotation(src, batch)

    def _check_rotation(self, src: _Source, batch: Batch) -> None:
        assert src.path is not None
        try:
            st = os.stat(src.path)
        except OSError:
            return  # gone for now: keep the old fd, look again later
        if st.st_ino != src.ino:
            self._split(src, b"", batch, eof=True)  # the old file is complete
            self._close_fd(src)
            self._open(src, batch, first=False)
        elif st.st_size < src.pos:
            src.pos = 0  # truncated in place (copytruncate rotation)
            src.lines.restart()

    def _read_stream(self, src: _Source, batch: Batch) -> None:
        assert src.fd is not None
        try:
            data = os.read(src.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            self._split(src, b"", batch, eof=True)
            self._fail(src, batch, "read_error", f"read error: {_err(e)}")
            return
        if data:
            self._split(src, data, batch, eof=False)
            return
        self._split(src, b"", batch, eof=True)
        if self.follow and src.fifo:
            self._close_fd(src)  # wait for the FIFO's next writer
            self._open(src, batch, first=False)
        else:
            self._end(src, batch)

    def _split(self, src: _Source, data: bytes, batch: Batch, eof: bool) -> None:
        lines, too_long = src.lines.feed(data, eof)
        sid = src.sid
        batch.lines += [_line((sid, n, line)) for n, line in lines]
        batch.problems += [Problem(src.name, n, "too_long",
                                   f"line longer than {self.max_line} bytes, skipped")
                           for n in too_long]

    # -- ending ---------------------------------------------------------------------------
    def _end(self, src: _Source, batch: Batch) -> None:
        self._close_fd(src)
        src.ended = True
        batch.ended.append(src.sid)

    def _fail(self, src: _Source, batch: Batch, kind: str, what: str) -> None:
        batch.problems.append(Problem(src.name, None, kind, what))
        src.failed = True
        self._end(src, batch)

    def _close_fd(self, src: _Source) -> None:
        if src.fd is None:
            return
        if src.registered:
            self.selector.unregister(src.fd)
            src.registered = False
        src.selectable = False
        if src.path is not None or src.pipe is not None:
            os.close(src.fd)
        else:  # stdin's file description is shared (a terminal, the shell's pipe): restore it
            with contextlib.suppress(OSError):
                os.set_blocking(src.fd, True)
        src.fd = None


def _err(e: OSError) -> str:
    return e.strerror or str(e)


def decode(data: bytes) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """One NDJSON line → (event to pass on, or None; (problem kind, message), or None).

    Never raises. A line that is JSON but not a well-formed event (libobs.merge.shape) is
    refused; an unknown event kind of the right shape is passed on *and* reported.
    """
    ev, _, _, bad = decode_fields(data)
    return ev, bad


def decode_fields(data: bytes) -> tuple[dict[str, Any] | None, str | None,
                                        dict[str, Any] | None, tuple[str, str] | None]:
    """decode(), with the event's kind (the single key under `event`) and its fields (the
    object under it) when it is passed on."""
    try:
        ev = loads(data)
    except JSONDecodeError as e:
        return None, None, None, ("malformed", f"not JSON ({str(e).split(':')[0]})")
    if type(ev) is not dict:
        return None, None, None, ("not_object", f"not a JSON object ({type(ev).__name__})")
    ts = ev.get("ts")
    if type(ts) is not int:
        what = "missing ts" if ts is None else "ts is not an integer"
        return None, None, None, ("missing_ts", what)
    inner = ev.get("event")
    if type(inner) is not dict or len(inner) != 1:
        return None, None, None, ("not_event", "no single event kind under 'event'")
    [(kind, body)] = inner.items()
    if type(body) is not dict:  # of any kind: sinks render its fields
        return None, None, None, ("not_event", f"{kind[:64]} fields are not an object")
    # Counting brackets is cheap and bounds the depth; only a suspect line is walked.
    if (data.count(b"{") + data.count(b"[") > shape.MAX_DEPTH
            and shape.depth(ev) > shape.MAX_DEPTH):
        return None, None, None, ("bad_shape", f"nested deeper than {shape.MAX_DEPTH} levels")
    why = shape.problem(ev, kind)
    if why is not None:
        return None, None, None, ("bad_shape", why)
    if kind not in _KNOWN:
        return ev, kind, body, ("unknown_kind",
                                f"unknown event kind {kind[:64]!r} (passed through)")
    return ev, kind, body, None


_KNOWN = frozenset(KINDS)
loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError


class Reporter:
    """Input problems to stderr, one line each, rate-limited; all of them counted.

    A token bucket (`rate` lines per second, bursts of `burst`) keeps a garbage flood from
    flooding stderr; suppressed lines are summarised once the bucket refills and at close.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        prog: str = "obs-merge",
        rate: float = 10.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.prog = prog
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.suppressed = 0
        self.counts: Counter[str] = Counter()

    def report(self, problem: Problem) -> None:
        self.counts[problem.kind] += 1
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.suppressed += 1
            return
        if self.suppressed and self.tokens >= 2:
            self._flush_suppressed()
        self.tokens -= 1
        # A bad line's kind or a source's name is anyone's text: escaped, like every diagnostic.
        self.write(f"{self.prog}: {quote(problem.text(), 500)}\n")

    def close(self) -> None:
        if self.suppressed:
            self._flush_suppressed()

    def _flush_suppressed(self) -> None:
        self.tokens -= 1
        self.write(f"{self.prog}: {self.suppressed} more input problems not shown\n")
        self.suppressed = 0
