"""obs-llm --api: put model and token counts (from TLS plaintext, libobs.tls.attach) onto the
LlmCall events measured at the socket layer, so one line says who called which model, how
fast, and how many tokens.

Both sides name the exchange by (pid, request start): LlmCall's `ts` is the entry of the
request's first send, an LlmFact's `request_ts` the return of the SSL_write carrying its first
byte — the same moment seen from two layers, microseconds apart. A call is matched with the
nearest response fact of its pid within `tolerance`. The response fact normally arrives first
(the client reads the whole response before the socket layer can end the exchange), though
up to libobs.tls.order's WRITE_WAIT later than the read that completed it; a call whose fact
has not arrived waits up to `grace` (half a second after that wait), judged by the time up to
which every record has been decoded, and then goes out without it (fields null).
Memory is bounded: facts older than `keep` are dropped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from libobs.events import NS
from libobs.tls.attach import LlmFact, is_ssl_record
from libobs.tls.order import WRITE_WAIT_NS

API_FIELDS = ("model", "prompt_tokens", "completion_tokens", "cache_read_tokens",
              "cache_creation_tokens")


@dataclass
class ApiJoin:
    tolerance_ns: int = NS // 2
    grace_ns: int = NS // 2 + WRITE_WAIT_NS
    keep_ns: int = 120 * NS
    max_facts: int = 65536
    facts: dict[int, list[LlmFact]] = field(default_factory=dict)
    pending: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    n_facts: int = 0

    def add_fact(self, fact: LlmFact) -> None:
        if fact.is_request:
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
        if self._match(ev, call):
            return [ev]
        self.pending.append((now_ns + self.grace_ns, ev))
        return []

    def tick(self, now_ns: int) -> list[dict[str, Any]]:
        """Calls whose fact arrived meanwhile, or whose grace ran out."""
        out = []
        still: deque[tuple[int, dict[str, Any]]] = deque()
        for deadline, ev in self.pending:
            if self._match(ev, ev["event"]["LlmCall"]) or now_ns >= deadline:
                ev["event"]["LlmCall"].update({k: ev["event"]["LlmCall"].get(k)
                                                for k in API_FIELDS})
                out.append(ev)
            else:
                still.append((deadline, ev))
        self.pending = still
        if out:
            self._expire(max(ev["ts"] for ev in out) - self.keep_ns)
        return out

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
        return True

    def _expire(self, before_ns: int) -> None:
        for pid in list(self.facts):
            kept = [f for f in self.facts[pid] if f.ts >= before_ns]
            self.n_facts -= len(self.facts[pid]) - len(kept)
            if kept:
                self.facts[pid] = kept
            else:
                del self.facts[pid]


class JoinedDecoder:
    """One decode callback and tick for the run loop over both programs' records: the socket
    program's (via `calls`, an LlmCallDecoder) and the ssl program's (via `api`, an SslApi)."""

    def __init__(self, calls: Any, api: Any, join: ApiJoin | None = None):
        self.calls = calls
        self.api = api
        self.join = join or ApiJoin()

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
        now_ns = int(now * NS) if not final else 2**63  # the loop's time from before its poll
        out = [o for ev in self.calls.tick(now) for o in self.join.add_call(ev, now_ns)]
        return out + self.join.tick(now_ns)
