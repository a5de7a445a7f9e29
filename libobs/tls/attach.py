"""Attaching TLS plaintext probes — one path for obs-ssl and obs-llm --api — and LLM API facts
(model, tokens, stream, path) for tools that join them onto their own events.

    ssl = attach.attach(TOOL, job, libs, required=False)   # same checks and lines as obs-ssl
    rescan = attach.Rescanner(TOOL, ssl, every=10.0)       # call rescan(now) from the tick
    api = attach.SslApi(clock)            # the same Clock as the tool's own events
    # decode: both programs' records reach one callback; is_ssl_record tells them apart
    if attach.is_ssl_record(raw):
        for fact in api.feed(raw):
            index[fact.key] = fact        # key = (pid, request_ts)
    # tick (and once with now=float("inf") at exit)
    for fact in api.tick(now): ...

Each HTTP exchange with an LLM API yields two facts: the request's (is_request=True: model
and stream as asked) once its last byte is written, and the response's (is_request=False:
model as served, token counts) once its last byte is read. Both carry the same
`request_ts`: the wall-clock ns at which the request's first byte was written (taken when the
SSL_write call carrying it was entered), so `(pid, request_ts)` names the exchange. To join
onto an event measured elsewhere (the socket layer), match on pid and take the fact whose
request_ts is nearest the event's request start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from libobs.events import NS, Clock
from libobs.kernel.records import HDR
from libobs.tls import libraries
from libobs.tls.decode import (
    CALL_WAIT,
    K_SSL,
    ApiFact,
    ApiTracker,
    CallAssembler,
    Timing,
)
from libobs.tls.order import CallOrder
from libobs.tool.loop import err
from libobs.tool.options import UsageError
from libobs.tool.start import Prepared

__all__ = ["LlmFact", "Rescanner", "SslApi", "attach", "check_libs", "is_ssl_record"]


@dataclass(frozen=True)
class LlmFact:
    pid: int
    tid: int
    is_request: bool
    ts: int           # wall ns: request's first byte, or the response's last byte
    request_ts: int   # wall ns of the request's first byte (same in both halves)
    provider: str | None
    host: str | None
    fields: dict[str, Any]  # LlmApi fields: model, *_tokens, stream, path (None = unknown)
    stream: int = 0   # HTTP/2 stream id; 0 on HTTP/1.x
    timing: Timing | None = None  # the plaintext's own clock, wall ns (decode.Timing)
    model_call: bool = True  # False: a request that is no LLM API call; fields: method, path

    @property
    def key(self) -> tuple[int, int, int]:
        # the stream too: one write can carry several HTTP/2 requests (same request_ts)
        return (self.pid, self.request_ts, self.stream)

    @property
    def model(self) -> str | None:
        return self.fields.get("model")


def is_ssl_record(raw: bytes) -> bool:
    """True for a record of bpf/ssl.bpf.c (by the kind in its header)."""
    return len(raw) >= HDR.size and int.from_bytes(raw[:4], "little") == K_SSL


class SslApi:
    """Feed it the raw records of the ssl program; get LlmFacts back. Bounded memory: calls
    and connections are held only while in progress (see sslevents.ApiTracker)."""

    def __init__(self, clock: Clock, tracker: ApiTracker | None = None):
        self.clock = clock
        self.calls = CallAssembler()
        self.order = CallOrder()
        self.tracker = tracker or ApiTracker()
        self._expired = 0.0

    def feed(self, raw: bytes) -> list[LlmFact]:
        calls = self.calls.feed_record(raw)
        if calls is None:
            return []
        return [self._fact(f) for call in calls
                for ordered in self.order.feed(call) for f in self.tracker.feed(ordered)]

    def tick(self, now: float) -> list[LlmFact]:
        """Call with the time.monotonic() taken before the ring buffers were last polled, now
        and then (float("inf") at exit)."""
        final = now == float("inf")
        calls = [o for call in self.calls.flush(None if final else now - CALL_WAIT)
                 for o in self.order.feed(call)]
        calls += self.order.flush(None if final else int(now * NS))
        out = [self._fact(f) for call in calls for f in self.tracker.feed(call)]
        if final or now - self._expired >= 1.0:  # idle connections: once a second is plenty
            self._expired = now
            out += [self._fact(f) for f in self.tracker.expire(now)]
        return out

    def _fact(self, f: ApiFact) -> LlmFact:
        wall = self.clock.wall
        t = f.timing
        timing = None if t is None else t._replace(
            request_end=wall(t.request_end),
            first_resp=None if t.first_resp is None else wall(t.first_resp),
            last_resp=None if t.last_resp is None else wall(t.last_resp))
        return LlmFact(f.h.pid, f.h.tid, f.is_request, wall(f.ts), wall(f.request_ts),
                       f.provider, f.host, dict(f.fields), f.stream, timing,
                       f.model_call)


def check_libs(libs: Sequence[Path]) -> None:
    """--lib values: each must hold a TLS stack obs reads (else a UsageError)."""
    for path in libs:
        if not libraries.file_readable(path):
            raise UsageError(f"--lib {path}: no TLS stack obs reads (OpenSSL, GnuTLS, NSPR, "
                             "Go crypto/tls, static BoringSSL) in it")


def attach(tool: str, run: Prepared, libs: Sequence[Path], *, exported_only: bool = False,
           defines: dict[str, int | bool] | None = None, required: bool = True
           ) -> libraries.SslProbes:
    """Compile bpf/ssl.bpf.c and attach it to every TLS library found, saying on stderr what
    was attached and what could not be. Nothing found ends a tool that needs it (status 1);
    one that can do without (obs-llm --api) goes on, with the line said."""
    problem = libraries.uprobes_missing()
    if problem:
        err(tool, problem)
        raise typer.Exit(1)
    ssl = libraries.SslProbes(run.defines | (defines or {}), libs, exported_only)
    run.filters.apply(ssl.program.bpf)
    for line in ssl.problems:
        err(tool, line)
    n = len(ssl.libs)
    if not n:
        err(tool, "found no TLS library to attach to")
        if required:
            ssl.program.close()
            raise typer.Exit(1)
    else:
        err(tool, f"attached to {n} TLS librar{'y' if n == 1 else 'ies'}: {ssl.describe()}")
    return ssl


class Rescanner:
    """Attaches to TLS libraries that processes load later: call with time.monotonic() (each
    tick: programs exec'd since are judged at once; every `every` s all mappings are scanned;
    0 turns both off)."""

    def __init__(self, tool: str, ssl: libraries.SslProbes, every: float):
        self.tool, self.ssl, self.every = tool, ssl, every
        self._next = 0.0

    def __call__(self, now: float) -> None:
        if self.every and now != float("inf"):
            self.ssl.started()
        if self.ssl.news:  # met between rescans (SslProbes.started, .unreadable_of)
            for note in self.ssl.news:
                err(self.tool, note)
            self.ssl.news = []
        if not self.every or now == float("inf") or now < self._next:
            return
        if self._next:
            for note in self.ssl.rescan():
                err(self.tool, note)
        self._next = now + self.every
