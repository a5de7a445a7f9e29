"""obs events → OpenTelemetry spans and GenAI metric points, as plain data (no SDK here).

Each agent session is one trace (its id derived from the session key, so every obs-otel, and a
re-run, agree): a root span `invoke_agent {agent}` from the session's first event to the agent's
exit; each LlmCall a CLIENT span `{operation} {model}` over [ts, ts + latency] with the GenAI
semantic-convention attributes; each tool process an INTERNAL span from its ToolExec to its
ProcessExit, parented to its parent process's span when open, else to the root; Denied and
SecurityAction are span events on the acting process's span (else the root's).

With obs-ssl alone (LlmApi, no LlmCall) a response makes the CLIENT span, from its pid's
latest earlier LlmApi request (whose model is the request model) to the response. When a
request reaches obs-otel both ways, the first to arrive makes the one span (normally the
LlmCall, which starts earlier).

Token counts follow the semantic conventions: `gen_ai.usage.input_tokens` is all input, cached
included (libobs.export.genai.Usage.input). obs sees the model that served a response, so
`gen_ai.request.model` and `gen_ai.response.model` are both that model.

Bounded: at most `max_open` spans are open (roots and tools); beyond it the least recently
started (for roots: least recently active) is ended where its session last had an event, marked
`obs.evicted`, and counted. At the
end of input the spans still open end likewise, marked `obs.incomplete`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from libobs.events import NS, duration, duration_ns, event_kind
from libobs.export.cost import cost_usd
from libobs.export.genai import Once, model_of, operation_name, provider_name, usage

MAX_OPEN = 10_000
MAX_SPAN_EVENTS = 128
REQUESTS_PER_PID = 16
_ROOT_PID = re.compile(r"^(\d+)@")


@dataclass
class Span:
    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    kind: str  # "client" | "internal"
    start_ns: int
    end_ns: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None  # error.type; the span's status is ERROR when set
    dropped_events: int = 0


@dataclass(frozen=True)
class Point:
    """One measurement for a GenAI client histogram."""

    metric: str
    value: float
    attributes: dict[str, Any]


def trace_id(session: str) -> int:
    return int.from_bytes(hashlib.sha256(session.encode()).digest()[:16], "big") or 1


def span_id(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") or 1


def llm_span(ev: dict[str, Any], fields: dict[str, Any], trace: int, parent: int | None
             ) -> Span:
    """The CLIENT span of one LlmCall."""
    ts: int = ev["ts"]
    attrs = semconv_attributes(ev, fields)
    model = model_of(fields)
    op = attrs["gen_ai.operation.name"]
    span = Span(trace, span_id("llm", trace, fields.get("pid"), ts), parent,
                f"{op} {model}" if model else op, "client", ts, ts + _ns(fields.get("latency")))
    used = usage(ev.get("provider"), fields)
    if used is not None:
        for key, value in (("gen_ai.usage.input_tokens", used.input),
                           ("gen_ai.usage.output_tokens", used.completion),
                           ("gen_ai.usage.cache_read.input_tokens", used.cache_read),
                           ("gen_ai.usage.cache_creation.input_tokens", used.cache_creation)):
            if value is not None:
                span.attributes[key] = value
        usd = cost_usd(ev.get("provider"), model, used, ts)
        if usd is not None:
            span.attributes["obs.cost.usd"] = float(usd)
    span.attributes.update(attrs)
    _byte_counts(span, fields)
    if fields.get("ttft") is not None:
        ttft = _ns(fields["ttft"])
        span.attributes["obs.time_to_first_chunk"] = ttft / NS
        span.events.append(("gen_ai.first_chunk", min(ts + ttft, span.end_ns or ts), {}))
    span.error = attrs.get("error.type")
    return span


def _byte_counts(span: Span, fields: dict[str, Any]) -> None:
    for name in ("req_bytes", "resp_bytes"):
        if type(fields.get(name)) is int:
            span.attributes[f"obs.{name}"] = fields[name]


def request_span(ev: dict[str, Any], fields: dict[str, Any], trace: int, parent: int | None
                 ) -> Span:
    """The CLIENT span of an LlmCall that was no model call (`model_call: false`: an agent's
    settings or telemetry request): an HTTP span, kept out of the GenAI spans and metrics."""
    ts: int = ev["ts"]
    request = fields.get("request")
    method, _, path = request.partition(" ") if isinstance(request, str) else ("", "", "")
    span = Span(trace, span_id("llm", trace, fields.get("pid"), ts), parent,
                request if isinstance(request, str) and request else "HTTP", "client", ts,
                ts + _ns(fields.get("latency")))
    attrs = semconv_attributes(ev, fields)
    span.attributes.update({k: v for k, v in attrs.items() if k.startswith("server.")})
    if method and path:
        span.attributes["http.request.method"] = method
        span.attributes["url.path"] = path
    _byte_counts(span, fields)
    span.attributes["obs.model_call"] = False
    return span


def semconv_attributes(ev: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The GenAI attributes an LlmCall's span and its metric points share."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation_name(fields),
                             "gen_ai.provider.name": provider_name(ev.get("provider"))}
    model = model_of(fields)
    if model:
        attrs["gen_ai.request.model"] = attrs["gen_ai.response.model"] = model
    host = fields.get("sni") or fields.get("hostname") or fields.get("peer")
    if isinstance(host, str) and host:
        attrs["server.address"] = host
    if type(fields.get("port")) is int:
        attrs["server.port"] = fields["port"]
    status = fields.get("status")
    if type(status) is int and status >= 400:
        attrs["error.type"] = str(status)
    elif isinstance(fields.get("error"), str):
        attrs["error.type"] = fields["error"]
    return attrs


def llm_points(ev: dict[str, Any], kind: str, fields: dict[str, Any], count_tokens: bool
               ) -> list[Point]:
    """GenAI client metric points of an LlmCall (duration, TTFT, tokens) or of an LlmApi
    response (tokens only; its call, if any, has the timings)."""
    attrs = semconv_attributes(ev, fields)
    points = []
    if kind == "LlmCall":
        if fields.get("latency") is not None:
            points.append(Point("gen_ai.client.operation.duration",
                                _ns(fields["latency"]) / NS, attrs))
        if fields.get("ttft") is not None:
            points.append(Point("gen_ai.client.operation.time_to_first_chunk",
                                _ns(fields["ttft"]) / NS, attrs))
    used = usage(ev.get("provider"), fields) if count_tokens else None
    if used is not None:
        base = {k: v for k, v in attrs.items() if k != "error.type"}
        if used.input is not None:
            points.append(Point("gen_ai.client.token.usage", used.input,
                                {**base, "gen_ai.token.type": "input"}))
        if used.completion is not None:
            points.append(Point("gen_ai.client.token.usage", used.completion,
                                {**base, "gen_ai.token.type": "output"}))
    return points


def _ns(d: Any) -> int:
    try:
        return max(0, duration_ns(d))
    except (KeyError, TypeError, ValueError):
        return 0


@dataclass
class _Session:
    key: str
    trace: int
    root_pid: int | None
    last_ts: int
    root: Span | None = None  # None once ended: the next event starts a new root span


class Tracer:
    """Consumes merged events in ts order; returns finished spans and metric points.

    `feed` returns what each event finished; `close` ends whatever is still open.
    """

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.max_open = max_open
        self.sessions: dict[str, _Session] = {}
        self.open: OrderedDict[tuple[str, int | None], Span] = OrderedDict()  # LRU by start
        self.once = Once()
        self.requests: OrderedDict[Any, deque[tuple[int, dict[str, Any]]]] = OrderedDict()
        self.counts: Counter[str] = Counter()

    def feed(self, ev: dict[str, Any]) -> tuple[list[Span], list[Point]]:
        kind = event_kind(ev)
        if kind is None or kind == "CollectorHeartbeat":
            return [], []
        fields = ev["event"][kind] if isinstance(ev["event"][kind], dict) else {}
        points: list[Point] = []
        counted, request = False, None
        other = kind == "LlmCall" and fields.get("model_call") is False  # not GenAI: HTTP
        if kind in ("LlmCall", "LlmApi") and not other:
            counted = self.once.counts(ev, kind, fields)
            points = llm_points(ev, kind, fields, counted)
            used = usage(ev.get("provider"), fields) if counted else None
            if used is not None:  # unknown models are counted, never priced at 0
                priced = cost_usd(ev.get("provider"), model_of(fields), used, ev.get("ts"))
                self.counts["requests_priced" if priced is not None else "requests_unpriced"] += 1
            if kind == "LlmApi":
                request = self._request(ev, fields)
        key = (ev.get("identity") or {}).get("session")
        if not isinstance(key, str) or not isinstance(ev.get("ts"), int):
            self.counts["no_session"] += 1  # no trace to put it in (its metrics still count)
            return [], points
        done: list[Span] = []
        s = self._session(key, ev, done)
        s.last_ts = max(s.last_ts, ev["ts"])
        pid = fields.get("pid")
        if other:
            done.append(request_span(ev, fields, s.trace, self._parent(s, pid)))
        elif kind == "LlmCall" and counted:  # not counted: its LlmApi response made the span
            done.append(llm_span(ev, fields, s.trace, self._parent(s, pid)))
        elif kind == "LlmApi" and counted:  # a response no LlmCall had: obs-ssl without obs-llm
            done.append(self._api_span(ev, fields, request, s))
        elif kind == "ToolExec" and pid != s.root_pid:
            self._start_tool(s, ev, fields, done)
        elif kind == "ProcessExit":
            self._exit(s, ev, fields, done)
        elif kind in ("Denied", "SecurityAction"):
            target = self.open.get((key, pid)) or s.root
            assert target is not None
            _add_event(target, f"obs.{kind}", ev["ts"], {
                f"obs.{k}": str(v) for k, v in fields.items() if k != "pid" and v is not None})
        self.counts["spans"] += len(done)
        return done, points

    def close(self) -> list[Span]:
        """End everything still open (end of input)."""
        done = []
        for (key, _), span in list(self.open.items()):
            span.attributes["obs.incomplete"] = True
            done.append(self._end(span, self.sessions[key].last_ts))
        self.open.clear()
        self.sessions.clear()
        self.counts["spans"] += len(done)
        return done

    def _request(self, ev: dict[str, Any], fields: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]] | None:
        """Remember LlmApi requests; for a response, the latest request of its pid before it."""
        pid = fields.get("pid")
        if fields.get("is_request") is True:
            self.requests.setdefault(pid, deque(maxlen=REQUESTS_PER_PID)).append(
                (ev["ts"], fields))
            self.requests.move_to_end(pid)
            if len(self.requests) > MAX_OPEN:
                self.requests.popitem(last=False)
            return None
        pending = self.requests.get(pid)
        before = [r for r in pending or () if r[0] <= ev["ts"]]
        if not before:
            return None
        pending.remove(before[-1])  # type: ignore[union-attr]
        return before[-1]

    def _api_span(self, ev: dict[str, Any], fields: dict[str, Any],
                  request: tuple[int, dict[str, Any]] | None, s: _Session) -> Span:
        """A CLIENT span from an LlmApi request to its response (no socket timings)."""
        start = request[0] if request else ev["ts"]
        call = {**fields, "latency": duration(ev["ts"] - start)}
        span = llm_span({**ev, "ts": start}, call, s.trace, self._parent(s, fields.get("pid")))
        if request and model_of(request[1]):
            span.attributes["gen_ai.request.model"] = model_of(request[1])
        if request is None:
            span.attributes["obs.start_unknown"] = True
        return span

    def _session(self, key: str, ev: dict[str, Any], done: list[Span]) -> _Session:
        s = self.sessions.get(key)
        if s is None:
            m = _ROOT_PID.match(key)
            s = self.sessions[key] = _Session(key, trace_id(key), int(m.group(1)) if m else None,
                                              ev["ts"])
        if s.root is not None:
            self.open.move_to_end((key, None))  # an active session's root is evicted last
            return s
        agent = (ev.get("identity") or {}).get("agent") or "agent"
        s.root = Span(s.trace, span_id("root", key, ev["ts"]), None, f"invoke_agent {agent}",
                      "internal", ev["ts"], attributes={
                          "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                          "obs.session": key, **({"process.pid": s.root_pid}
                                                 if s.root_pid is not None else {})})
        self._open((key, None), s.root, done)
        return s

    def _parent(self, s: _Session, pid: Any) -> int | None:
        span = self.open.get((s.key, pid)) if pid != s.root_pid else None
        span = span or s.root
        return span.span_id if span is not None else None

    def _start_tool(self, s: _Session, ev: dict[str, Any], fields: dict[str, Any],
                    done: list[Span]) -> None:
        pid, comm = fields.get("pid"), fields.get("comm") or "?"
        old = self.open.pop((s.key, pid), None)
        if old is not None:  # exec again without exit: the old image ended here
            done.append(self._end(old, ev["ts"]))
        attrs = {"process.pid": pid, "process.parent_pid": fields.get("ppid"),
                 "process.executable.name": comm,
                 "process.executable.path": fields.get("filename"),
                 "process.command_args": [str(a) for a in fields.get("argv") or []],
                 "process.working_directory": fields.get("cwd")}
        span = Span(s.trace, span_id("tool", s.key, pid, ev["ts"]),
                    self._parent(s, fields.get("ppid")), f"exec {comm}", "internal", ev["ts"],
                    attributes={k: v for k, v in attrs.items() if v is not None})
        self._open((s.key, pid), span, done)

    def _exit(self, s: _Session, ev: dict[str, Any], fields: dict[str, Any],
              done: list[Span]) -> None:
        pid = fields.get("pid")
        span = self.open.pop((s.key, None if pid == s.root_pid else pid), None)
        if span is None:
            return
        if pid == s.root_pid:
            s.root = None
        code, sig = fields.get("exit_code"), fields.get("signal")
        if code is not None:
            span.attributes["process.exit.code"] = code
        if sig is not None:
            span.error = f"signal {sig}"
        elif code not in (None, 0):
            span.error = f"exit {code}"
        done.append(self._end(span, ev["ts"]))
        self._forget_if_idle(s)

    def _forget_if_idle(self, s: _Session) -> None:
        """Keep a session only while it has an open span (the session table stays bounded)."""
        if s.root is None and not any(k == s.key for k, _ in self.open):
            del self.sessions[s.key]

    def _open(self, key: tuple[str, int | None], span: Span, done: list[Span]) -> None:
        self.open[key] = span
        while len(self.open) > self.max_open:
            (skey, pid), old = self.open.popitem(last=False)
            old.attributes["obs.evicted"] = True
            self.counts["evicted"] += 1
            s = self.sessions[skey]
            done.append(self._end(old, s.last_ts))
            if pid is None:
                s.root = None
            self._forget_if_idle(s)

    @staticmethod
    def _end(span: Span, ts: int) -> Span:
        span.end_ns = max(span.start_ns, ts)
        return span


def _add_event(span: Span, name: str, ts: int, attrs: dict[str, Any]) -> None:
    if len(span.events) >= MAX_SPAN_EVENTS:
        span.dropped_events += 1
    else:
        span.events.append((name, ts, attrs))
