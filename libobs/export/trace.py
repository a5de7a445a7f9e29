"""The merged run as a Chrome/Perfetto trace (the Trace Event Format's JSON object form), so a
person can open it in ui.perfetto.dev or chrome://tracing and see what each agent did.

Layout: each agent session is a trace "process" (named `agent NAME session KEY`); inside it
each OS process is a "thread" track (`comm [pid]`) holding that process's lifetime as a
complete slice (`ph: X`, from ProcessExit's ts minus its duration, else from its ToolExec) and
its file writes and deletes, connections, DNS lookups, security actions and denials as
instants (`ph: i`). LLM calls are complete slices on an `LLM calls` track of their process
(lanes when calls overlap, so slices always nest), each with a nested `TTFT` slice from the
request's start to the first response byte (the kernel's ttft plus the request's upload, which
is not measured apart). Events no agent session claims go under `not attributed`.

Timestamps are microseconds (floats keep the nanoseconds) since the run's first event; its
wall-clock time is in `otherData.start_ns`. Events are sorted by ts. Bounded: at most
`max_events` trace events (track names included) and `max_open` processes awaiting their exit;
the rest are counted in `otherData.dropped`.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from libobs.events import duration_ns, event_kind
from libobs.export.cost import CATALOGUE, cost_usd
from libobs.export.genai import model_of, operation_name, usage
from libobs.merge.sessions import Proc, event_pid

MAX_EVENTS = 1_000_000
MAX_OPEN = 100_000
NOBODY = "(not attributed)"


@dataclass
class _Exec:
    ts: int
    comm: str
    args: dict[str, Any]


@dataclass(frozen=True)
class _Track:
    pid: int  # the trace "process": an agent session
    tid: int  # the trace "thread": one OS process, or one lane of its LLM calls


class Timeline:
    def __init__(self, max_events: int = MAX_EVENTS, max_open: int = MAX_OPEN) -> None:
        self.max_events, self.max_open = max_events, max_open
        self.events: list[dict[str, Any]] = []
        self.meta: list[dict[str, Any]] = []
        self.sessions: dict[str, int] = {}
        self.tracks: dict[tuple[str, int | None, str], _Track] = {}
        self.execs: OrderedDict[tuple[str, int], _Exec] = OrderedDict()
        self.lanes: dict[tuple[str, int | None], list[int]] = {}  # end ts of each lane's last call
        self.dropped: Counter[str] = Counter()
        self.last_ts = 0

    # -- input ---------------------------------------------------------------------------
    def add(self, ev: dict[str, Any], root: Proc | None) -> None:
        kind = event_kind(ev)
        if kind is None or kind == "CollectorHeartbeat" or not isinstance(ev.get("ts"), int):
            return
        if len(self.events) + len(self.meta) >= self.max_events:  # tracks count too
            self.dropped["trace_events"] += 1
            return
        fields = ev["event"][kind] if isinstance(ev["event"][kind], dict) else {}
        session = root.session if root is not None and root.session else NOBODY
        ts: int = ev["ts"]
        self.last_ts = max(self.last_ts, ts)
        pid = event_pid(ev, fields)
        comm = fields.get("comm") or (ev.get("process") or {}).get("comm") or "?"
        if kind == "ToolExec":
            self._exec(ev, session, pid, comm, fields)
        elif kind == "ProcessExit":
            self._exit(ev, session, pid, comm, fields)
        elif kind == "LlmCall":
            self._llm(ev, session, pid, comm, fields)
        elif kind in _INSTANTS:
            name = _INSTANTS[kind](fields)
            if name is not None:
                args = {k: v for k, v in fields.items() if k != "pid" and v is not None}
                self._emit(ts, {"name": name, "cat": kind, "ph": "i", "s": "t", "args": args},
                           self._track(ev, session, pid, comm, "proc"))

    def _exec(self, ev: dict[str, Any], session: str, pid: int | None, comm: str,
              fields: dict[str, Any]) -> None:
        if pid is None:
            return
        self._track(ev, session, pid, comm, "proc")
        key = (session, pid)
        old = self.execs.pop(key, None)
        if old is not None:  # a new image without an exit: the old one ended here
            self._slice(session, pid, old, ev["ts"], {"replaced_by_exec": True})
        self.execs[key] = _Exec(ev["ts"], comm, {
            "argv": fields.get("argv"), "filename": fields.get("filename"),
            "cwd": fields.get("cwd"), "ppid": fields.get("ppid")})
        if len(self.execs) > self.max_open:
            (s, p), lost = self.execs.popitem(last=False)
            self.dropped["processes_never_exited_evicted"] += 1
            self._slice(s, p, lost, lost.ts, {"evicted": True})

    def _exit(self, ev: dict[str, Any], session: str, pid: int | None, comm: str,
              fields: dict[str, Any]) -> None:
        if pid is None:
            return
        track = self._track(ev, session, pid, comm, "proc")
        started = self.execs.pop((session, pid), None)
        try:
            start = ev["ts"] - max(0, duration_ns(fields["duration"]))
        except (KeyError, TypeError, ValueError):
            start = started.ts if started else ev["ts"]
        code, sig = fields.get("exit_code"), fields.get("signal")
        args = {**(started.args if started else {}), "exit_code": code, "signal": sig}
        name = started.comm if started else comm
        self._emit(start, {"name": name, "cat": "process", "ph": "X",
                           "dur": _us(ev["ts"] - start), "args": args}, track)

    def _llm(self, ev: dict[str, Any], session: str, pid: int | None, comm: str,
             fields: dict[str, Any]) -> None:
        ts: int = ev["ts"]
        latency, ttft = _ns(fields.get("latency")), _ns(fields.get("ttft"))
        model = model_of(fields)
        op = operation_name(fields)
        args: dict[str, Any] = {"provider": ev.get("provider"), "model": model,
                                "peer": fields.get("sni") or fields.get("peer"),
                                "req_bytes": fields.get("req_bytes"),
                                "resp_bytes": fields.get("resp_bytes"),
                                "latency_ms": None if latency is None else latency / 1e6,
                                "ttft_ms": None if ttft is None else ttft / 1e6}
        used = usage(ev.get("provider"), fields)
        if used is not None:
            args["tokens"] = used.counts()
            usd = cost_usd(ev.get("provider"), model, used, ts)
            args["cost_usd"] = None if usd is None else float(usd)
        end = ts + (latency or 0)
        lanes = self.lanes.setdefault((session, pid), [])
        lane = next((i for i, last in enumerate(lanes) if last <= ts), len(lanes))
        lanes[lane:lane + 1] = [end]
        track = self._track(ev, session, pid, comm, f"llm{lane}")
        self._emit(ts, {"name": f"{op} {model}" if model else op, "cat": "llm", "ph": "X",
                        "dur": _us(end - ts), "args": args}, track)
        if ttft is not None:
            self._emit(ts, {"name": "TTFT", "cat": "llm", "ph": "X",
                            "dur": _us(min(ttft, end - ts)), "args": {"ttft_ms": ttft / 1e6}},
                       track)

    # -- tracks and events ---------------------------------------------------------------
    def _track(self, ev: dict[str, Any], session: str, pid: int | None, comm: str, what: str
               ) -> _Track:
        spid = self.sessions.get(session)
        if spid is None:
            spid = self.sessions[session] = len(self.sessions) + 1
            agent = (ev.get("identity") or {}).get("agent") if session != NOBODY else None
            name = NOBODY if session == NOBODY else f"agent {agent or '?'} session {session}"
            self.meta += [_meta("process_name", spid, 0, name),
                          _meta("process_sort_index", spid, 0, spid, key="sort_index")]
        key = (session, pid, what)
        track = self.tracks.get(key)
        if track is None:
            tid = len(self.tracks) + 1
            track = self.tracks[key] = _Track(spid, tid)
            lane = int(what[3:]) if what.startswith("llm") else 0
            label = f"{comm} [{pid}]" if what == "proc" else f"LLM calls [{pid}]" + (
                f" lane {lane + 1}" if lane else "")
            self.meta += [_meta("thread_name", spid, tid, label),
                          _meta("thread_sort_index", spid, tid, tid, key="sort_index")]
        return track

    def _slice(self, session: str, pid: int, ex: _Exec, end: int, extra: dict[str, Any]
               ) -> None:
        track = self.tracks[(session, pid, "proc")]
        self._emit(ex.ts, {"name": ex.comm, "cat": "process", "ph": "X",
                           "dur": _us(end - ex.ts), "args": {**ex.args, **extra}}, track)

    def _emit(self, ts: int, event: dict[str, Any], track: _Track) -> None:
        if len(self.events) >= self.max_events:
            self.dropped["trace_events"] += 1
            return
        event.update(ts=ts, pid=track.pid, tid=track.tid)
        self.events.append(event)

    # -- output --------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The trace as one JSON object; processes still running end at the last event."""
        for (session, pid), ex in list(self.execs.items()):
            self._slice(session, pid, ex, max(ex.ts, self.last_ts), {"no_exit_seen": True})
        self.execs.clear()
        base = min((e["ts"] for e in self.events), default=0)
        out = []
        for e in sorted(self.events, key=lambda e: (e["ts"], -e.get("dur", 0))):
            out.append({**e, "ts": _us(e["ts"] - base)})
        return {"traceEvents": self.meta + out, "displayTimeUnit": "ms",
                "otherData": {"producer": "obs-merge --trace", "start_ns": base,
                              "price_catalogue": CATALOGUE, "dropped": dict(self.dropped)}}


def _meta(name: str, pid: int, tid: int, value: Any, key: str = "name") -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {key: value}}


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _ns(d: Any) -> int | None:
    try:
        return max(0, duration_ns(d))
    except (KeyError, TypeError, ValueError):
        return None


def _host_port(fields: dict[str, Any]) -> str:
    host = str(fields.get("hostname") or fields.get("sni") or fields.get("peer"))
    return f"[{host}]:{fields.get('port')}" if ":" in host else f"{host}:{fields.get('port')}"


_INSTANTS = {
    "FileAccess": lambda f: f"write {os.path.basename(str(f.get('path')))}"
    if f.get("write", True) else None,
    "FileDelete": lambda f: f"delete {os.path.basename(str(f.get('path')))}",
    "Egress": lambda f: f"connect {_host_port(f)}",
    "Dns": lambda f: f"dns {f.get('query')}",
    "Denied": lambda f: f"DENIED {f.get('action')} {f.get('target')}",
    "SecurityAction": lambda f: f"{f.get('kind')} {f.get('detail')}",
}
