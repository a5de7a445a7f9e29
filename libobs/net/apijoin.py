"""obs-llm --api: put model and token counts (from TLS plaintext, libobs.tls.attach) onto the
LlmCall events measured at the socket layer, so one line says who called which model, how
fast, and how many tokens.

Both sides name the exchange by (pid, request start): LlmCall's `ts` is the entry of the
request's first send, an LlmFact's `request_ts` the entry of the SSL_write carrying its first
byte — the same moment seen from two layers, microseconds apart. A call is matched with the
nearest response fact of its pid within `tolerance` (50 ms). The response fact normally arrives first
(the client reads the whole response before the socket layer can end the exchange), though
up to libobs.tls.order's WRITE_WAIT later than the read that completed it; a call whose fact
has not arrived waits up to `grace` (half a second after that wait), judged by the time up to
which every record has been decoded, and then goes out without it (fields null).
Memory is bounded: facts older than `keep` are dropped.

Which clock (`timing`). A TLS read returns bytes that arrived before it; the socket knows
when segments arrived, not which bytes they carried. So a read at t says: its bytes had all
arrived by the last segment arrival at or before t (SocketView.arrived_by), never earlier
than the truth, and exactly it when the connection was quiet between the arrival and the
read (a busy client's late read costs nothing then).
- HTTP/1.1 keeps the socket's numbers ("socket") unless the plaintext contradicts them: when
  the response's first byte had arrived only more than READ_SLACK after the socket's first
  response segment, that segment was not the response (TLS 1.3 session tickets a Nagle
  server let out late) and ttft ends at that arrival instead ("tls"). Either way the error is
  at most READ_SLACK, or a busy client's read delay while more data kept arriving.
- HTTP/2 multiplexes streams on one connection: one TCP exchange may hold several requests
  and its boundaries fall anywhere between them. Each stream whose request started within
  an exchange (from H2_LEAD before its start to its last response byte, and to the same
  host) becomes its own LlmCall, timed and sized from the plaintext ("tls", `stream` set):
  the exchange itself is not reported, nor any later exchange on that connection that holds
  no stream (control frames, requests that are not LLM API calls).

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
call without a wire fact is marked with `unreadable_of(pid, call start)`: the TLS stack of the
process's executable that obs found but cannot read, or attached to only after the call
began (a program first met when it exec'd) — a null model is then "not read", not "none".
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libobs.events import NS, duration, duration_ns
from libobs.net.llmcalls import SOCKET_KEY, SocketView
from libobs.net.transcripts import Transcripts
from libobs.tls.attach import LlmFact, is_ssl_record
from libobs.tls.decode import host_name
from libobs.tls.order import WRITE_WAIT_NS

API_FIELDS = ("model", "prompt_tokens", "completion_tokens", "cache_read_tokens",
              "cache_creation_tokens")
MS = NS // 1000
READ_SLACK_NS = 10 * MS  # the accuracy: socket kept when the plaintext is this close
H2_LEAD_NS = 50 * MS     # a stream's HEADERS may go out alone, too small to start an exchange

CALL_FIELDS = (*API_FIELDS, "model_call", "request", "tls_unreadable")
Event = dict[str, Any]


@dataclass
class ApiJoin:
    # The two layers see one instant microseconds apart (a preempted writer: milliseconds); a
    # wider tolerance let a call take a neighbour's fact while its own was still held
    # (libobs.tls.order), e.g. a model call 350 ms after an agent's settings GET.
    tolerance_ns: int = 50 * NS // 1000
    grace_ns: int = NS // 2 + WRITE_WAIT_NS
    keep_ns: int = 120 * NS
    max_facts: int = 65536
    claim_keep_ns: int = 3600 * NS  # a claimed stream waits this long for its response
    max_claims: int = 4096
    facts: dict[int, list[LlmFact]] = field(default_factory=dict)
    # HTTP/2 requests (pid -> facts) that no exchange has claimed yet
    h2_requests: dict[int, list[LlmFact]] = field(default_factory=dict)
    # claimed HTTP/2 streams awaiting their response fact: key -> (claimed at, the exchange)
    claims: OrderedDict[tuple[int, int, int], tuple[int, Event]] = field(default_factory=OrderedDict)
    h2_conns: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)
    # exchanges that claimed streams: (pid, from, to, the exchange), for a request fact that
    # comes after its exchange went (the plaintext's ring read later than the socket's)
    h2_windows: deque[tuple[int, int, int, Event]] = field(
        default_factory=lambda: deque(maxlen=1024))
    pending: deque[tuple[int, Event]] = field(default_factory=deque)
    n_facts: int = 0
    unanswered: int = 0  # claimed streams whose response never came (reset, lost, too slow)
    _unanswered_said: bool = False
    _latest: int = 0
    transcripts: Transcripts | None = None
    transcript_wait_ns: int = 2 * NS
    starts: dict[int, deque[int]] = field(default_factory=dict)  # pid -> recent call starts
    counts: dict[str, int] = field(default_factory=dict)  # the transcript join, for heartbeats
    running: dict[int, list[int]] = field(default_factory=dict)  # pid -> calls in progress
    SLACK_NS = 5_000_000  # a transcript stamps ms; obs's wall clock is converted once
    unreadable_of: Callable[[int, int], str | None] = lambda pid, since: None

    def add_fact(self, fact: LlmFact) -> list[Event]:
        """A fact; returns the LlmCalls of HTTP/2 streams it completes."""
        self._latest = max(self._latest, fact.ts)
        if fact.is_request and fact.model_call and not fact.stream:
            return []  # the response's fact carries the model actually served, and the tokens
        if fact.is_request and fact.stream and not fact.model_call:
            return []  # an HTTP/2 stream that is no LLM API call is no LlmCall either
        if not fact.is_request and fact.stream:
            claimed = self.claims.pop(fact.key, None)
            if claimed is not None:
                return [stream_call(claimed[1], fact)]
        if fact.is_request:
            ev = next((ev for pid, lo, hi, ev in self.h2_windows
                       if pid == fact.pid and lo <= fact.request_ts <= hi
                       and same_host(fact, ev["event"]["LlmCall"])), None)
            if ev is not None:
                return self._claimed(ev, [fact])
        # an HTTP/1.x request that is no model call is kept: it marks its own call
        store = self.h2_requests if fact.is_request and fact.stream else self.facts
        store.setdefault(fact.pid, []).append(fact)
        self.n_facts += 1
        if self.n_facts > self.max_facts:
            self._expire(fact.ts - self.keep_ns // 2)
        return []

    def add_call(self, ev: Event, now_ns: int) -> list[Event]:
        """An LlmCall event (or any other event, passed through). Returns what is ready."""
        call = ev["event"].get("LlmCall")
        if call is None:
            return [ev]
        starts = self.starts.setdefault(call["pid"], deque(maxlen=64))
        starts.append(ev["ts"])
        if len(self.starts) > self.max_facts:
            del self.starts[next(iter(self.starts))]
        out = self._resolve(ev)
        if out is not None:
            return out
        # asked now, while the process likely lives
        call["tls_unreadable"] = self.unreadable_of(call["pid"], ev["ts"])
        if self.transcripts is not None:
            self.transcripts.watch(call["pid"], now_ns)
        self.pending.append((now_ns + self.grace_ns, ev))
        return []

    def tick(self, now_ns: int) -> list[Event]:
        """Calls whose fact arrived meanwhile, or whose grace ran out."""
        out = []
        still: deque[tuple[int, Event]] = deque()
        polled: set[int] = set()
        for deadline, ev in self.pending:
            call = ev["event"]["LlmCall"]
            done = self._resolve(ev)
            if done is None and now_ns >= deadline:
                if self._transcript(ev, call, polled, now_ns):
                    done = [joined(ev, None)]
                elif now_ns >= deadline + self._wait(call["pid"]):
                    if self.transcripts is not None and self.transcripts.has(call["pid"]):
                        self._bump("late")  # the pid has a transcript, but no line came in time
                    done = [joined(ev, None)]
            if done is None:
                still.append((deadline, ev))
            else:
                out += done
        self.pending = still
        if out:
            self._expire(max(ev["ts"] for ev in out) - self.keep_ns, (self.facts,))
        self._expire_claims(self._latest - self.claim_keep_ns)
        return out

    def _wait(self, pid: int) -> int:
        """How long past the wire's grace a call waits for its transcript line."""
        if self.transcripts is None or not self.transcripts.has(pid):
            return 0
        return max(0, self.transcript_wait_ns - self.grace_ns)

    def _transcript(self, ev: Event, call: dict[str, Any], polled: set[int],
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
        end = start + (duration_ns(lat) if lat else 0)
        later = [s for s in (*self.starts.get(pid, ()), *self.running.get(pid, ()))
                 if s > start]
        fact = tr.take(pid, start - self.SLACK_NS, end + self.transcript_wait_ns,
                       min(later) if later else None)
        if fact is None:
            return False
        call.update({k: fact.fields.get(k) for k in API_FIELDS}, usage_source="transcript")
        self._bump("joined")
        return True

    def _bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's `transcripts` counters (files followed, lines read, calls joined…;
        nothing when the transcript source is off) and `h2_unanswered`, once it moved."""
        tr = self.transcripts
        out: dict[str, Any] = {} if tr is None else {"transcripts": {**tr.counts, **self.counts}}
        if self.unanswered:
            out["h2_unanswered"] = self.unanswered
        return out

    def news(self) -> list[str]:
        """A line for stderr at the first unanswered stream (the heartbeat goes on counting)."""
        if not self.unanswered or self._unanswered_said:
            return []
        self._unanswered_said = True
        return ["an HTTP/2 request's response never came (stream reset, lost or too slow): no "
                "LlmCall was made for it (counted in the heartbeat's h2_unanswered)"]

    def _resolve(self, ev: Event) -> list[Event] | None:
        """What an exchange becomes now: its streams' calls (HTTP/2), itself joined with its
        response fact, nothing (HTTP/2 connection, no stream), or None: wait."""
        view: SocketView | None = ev.get(SOCKET_KEY)
        streams = self._claim(ev, view)
        if streams is not None:
            return streams
        if view is not None and view.conn in self.h2_conns:
            return []
        fact = self._match(ev)
        return None if fact is None else [joined(ev, fact)]

    def _claim(self, ev: Event, view: SocketView | None) -> list[Event] | None:
        call = ev["event"]["LlmCall"]
        reqs = self.h2_requests.get(call["pid"])
        if view is None or not reqs:
            return None
        lo, hi = view.start - H2_LEAD_NS, view.last_resp
        mine = [f for f in reqs if lo <= f.request_ts <= hi and same_host(f, call)]
        if not mine:
            return None
        self.h2_conns[view.conn] = None
        while len(self.h2_conns) > self.max_claims:
            self.h2_conns.popitem(last=False)
        self.h2_windows.append((call["pid"], lo, hi, ev))
        for f in mine:
            reqs.remove(f)
            self.n_facts -= 1
        return self._claimed(ev, mine)

    def _claimed(self, ev: Event, reqs: list[LlmFact]) -> list[Event]:
        """HTTP/2 requests claimed by exchange ev: the calls of those already answered."""
        out = []
        for f in reqs:
            resp = self._take(f.pid, lambda g, key=f.key: g.key == key)
            if resp is not None:
                out.append(stream_call(ev, resp))
                continue
            self.claims[f.key] = (ev[SOCKET_KEY].last_resp, ev)
            if len(self.claims) > self.max_claims:
                self.claims.popitem(last=False)
                self.unanswered += 1
        return out

    def _match(self, ev: Event) -> LlmFact | None:
        """The HTTP/1.x response fact nearest the call's start, within tolerance."""
        ts = ev["ts"]
        best = min((f for f in self.facts.get(ev["event"]["LlmCall"]["pid"], ()) if not f.stream),
                   key=lambda f: abs(f.request_ts - ts), default=None)
        if best is None or abs(best.request_ts - ts) > self.tolerance_ns:
            return None
        return self._take(best.pid, lambda g: g is best)

    def _take(self, pid: int, which: Any) -> LlmFact | None:
        cands = self.facts.get(pid, [])
        found = next((f for f in cands if which(f)), None)
        if found is not None:
            cands.remove(found)
            self.n_facts -= 1
        return found

    def _expire(self, before_ns: int, stores: tuple[dict[int, list[LlmFact]], ...] = ()
                ) -> None:
        for store in stores or (self.facts, self.h2_requests):
            for pid in list(store):
                kept = [f for f in store[pid] if f.ts >= before_ns]
                self.n_facts -= len(store[pid]) - len(kept)
                if kept:
                    store[pid] = kept
                else:
                    del store[pid]
        if self.transcripts is not None and (not stores or self.facts in stores):
            self.transcripts.expire(before_ns)

    def _expire_claims(self, before_ns: int) -> None:
        """Streams, claimed or not, older than claim_keep: a response lasts no longer."""
        self._expire(before_ns, (self.h2_requests,))
        while self.claims and next(iter(self.claims.values()))[0] < before_ns:
            self.claims.popitem(last=False)
            self.unanswered += 1


