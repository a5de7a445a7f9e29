"""obs-llm --api: put model and token counts (from TLS plaintext, libobs.tls.attach) onto the
LlmCall events measured at the socket layer, so one line says who called which model, how
fast, and how many tokens.

Both sides name the exchange by (pid, request start): LlmCall's `ts` is the entry of the
request's first send, an LlmFact's `request_ts` the return of the SSL_write carrying its first
byte — the same moment seen from two layers, microseconds apart. A call is matched with the
nearest response fact of its pid within `tolerance`. The response fact normally arrives first
(the client reads the whole response before the socket layer can end the exchange); a call
whose fact has not arrived waits up to `grace` and then goes out without it (fields null).
Memory is bounded: facts older than `keep` are dropped.

Where the wire cannot be read (Codex's rustls), the agent's own transcript is the second
source (`transcripts`, libobs.net.transcripts): a call still without a wire fact when its grace
runs out takes the earliest usage line of its pid stamped between its start and its end plus
`transcript_wait`, and before the next call of that pid started (reported, or in progress on
a connection: `running`) — waiting up to
`transcript_wait` for the line when the pid has a transcript open. `usage_source` says which
source the numbers came from ("wire", "transcript", or null for neither).

A request that is no LLM API call (an agent's `GET /api/claude_code/settings`) has a fact of
its own, its request's (`model_call` false): it marks its LlmCall `model_call: false`, so it is
kept apart from the model calls and never takes a neighbour's tokens (nor a transcript line). A
call without a wire fact is marked with `unreadable_of(pid)`: the TLS stack of the process's
executable that obs found but cannot read (a null model is then "not readable", not "none").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libobs.events import NS
from libobs.net.transcripts import Transcripts
from libobs.tls.attach import LlmFact, is_ssl_record

API_FIELDS = ("model", "prompt_tokens", "completion_tokens", "cache_read_tokens",
              "cache_creation_tokens")
CALL_FIELDS = (*API_FIELDS, "model_call", "request", "tls_unreadable")


@dataclass
class ApiJoin:
    tolerance_ns: int = NS // 2
    grace_ns: int = NS // 2
    keep_ns: int = 120 * NS
    max_facts: int = 65536
    facts: dict[int, list[LlmFact]] = field(default_factory=dict)
    pending: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    n_facts: int = 0
    transcripts: Transcripts | None = None
    transcript_wait_ns: int = 2 * NS
    starts: dict[int, deque[int]] = field(default_factory=dict)  # pid -> recent call starts
    counts: dict[str, int] = field(default_factory=dict)  # the transcript join, for heartbeats
    running: dict[int, list[int]] = field(default_factory=dict)  # pid -> calls in progress
    SLACK_NS = 5_000_000  # a transcript stamps ms; obs's wall clock is converted once
    unreadable_of: Callable[[int], str | None] = lambda pid: None

    def add_fact(self, fact: LlmFact) -> None:
        if fact.is_request and fact.model_call:
            return  # the response's fact carries the model actually served, and the tokens
        self.facts.setdefault(fact.pid, []).append(fact)
        self.n_facts += 1
        if self.n_facts > self.max_facts:
            self._expire(fact.ts - self.keep_ns // 2)

    def add_call(self, ev: dict[str, Any], now_ns: int) -> list[dict[str, Any]]:
        """An LlmCall event (or any other event, passed through). Returns what is ready."""
        call = ev["event"].get("LlmCall")
        if call is None:
            return [ev]
        starts = self.starts.setdefault(call["pid"], deque(maxlen=64))
        starts.append(ev["ts"])
        if len(self.starts) > self.max_facts:
            del self.starts[next(iter(self.starts))]
        if self._match(ev, call):
            return [ev]
        call["tls_unreadable"] = self.unreadable_of(call["pid"])  # while the process lives
        if self.transcripts is not None:
            self.transcripts.watch(call["pid"], now_ns)
        self.pending.append((now_ns + self.grace_ns, ev))
        return []

    def tick(self, now_ns: int) -> list[dict[str, Any]]:
        """Calls whose fact arrived meanwhile, or whose grace ran out."""
        out = []
        still: deque[tuple[int, dict[str, Any]]] = deque()
        polled: set[int] = set()
        for deadline, ev in self.pending:
            call = ev["event"]["LlmCall"]
            if self._match(ev, call) or (now_ns >= deadline and
                                         self._transcript(ev, call, polled, now_ns)):
                out.append(ev)
            elif now_ns >= deadline + self._wait(call["pid"]):
                for k in (*CALL_FIELDS, "usage_source"):
                    call.setdefault(k, None)
                if self.transcripts is not None and self.transcripts.has(call["pid"]):
                    self._bump("late")  # the pid has a transcript, but no line came in time
                out.append(ev)
            else:
                still.append((deadline, ev))
        self.pending = still
        if out:
            self._expire(max(ev["ts"] for ev in out) - self.keep_ns)
        return out

    def _wait(self, pid: int) -> int:
        """How long past the wire's grace a call waits for its transcript line."""
        if self.transcripts is None or not self.transcripts.has(pid):
            return 0
        return max(0, self.transcript_wait_ns - self.grace_ns)

    def _transcript(self, ev: dict[str, Any], call: dict[str, Any], polled: set[int],
                    now_ns: int) -> bool:
        tr = self.transcripts
        if tr is None:
            return False
        pid = call["pid"]
        if pid not in polled:
            polled.add(pid)
            tr.watch(pid, now_ns)
            tr.poll(pid, now_ns)
        start = ev["ts"]
        lat = call.get("latency")
        end = start + (lat["secs"] * NS + lat["nanos"] if lat else 0)
        later = [s for s in (*self.starts.get(pid, ()), *self.running.get(pid, ()))
                 if s > start]
        fact = tr.take(pid, start - self.SLACK_NS, end + self.transcript_wait_ns,
                       min(later) if later else None)
        if fact is None:
            return False
        call.update({k: fact.fields.get(k) for k in API_FIELDS}, usage_source="transcript")
        for k in CALL_FIELDS:
            call.setdefault(k, None)
        self._bump("joined")
        return True

    def _bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's `transcripts` counters (files followed, lines read, calls joined…);
        nothing when the transcript source is off."""
        tr = self.transcripts
        return {} if tr is None else {"transcripts": {**tr.counts, **self.counts}}

    def _match(self, ev: dict[str, Any], call: dict[str, Any]) -> bool:
        cands = self.facts.get(call["pid"])
        if not cands:
            return False
        best = min(cands, key=lambda f: abs(f.request_ts - ev["ts"]))
        if abs(best.request_ts - ev["ts"]) > self.tolerance_ns:
            return False
        cands.remove(best)
        self.n_facts -= 1
        for k in API_FIELDS:
            call[k] = best.fields.get(k)
        path = best.fields.get("path")
        call["model_call"] = best.model_call
        call["request"] = f"{best.fields.get('method') or 'POST'} {path}" if path else None
        call["tls_unreadable"] = None
        call["usage_source"] = "wire" if best.model_call else None
        return True

    def _expire(self, before_ns: int) -> None:
        for pid in list(self.facts):
            kept = [f for f in self.facts[pid] if f.ts >= before_ns]
            self.n_facts -= len(self.facts[pid]) - len(kept)
            if kept:
                self.facts[pid] = kept
            else:
                del self.facts[pid]
        if self.transcripts is not None:
            self.transcripts.expire(before_ns)


class JoinedDecoder:
    """One decode callback and tick for the run loop over both programs' records: the socket
    program's (via `calls`, an LlmCallDecoder) and the ssl program's (via `api`, an SslApi)."""

    def __init__(self, calls: Any, api: Any, join: ApiJoin | None = None,
                 unreadable_of: Callable[[int], str | None] | None = None):
        self.calls = calls
        self.api = api
        self.join = join or ApiJoin()
        if unreadable_of is not None:
            self.join.unreadable_of = unreadable_of

    def __call__(self, raw: bytes) -> list[dict[str, Any]]:
        if is_ssl_record(raw):
            for fact in self.api.feed(raw):
                self.join.add_fact(fact)
            return []
        now = time.monotonic_ns()
        return [out for ev in self.calls(raw) for out in self.join.add_call(ev, now)]

    def tick(self, now: float) -> list[dict[str, Any]]:
        final = now == float("inf")
        for fact in self.api.tick(now):
            self.join.add_fact(fact)
        now_ns = time.monotonic_ns() if not final else 2**63
        tr = self.join.transcripts
        if tr is not None and not final:
            # while an agent has a provider connection open it is alive: look at its files
            live = self.calls.live()
            for pid in live:
                tr.watch(pid, now_ns)
            self.join.running = live
            tr.forget_gone(now_ns, self.join.keep_ns)
        out = [o for ev in self.calls.tick(now) for o in self.join.add_call(ev, now_ns)]
        return out + self.join.tick(now_ns)
