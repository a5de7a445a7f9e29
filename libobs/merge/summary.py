"""Per agent session: what the agent did, aggregated from the merged stream.

Tools run (with exit codes), LLM calls per provider and model (calls, tokens, bytes, latency
and TTFT p50/p95/max), endpoints reached, files written and deleted, security actions and
denials. Rendered as aligned tables for a terminal or as one JSON object
(`{"summary": {...}}`, no `event` key, so stream consumers skip it).

Counting rules: calls, bytes, latency and TTFT come from LlmCall (one per HTTP exchange); tokens
come from whichever of a request's LlmCall (obs-llm --api, or obs-merge's join) and LlmApi
response comes first, each request once (libobs.export.genai.Once); with LlmApi alone (no
obs-llm), its responses count as the calls. Each request with tokens is priced in USD from
the genai-prices catalogue (libobs.export.cost, its version in the summary); one the catalogue
does not know is counted as unpriced and adds nothing: a total is null when nothing was priced,
never a made-up 0. The agent root's own ToolExec/ProcessExit is not a "tool". An LlmCall that
obs-llm --api marked `model_call: false` (an agent's settings GET) is no LLM call: it is
listed under `other_requests` by its `request`.

Memory is bounded for a run of days: at most `max_sessions` sessions (the least recently active
is dropped and counted), `max_items` distinct entries per list (paths, endpoints, ...; the rest
counted), `max_samples` latency samples per row (a reservoir; max stays exact).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from libobs.events import duration_ns
from libobs.export.cost import CATALOGUE, cost_usd
from libobs.export.genai import Once, usage
from libobs.merge.sessions import Proc, event_pid
from libobs.terminal import safe
from libobs.tool.sink import Sink

MAX_SESSIONS = 4096
MAX_ITEMS = 1000
MAX_SAMPLES = 4096
MS = 1_000_000


class Samples:
    """p50/p95/max of a series, from a bounded reservoir (max is exact)."""

    def __init__(self, cap: int = MAX_SAMPLES, seed: int = 0) -> None:
        self.cap = cap
        self.values: list[int] = []
        self.n = 0
        self.max: int | None = None
        self.rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.n += 1
        self.max = value if self.max is None or value > self.max else self.max
        if len(self.values) < self.cap:
            self.values.append(value)
        else:
            slot = self.rng.randrange(self.n)
            if slot < self.cap:
                self.values[slot] = value

    def percentile(self, p: float) -> int | None:
        """Nearest-rank percentile."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def to_json(self) -> dict[str, float | None]:
        def ms(v: int | None) -> float | None:
            return None if v is None else round(v / MS, 3)
        return {"p50": ms(self.percentile(50)), "p95": ms(self.percentile(95)), "max": ms(self.max)}


class Capped:
    """A counter of at most `cap` distinct keys; new keys beyond it are only counted."""

    def __init__(self, cap: int = MAX_ITEMS) -> None:
        self.cap = cap
        self.counts: Counter[Any] = Counter()
        self.more = 0

    def add(self, key: Any, n: int = 1) -> None:
        if key in self.counts or len(self.counts) < self.cap:
            self.counts[key] += n
        else:
            self.more += 1


@dataclass
class Cost:
    """USD over the requests that had tokens: priced ones summed, the others counted."""

    usd: Decimal | None = None
    priced: int = 0
    unpriced: int = 0

    def add(self, usd: Decimal | None) -> None:
        if usd is None:
            self.unpriced += 1
        else:
            self.priced += 1
            self.usd = usd if self.usd is None else self.usd + usd

    def merge(self, other: Cost) -> None:
        self.priced += other.priced
        self.unpriced += other.unpriced
        if other.usd is not None:
            self.usd = other.usd if self.usd is None else self.usd + other.usd

    def to_json(self) -> dict[str, Any]:
        return {"usd": None if self.usd is None else float(self.usd), "priced_requests":
                self.priced, "unpriced_requests": self.unpriced}

    def text(self) -> str:
        usd = "-" if self.usd is None else f"${self.usd:.4f}"
        return usd + (f" (+{self.unpriced} unpriced)" if self.unpriced else "")


@dataclass
class LlmRow:
    calls: int = 0
    api_responses: int = 0
    tokens: Counter[str] = field(default_factory=Counter)
    req_bytes: int = 0
    resp_bytes: int = 0
    latency: Samples = field(default_factory=Samples)
    ttft: Samples = field(default_factory=Samples)
    cost: Cost = field(default_factory=Cost)