def same_host(fact: LlmFact, call: dict[str, Any]) -> bool:
    """The request went to the connection's server (as far as both say)."""
    sni = call.get("sni")
    return not sni or not fact.host or host_name(fact.host) == sni


def joined(ev: Event, fact: LlmFact | None) -> Event:
    """An HTTP/1.x exchange with its response fact (None: not seen; API fields a transcript
    set stay), and the first response byte from the plaintext where the socket's was not the
    response."""
    view: SocketView | None = ev.pop(SOCKET_KEY, None)
    call = ev["event"]["LlmCall"]
    if fact is not None:
        call.update({k: fact.fields.get(k) for k in API_FIELDS},
                    usage_source="wire" if fact.model_call else None,
                    model_call=fact.model_call, request=request_of(fact), tls_unreadable=None)
    for k in (*CALL_FIELDS, "usage_source"):
        call.setdefault(k, None)
    call["timing"], call["stream"] = "socket", None
    t = fact.timing if fact is not None else None
    if t is not None and view is not None and t.first_resp is not None:
        first = view.arrived_by(t.first_resp, whole=True)
        if first - view.first_resp > READ_SLACK_NS:
            call["ttft"] = duration(first - view.request_end)
            call["timing"] = "tls"
    return ev


def request_of(fact: LlmFact) -> str | None:
    """`request`: the method and path the plaintext showed (an API response's fact keeps only
    the path: its request was a POST)."""
    path = fact.fields.get("path")
    return f"{fact.fields.get('method') or 'POST'} {path}" if path else None


