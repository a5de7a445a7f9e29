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

A request that is no LLM API call (an agent's `GET /api/claude_code/settings`) has a fact of
its own, its request's (`model_call` false): it marks its LlmCall `model_call: false`, so it is
kept apart from the model calls and never takes a neighbour's tokens. A call that goes out
without any fact is marked with `unreadable_of(pid)`: the TLS stack of the process's
executable that obs found but cannot read (then a null model is "not readable", not "none").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libobs.events import NS
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
        if self._match(ev, call):
            return [ev]
        call["tls_unreadable"] = self.unreadable_of(call["pid"])  # while the process lives
        self.pending.append((now_ns + self.grace_ns, ev))
        return []

    def tick(self, now_ns: int) -> list[dict[str, Any]]:
        """Calls whose fact arrived meanwhile, or whose grace ran out."""
        out = []
        still: deque[tuple[int, dict[str, Any]]] = deque()
        for deadline, ev in self.pending:
            if self._match(ev, ev["event"]["LlmCall"]) or now_ns >= deadline:
                ev["event"]["LlmCall"].update({k: ev["event"]["LlmCall"].get(k)
                                                for k in CALL_FIELDS})
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
        path = best.fields.get("path")
        call["model_call"] = best.model_call
        call["request"] = f"{best.fields.get('method') or 'POST'} {path}" if path else None
        call["tls_unreadable"] = None
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
        out = [o for ev in self.calls.tick(now) for o in self.join.add_call(ev, now_ns)]
        return out + self.join.tick(now_ns)