@dataclass
class Tool:
    runs: int = 0
    exits: Counter[str] = field(default_factory=Counter)


@dataclass
class SessionStats:
    session: str
    pid: int
    agent: str | None
    evidence: str | None
    first_ts: int
    last_ts: int
    events: Counter[str] = field(default_factory=Counter)
    tools: dict[str, Tool] = field(default_factory=dict)
    llm: dict[tuple[str | None, str | None], LlmRow] = field(default_factory=dict)
    endpoints: Capped = field(default_factory=Capped)
    written: Capped = field(default_factory=Capped)
    deleted: Capped = field(default_factory=Capped)
    security: Capped = field(default_factory=Capped)
    denied: Capped = field(default_factory=Capped)
    others: Capped = field(default_factory=Capped)  # LlmCalls marked model_call: false


class Summary:
    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.sessions: OrderedDict[str, SessionStats] = OrderedDict()
        self.max_sessions = max_sessions
        self.dropped_sessions = 0
        self.unattributed: Counter[str] = Counter()
        self.once = Once()

    def add(self, ev: dict[str, Any], root: Proc | None) -> None:
        inner = ev.get("event")  # event_kind(), inlined: this runs for every event
        kind = next(iter(inner)) if isinstance(inner, dict) and len(inner) == 1 else "?"
        if root is None or root.session is None:
            if kind != "CollectorHeartbeat":
                self.unattributed[kind] += 1
            return
        s = self._session(root, ev)
        fields = ev["event"][kind]
        s.events[kind] += 1
        ts = ev["ts"]
        if ts > s.last_ts:
            s.last_ts = ts
        if ts < s.first_ts:
            s.first_ts = ts
        if kind == "FileAccess":  # the most frequent kind first: one comparison for it
            if fields.get("write", True):
                count = fields.get("count")  # opens folded into one event (--fold-window)
                s.written.add(str(fields.get("path")),
                              count if type(count) is int and count > 0 else 1)
        elif kind == "ToolExec":
            if event_pid(ev, fields) != root.pid:  # the agent's own exec is not a tool
                self._tool(s, fields).runs += 1
        elif kind == "ProcessExit":
            if event_pid(ev, fields) != root.pid:
                self._tool(s, fields).exits[_exit_code(fields)] += 1
        elif kind == "LlmCall" and fields.get("model_call") is False:
            s.others.add(str(fields.get("request") or "-"))  # settings, telemetry: no model call
        elif kind == "LlmCall":
            self._llmcall(s, ev, fields)
        elif kind == "LlmApi" and fields.get("is_request") is False:
            row = self._row(s, ev.get("provider"), fields.get("model"))
            row.api_responses += 1
            self._tokens(row, ev, kind, fields)
        elif kind == "Egress":
            host = fields.get("hostname") or fields.get("sni") or fields.get("peer")
            s.endpoints.add(f"{_host_port(host, fields.get('port'))}")
        elif kind == "FileDelete":
            s.deleted.add(str(fields.get("path")))
        elif kind == "SecurityAction":
            s.security.add((str(fields.get("kind")), str(fields.get("detail"))))
        elif kind == "Denied":
            s.denied.add((str(fields.get("action")), str(fields.get("target")),
                          str(fields.get("rule"))))

    def _session(self, root: Proc, ev: dict[str, Any]) -> SessionStats:
        key = root.session
        assert key is not None
        s = self.sessions.get(key)
        if s is not None:
            self.sessions.move_to_end(key)
        else:
            s = self.sessions[key] = SessionStats(key, root.pid, None, root.agent, ev["ts"],
                                                  ev["ts"])
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
                self.dropped_sessions += 1
        agent = (ev.get("identity") or {}).get("agent")
        if agent:
            s.agent = agent
        return s

    def _tool(self, s: SessionStats, fields: dict[str, Any]) -> Tool:
        name = fields.get("comm") or os.path.basename(str(fields.get("filename") or "?"))
        tool = s.tools.get(name)
        if tool is None:
            if len(s.tools) >= MAX_ITEMS:
                name = "(other)"
            tool = s.tools.setdefault(name, Tool())
        return tool

    def _row(self, s: SessionStats, provider: Any, model: Any) -> LlmRow:
        key = (provider if isinstance(provider, str) else None,
               model if isinstance(model, str) else None)
        row = s.llm.get(key)
        if row is None:
            if len(s.llm) >= MAX_ITEMS:
                key = (key[0], "(other)")
            row = s.llm.setdefault(key, LlmRow())
        return row

    def _llmcall(self, s: SessionStats, ev: dict[str, Any], fields: dict[str, Any]) -> None:
        row = self._row(s, ev.get("provider"), fields.get("model"))
        row.calls += 1
        self._tokens(row, ev, "LlmCall", fields)
        for name in ("req_bytes", "resp_bytes"):
            if _count(fields.get(name)):
                setattr(row, name, getattr(row, name) + fields[name])
        for name in ("latency", "ttft"):
            with contextlib.suppress(KeyError, TypeError, ValueError):  # absent or malformed
                getattr(row, name).add(duration_ns(fields[name]))

    def _tokens(self, row: LlmRow, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> None:
        used = usage(ev.get("provider"), fields)
        if used is None or not self.once.counts(ev, kind, fields):
            return
        row.tokens.update(used.counts())
        model = fields.get("model")
        row.cost.add(cost_usd(ev.get("provider"), model if isinstance(model, str) else None,
                              used, ev.get("ts")))

    def models(self) -> list[dict[str, Any]]:
        """Totals per (provider, model) over the sessions still held."""
        rows: dict[tuple[str | None, str | None], LlmRow] = {}
        for s in self.sessions.values():
            for key, r in s.llm.items():
                total = rows.setdefault(key, LlmRow())
                total.calls += r.calls or r.api_responses
                total.tokens.update(r.tokens)
                total.cost.merge(r.cost)
        return [{"provider": k[0], "model": k[1], "calls": t.calls,
                 "tokens": dict(sorted(t.tokens.items())), "cost": t.cost.to_json()}
                for k, t in sorted(rows.items(), key=lambda kv: str(kv[0]))]

    # -- rendering ------------------------------------------------------------------------
    def to_json(self, stream: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"summary": {
            "price_catalogue": CATALOGUE,
            "sessions": [_session_json(s) for s in self.sessions.values()],
            "models": self.models(),
            "sessions_dropped": self.dropped_sessions,
            "unattributed": dict(sorted(self.unattributed.items())),
            "stream": stream or {},
        }}

    def table(self, stream: dict[str, Any] | None = None) -> str:
        lines = [_stream_line(len(self.sessions), stream or {})]
        for s in self.sessions.values():
            lines += [""] + _session_table(s)
        models = self.models()
        if models:
            rows = [["PROVIDER", "MODEL", "CALLS", "COST USD"]] + [
                [m["provider"] or "-", m["model"] or "-", str(m["calls"]), _cost_text(m["cost"])]
                for m in models]
            lines += ["", f"all sessions, priced with {CATALOGUE}:"] + align(rows, "  ")
        if self.unattributed:
            lines += ["", "not attributed to an agent: " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.unattributed.items()))]
        # Agents, comms, models and endpoints come from watched processes: one escape for all.
        return "\n".join(safe(line) for line in lines) + "\n"


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _cost_text(cost: dict[str, Any]) -> str:
    usd = "-" if cost["usd"] is None else f"{cost['usd']:.4f}"
    return usd + (f" (+{cost['unpriced_requests']} unpriced)" if cost["unpriced_requests"] else "")