def stream_call(ev: Event, fact: LlmFact) -> Event:
    """One HTTP/2 stream's LlmCall: the connection and process from the exchange `ev` that
    claimed it; start, ttft, latency and bytes from the plaintext (a read's instant moved
    back to when its bytes had arrived, where the exchange's segments say)."""
    call = ev["event"]["LlmCall"]
    t = fact.timing
    if t is None or t.first_resp is None or t.last_resp is None:  # not from ApiTracker
        return joined({**ev, "event": {"LlmCall": dict(call)}}, fact)
    view: SocketView | None = ev.get(SOCKET_KEY)
    first, last = t.first_resp, t.last_resp
    if view is not None:
        first, last = view.arrived_by(first, whole=False), view.arrived_by(last, whole=False)
    fields = {k: call[k] for k in ("pid", "sni", "peer", "port")}
    fields |= {"req_bytes": t.req_bytes, "resp_bytes": t.resp_bytes,
               "latency": duration(last - fact.request_ts),
               "ttft": duration(first - t.request_end), "exchange": call["exchange"],
               **{k: fact.fields.get(k) for k in API_FIELDS}, "usage_source": "wire",
               "model_call": True, "request": request_of(fact), "tls_unreadable": None,
               "timing": "tls", "stream": fact.stream}
    out = {k: v for k, v in ev.items() if k != SOCKET_KEY}
    out["ts"], out["event"] = fact.request_ts, {"LlmCall": fields}
    return out


