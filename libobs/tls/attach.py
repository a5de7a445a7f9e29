"""LLM API facts (model, tokens, stream, path) from TLS plaintext, for tools that join them
onto their own events — obs-llm's --api joins them onto LlmCall.

    from libobs import probes, sslapi
    ssl = sslapi.load(probes.base_defines(ring) | filters.defines())
    filters.apply(ssl.program.bpf)
    err(TOOL, ssl.describe())             # and each of ssl.problems
    api = sslapi.SslApi(clock)            # the same Clock as the tool's own events
    loop = Loop(cfg, [own_program, ssl.program], decode, tick=tick,
                attached=own_names + ssl.probe_names)
    # decode: both programs' records reach one callback; is_ssl_record tells them apart
    if sslapi.is_ssl_record(raw):
        for fact in api.feed(raw):
            index[fact.key] = fact        # key = (pid, request_ts)
    # tick (and once with now=float("inf") at exit)
    for fact in api.tick(now): ...
    ssl.rescan()                          # now and then: OpenSSL copies loaded since

Each HTTP exchange with an LLM API yields two facts: the request's (is_request=True: model
and stream as asked) once its last byte is written, and the response's (is_request=False:
model as served, token counts) once its last byte is read. Both carry the same
`request_ts`: the wall-clock ns at which the request's first byte was written (taken when the
SSL_write call carrying it returned), so `(pid, request_ts)` names the exchange. To join
onto an event measured elsewhere (the socket layer), match on pid and take the fact whose
request_ts is nearest the event's request start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libobs.events import Clock
from libobs.kernel.records import HDR
from libobs.tls import libraries
from libobs.tls.decode import CALL_WAIT, K_SSL, ApiFact, ApiTracker, CallAssembler, decode_chunk

__all__ = ["LlmFact", "SslApi", "is_ssl_record", "load"]


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

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.request_ts)

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
        self.tracker = tracker or ApiTracker()
        self._expired = 0.0

    def feed(self, raw: bytes) -> list[LlmFact]:
        chunk = decode_chunk(raw)
        if chunk is None:
            return []
        return [self._fact(f) for call in self.calls.feed(chunk)
                for f in self.tracker.feed(call)]

    def tick(self, now: float) -> list[LlmFact]:
        """Call with time.monotonic() now and then (float("inf") at exit)."""
        final = now == float("inf")
        out = [self._fact(f) for call in self.calls.flush(None if final else now - CALL_WAIT)
               for f in self.tracker.feed(call)]
        if final or now - self._expired >= 1.0:  # idle connections: once a second is plenty
            self._expired = now
            out += [self._fact(f) for f in self.tracker.expire(now)]
        return out

    def _fact(self, f: ApiFact) -> LlmFact:
        return LlmFact(f.h.pid, f.h.tid, f.is_request, self.clock.wall(f.ts),
                       self.clock.wall(f.request_ts), f.provider, f.host, dict(f.fields))


def load(defines: dict[str, int | bool], extra_libs: Sequence[str | Path] = ()
         ) -> libraries.SslProbes:
    """Compile bpf/ssl.bpf.c and attach it to every OpenSSL found (libraries.Finder). Use
    `.program` (a probes.Program: give it to the run loop), `.probe_names` (for the heartbeat),
    `.describe()` and `.problems` (lines for stderr) and `.rescan()` now and then."""
    return libraries.SslProbes(defines, extra_libs)