def _exit_code(fields: dict[str, Any]) -> str:
    if fields.get("signal") is not None:
        return f"sig{fields['signal']}" + ("+core" if fields.get("core_dumped") else "")
    code = fields.get("exit_code")
    return "?" if code is None else str(code)


def _host_port(host: Any, port: Any) -> str:
    host = str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _row_json(key: tuple[str | None, str | None], row: LlmRow) -> dict[str, Any]:
    calls = row.calls or row.api_responses
    return {"provider": key[0], "model": key[1], "calls": calls,
            "api_responses": row.api_responses,
            "tokens": {name: row.tokens[name] for name in sorted(row.tokens)},
            "req_bytes": row.req_bytes, "resp_bytes": row.resp_bytes, "cost": row.cost.to_json(),
            "latency_ms": row.latency.to_json(), "ttft_ms": row.ttft.to_json()}


def _capped_json(c: Capped, names: tuple[str, ...]) -> dict[str, Any]:
    items = []
    for key, n in sorted(c.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        values = key if isinstance(key, tuple) else (key,)
        items.append({**dict(zip(names, values, strict=True)), "count": n})
    return {"distinct": len(c.counts) + c.more, "items": items, "not_listed": c.more}


def _session_json(s: SessionStats) -> dict[str, Any]:
    tokens: Counter[str] = Counter()
    cost = Cost()
    for row in s.llm.values():
        tokens.update(row.tokens)
        cost.merge(row.cost)
    return {
        "session": s.session, "agent": s.agent, "pid": s.pid, "evidence": s.evidence,
        "first_ts": s.first_ts, "last_ts": s.last_ts, "events": dict(sorted(s.events.items())),
        "tools": [{"comm": name, "runs": t.runs, "exit_codes": dict(sorted(t.exits.items()))}
                  for name, t in sorted(s.tools.items())],
        "llm": [_row_json(k, r) for k, r in sorted(s.llm.items(), key=lambda kv: str(kv[0]))],
        "tokens": dict(sorted(tokens.items())), "cost": cost.to_json(),
        "bytes": {"req": sum(r.req_bytes for r in s.llm.values()),
                  "resp": sum(r.resp_bytes for r in s.llm.values())},
        "endpoints": _capped_json(s.endpoints, ("endpoint",)),
        "other_requests": _capped_json(s.others, ("request",)),
        "files_written": _capped_json(s.written, ("path",)),
        "files_deleted": _capped_json(s.deleted, ("path",)),
        "security_actions": _capped_json(s.security, ("kind", "detail")),
        "denials": _capped_json(s.denied, ("action", "target", "rule")),
    }


def _stream_line(n_sessions: int, stream: dict[str, Any]) -> str:
    parts = [f"{n_sessions} agent session{'s' if n_sessions != 1 else ''}"]
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in stream.items()
              if isinstance(v, int) and not isinstance(v, bool) and v]
    return "obs-merge summary: " + ", ".join(parts)