class JoinedDecoder:
    """One decode callback and tick for the run loop over both programs' records: the socket
    program's (via `calls`, an LlmCallDecoder) and the ssl program's (via `api`, an SslApi)."""

    def __init__(self, calls: Any, api: Any, join: ApiJoin | None = None,
                 unreadable_of: Callable[[int, int], str | None] | None = None):
        calls.instants = True  # the join needs each exchange's connection and instants
        self.calls = calls
        self.api = api
        self.join = join or ApiJoin()
        if unreadable_of is not None:
            self.join.unreadable_of = unreadable_of

    def __call__(self, raw: bytes) -> list[dict[str, Any]]:
        if is_ssl_record(raw):
            return [ev for fact in self.api.feed(raw) for ev in self.join.add_fact(fact)]
        now = time.monotonic_ns()
        return [out for ev in self.calls(raw) for out in self.join.add_call(ev, now)]

    def tick(self, now: float) -> list[dict[str, Any]]:
        final = now == float("inf")
        done = [ev for fact in self.api.tick(now) for ev in self.join.add_fact(fact)]
        now_ns = int(now * NS) if not final else 2**63  # the loop's time from before its poll
        tr = self.join.transcripts
        if tr is not None and not final:
            # while an agent has a provider connection open it is alive: look at its files
            live = self.calls.live()
            for pid in live:
                tr.watch(pid, now_ns)
            self.join.running = live
            tr.forget_gone(now_ns, self.join.keep_ns)
        out = [o for ev in self.calls.tick(now) for o in self.join.add_call(ev, now_ns)]
        return done + out + self.join.tick(now_ns)