def align(rows: list[list[str]], indent: str = "") -> list[str]:
    """Rows of cells → lines with every column padded to its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _pct(s: Samples) -> str:
    vals = [s.percentile(50), s.percentile(95), s.max]
    return "/".join("-" if v is None else f"{v / MS:.0f}" for v in vals)


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1e9))


def _session_table(s: SessionStats) -> list[str]:
    cost = Cost()
    for row in s.llm.values():
        cost.merge(row.cost)
    lines = [f"session {s.session}  agent {s.agent or '-'}  pid {s.pid}  "
             f"events {sum(s.events.values())}  {_when(s.first_ts)} .. {_when(s.last_ts)}"
             + (f"  cost {cost.text()}" if cost.priced or cost.unpriced else "")]
    if s.tools:
        rows = [["TOOL", "RUNS", "EXIT CODES"]] + [
            [name, str(t.runs), " ".join(f"{c}x{n}" for c, n in sorted(t.exits.items())) or "-"]
            for name, t in sorted(s.tools.items())]
        lines += align(rows, "  ")
    if s.llm:
        rows = [["PROVIDER", "MODEL", "CALLS", "PROMPT TOK", "COMPL TOK", "CACHE R/W",
                 "COST USD", "REQ BYTES", "RESP BYTES", "LATENCY ms p50/p95/max",
                 "TTFT ms p50/p95/max"]]
        for (provider, model), r in sorted(s.llm.items(), key=lambda kv: str(kv[0])):
            rows.append([provider or "-", model or "-", str(r.calls or r.api_responses),
                         _tok(r, "prompt"), _tok(r, "completion"),
                         f"{_tok(r, 'cache_read')}/{_tok(r, 'cache_creation')}",
                         _cost_text(r.cost.to_json()),
                         str(r.req_bytes), str(r.resp_bytes), _pct(r.latency), _pct(r.ttft)])
        lines += [""] + align(rows, "  ")
    sections = [("endpoints", s.endpoints), ("written", s.written), ("deleted", s.deleted),
                ("security", s.security), ("denied", s.denied)]
    listed = [[label, _listing(c)] for label, c in sections if c.counts]
    if listed:
        lines += [""] + align(listed, "  ")
    return lines


def _tok(row: LlmRow, name: str) -> str:
    return str(row.tokens[name]) if name in row.tokens else "-"  # never reported: not a 0


def _listing(c: Capped) -> str:
    items = sorted(c.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(_item(k) + (f" x{n}" if n > 1 else "") for k, n in items)
    return text + (f", and {c.more} more" if c.more else "")


def _item(key: Any) -> str:
    if not isinstance(key, tuple):
        return str(key)
    if len(key) == 3:  # a denial: action target (rule)
        return f"{key[0]} {key[1]} (rule {key[2]})"
    return " ".join(key)


def write(sink: Sink, text: bytes, timeout: float = 5.0) -> None:
    """Write after whatever the sink still holds, waiting for a slow reader up to `timeout`."""
    sink.write_raw(text, timeout)
