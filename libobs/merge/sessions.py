"""The process tree and agent sessions, rebuilt from the event stream.

A process is an *agent root* once it makes an LLM call (an LlmCall or LlmApi event, or Egress
to a classified provider) or matches an `--agent` selector (comm:NAME, pid:N,
cgroup:SUBSTRING). Every event of a process gets the session of its nearest agent ancestor,
itself included, so the `git clone` an agent runs carries the agent's session:
`<root pid>@<root start>`, or the pod UID when the root's events carry one. The start part is,
in order of preference: the start the producers already used in an `identity.session` of the
form `<root pid>@<start>`, the start time in clock ticks from /proc, the root's first ToolExec
ts (ns), and as a last resort the ts of its first event seen.

Two phases keep attribution right under reordering: `observe()` runs when an event *arrives*
(tree facts, agent evidence) and `attribute()` when it *leaves* the reorder window. So an
agent's earlier events still in the window (its own ToolExec, the tools it started before its
first LLM call) are re-attributed once the evidence arrives. The limit: events that already
left the window before the evidence arrived (more than about one window earlier) keep the
identity their producer gave them.

The tree comes from ToolExec/ProcessExit (ppid, comm, exec and exit times), `process.ppid` of
other events, and /proc for live events of this host (processes started before obs-exec).
Children hold a reference to their parent, so attribution survives the parent's exit and
eviction. Memory stays bounded over days: an exited process leaves the pid index once its last
event can no longer arrive (exit ts + window + grace behind the released stream), a process
never seen to exit once idle for a day of event time.
"""

from __future__ import annotations

import functools
import heapq
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from libobs.cgroup import best_path, read_proc_cgroup
from libobs.events import NS
from libobs.identity import read_stat
from libobs.providers import classify

EXIT_SLACK_NS = 10_000_000  # tools convert clocks separately: tolerate small skew at exit
IDLE_NS = 24 * 3600 * NS
LIVE_NS = 60 * NS  # an event this recent, from this host, may be completed from /proc
MAX_DEPTH = 512
_COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel truncates comm to this
_EVIDENCE_KINDS = frozenset({"LlmCall", "LlmApi", "Egress"})  # see Sessions._evidence


@dataclass(frozen=True)
class ProcInfo:
    """What /proc says about a live process."""

    pid: int
    ppid: int
    comm: str
    start_ticks: int  # field 22 of /proc/PID/stat: clock ticks after boot
    start_ns: int  # the same as wall-clock ns
    cgroup: str


@dataclass(eq=False)
class Proc:
    pid: int
    born: int  # earliest ToolExec ts, /proc start, or the earliest event seen (ns)
    ppid: int | None = None
    comm: str | None = None
    execs: list[tuple[int, str]] = field(default_factory=list)  # (ts, comm) of each exec
    proc_start: str | None = None  # start ticks from /proc
    exit_ts: int | None = None
    last_ts: int = 0
    parent: Proc | None = None
    agent: str | None = None  # the evidence that made it an agent root
    hint: str | None = None  # start part of a producer's "<pid>@<start>" session
    pod_uid: str | None = None
    pod_name: str | None = None
    container_id: str | None = None
    cgroup: str | None = None
    session: str | None = None  # frozen on first use, so one run keeps one key
    walked: bool = False  # its ancestors were looked up in /proc
    learned: dict[str, Any] | None = None  # the last `process` object learned from

    def comm_at(self, ts: int) -> str | None:
        """The comm the process had at `ts` (it changes on exec)."""
        name = self.execs[0][1] if self.execs else self.comm
        for when, comm in self.execs:
            if when > ts:
                break
            name = comm
        return name

    def alive_at(self, ts: int) -> bool:
        return self.exit_ts is None or ts <= self.exit_ts + EXIT_SLACK_NS


@dataclass(frozen=True)
class Selector:
    kind: str  # comm | pid | cgroup
    value: str

    def matches(self, proc: Proc) -> bool:
        if self.kind == "pid":
            return str(proc.pid) == self.value
        if self.kind == "comm":
            return proc.comm == self.value or any(c == self.value for _, c in proc.execs)
        return proc.cgroup is not None and self.value in proc.cgroup


def parse_selector(text: str) -> Selector:
    """`comm:NAME`, `pid:N` or `cgroup:SUBSTRING`; ValueError with a one-line reason."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("comm", "pid", "cgroup") or not value:
        raise ValueError(f"{text!r} is not comm:NAME, pid:N or cgroup:SUBSTRING")
    if kind == "pid" and not (value.isascii() and value.isdigit() and int(value) > 0):
        raise ValueError(f"{text!r}: pid must be a positive integer")
    if kind == "pid":
        value = str(int(value))
    if kind == "comm":
        value = value[:_COMM_LEN]  # match what the kernel reports
    return Selector(kind, value)


def event_pid(ev: dict[str, Any], fields: dict[str, Any]) -> int | None:
    pid = fields.get("pid")
    if type(pid) is not int:
        proc = ev.get("process")
        pid = proc.get("pid") if isinstance(proc, dict) else None
    return pid if type(pid) is int and pid > 0 else None


def egress_provider(ev: dict[str, Any], fields: dict[str, Any]) -> str | None:
    provider = ev.get("provider")
    if isinstance(provider, str) and provider:
        return provider
    return cached_classify(fields.get("sni")) or cached_classify(fields.get("hostname"))


@functools.lru_cache(maxsize=4096)
def cached_classify(host: str | None) -> str | None:
    """providers.classify, remembered: the same few hosts come up all the time."""
    return classify(host)


class Sessions:
    def __init__(
        self,
        selectors: Iterable[Selector] = (),
        *,
        window_ns: int = 2 * NS,
        grace_ns: int = 5 * NS,
        idle_ns: int = IDLE_NS,
        proc: Callable[[int], ProcInfo | None] | None = None,
        local_host: str | None = None,
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.selectors = tuple(selectors)
        self.horizon_ns = window_ns + grace_ns
        self.idle_ns = idle_ns
        self.proc = proc
        self.local_host = local_host
        self.wall = wall
        self.by_pid: dict[int, list[Proc]] = {}
        self._exits: list[tuple[int, int, Proc]] = []
        self._seq = 0
        self._next_sweep = 0
        self.evicted = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_pid.values())

    # -- arrival --------------------------------------------------------------------------
    def observe(self, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> None:
        """Learn tree facts and agent evidence from an event as it arrives."""
        pid = fields.get("pid")
        if type(pid) is not int or pid <= 0:  # event_pid(), its common case inlined
            pid = event_pid(ev, fields)
        if pid is None or kind == "CollectorHeartbeat":
            return
        ts: int = ev["ts"]
        live = self.proc is not None and self._live(ev, ts)
        if kind == "ToolExec":
            node = self._exec(pid, ts, fields)
        else:
            node = self._find(pid, ts) or self._add(pid, ts, live)
            if ts < node.born and not node.execs and node.proc_start is None:
                node.born = ts  # an implicit node starts at the earliest event seen
        if ts > node.last_ts:
            node.last_ts = ts
        self._learn(node, ev, kind, fields, ts)
        if live and node.parent is None and not node.walked:
            node.walked = True  # once: a parent gone from /proc stays gone
            self._complete_from_proc(node)
        if node.agent is None and (kind in _EVIDENCE_KINDS or self.selectors):
            node.agent = self._evidence(ev, kind, fields, node)

    def _learn(self, node: Proc, ev: dict[str, Any], kind: str, fields: dict[str, Any],
               ts: int) -> None:
        process = ev.get("process")
        if not isinstance(process, dict):
            process = {}
        if node.ppid is None:  # (looked up only while unknown: this runs for every event)
            ppid = fields.get("ppid")
            if type(ppid) is not int:
                ppid = process.get("ppid")
            if type(ppid) is int and ppid >= 0:
                node.ppid = ppid
        if node.comm is None:
            comm = (fields.get("comm") if kind in ("ToolExec", "ProcessExit")
                    else process.get("comm"))
            if isinstance(comm, str):
                node.comm = comm
        if kind == "ProcessExit" and (node.exit_ts is None or ts > node.exit_ts):
            node.exit_ts = ts
            self._seq += 1
            heapq.heappush(self._exits, (ts, self._seq, node))
        if process != node.learned:  # a process's events mostly repeat one `process` object
            node.learned = process
            for key in ("pod_uid", "container_id"):
                if getattr(node, key) is None and isinstance(process.get(key), str):
                    setattr(node, key, process[key])
            if node.cgroup is None and isinstance(process.get("cgroup"), str):
                node.cgroup = process["cgroup"]
        ident = ev.get("identity")
        if isinstance(ident, dict):
            if node.pod_uid and node.pod_name is None and isinstance(ident.get("agent"), str):
                node.pod_name = ident["agent"]
            session = ident.get("session")
            if session is not None:  # mostly null: no call for it
                self._hint(session, ts)

    def _hint(self, session: object, ts: int) -> None:
        """Remember the start part of a producer's `<pid>@<start>` session for that pid."""
        if not isinstance(session, str):
            return
        pid, sep, start = session.partition("@")
        # (A pid has at most 10 digits; int() of thousands of digits raises.)
        if sep and start and pid.isascii() and pid.isdigit() and len(pid) <= 10:
            owner = self._find(int(pid), ts)
            if owner is not None and owner.hint is None:
                owner.hint = start

    def _evidence(self, ev: dict[str, Any], kind: str, fields: dict[str, Any],
                  node: Proc) -> str | None:
        """Why `node` is an agent root (None: no evidence); only events of _EVIDENCE_KINDS
        and the selectors can say so."""
        if kind in ("LlmCall", "LlmApi"):
            return kind
        if kind == "Egress" and egress_provider(ev, fields):
            return "Egress"
        for sel in self.selectors:
            if sel.matches(node):
                return f"{sel.kind}:{sel.value}"
        return None

    def _exec(self, pid: int, ts: int, fields: dict[str, Any]) -> Proc:
        # Another exec of a live process (sh -c "exec git") is the same process: keep its start.
        node = self._find(pid, ts)
        if node is None:
            # Events of the new process may have arrived before its ToolExec: adopt that node.
            node = next((n for n in self.by_pid.get(pid, ()) if not n.execs and n.born >= ts
                         and n.proc_start is None), None) or self._add(pid, ts, live=False)
        comm = fields.get("comm")
        if isinstance(comm, str):
            node.execs.append((ts, comm))
            node.execs.sort()
            del node.execs[1:-7]  # the first and the latest few are what comm_at needs
        if ts < node.born:
            node.born = ts
            self.by_pid[pid].sort(key=lambda n: n.born)
        return node

    def _find(self, pid: int, ts: int) -> Proc | None:
        """The process `pid` named at `ts` (pids are reused: choose by time)."""
        nodes = self.by_pid.get(pid)
        if not nodes:
            return None
        for node in reversed(nodes):
            if node.born <= ts:  # alive_at(), inlined: this runs twice per event
                exit_ts = node.exit_ts
                return node if exit_ts is None or ts <= exit_ts + EXIT_SLACK_NS else None
        return nodes[0]  # before every known start: pre-exec activity of the first one

    def _add(self, pid: int, ts: int, live: bool) -> Proc:
        info = self.proc(pid) if live and self.proc is not None else None
        node = Proc(pid, ts, last_ts=ts)
        if info is not None and info.start_ns <= ts + NS:
            node.born = min(ts, info.start_ns)
            node.ppid, node.comm, node.cgroup = info.ppid, info.comm, info.cgroup
            node.proc_start = str(info.start_ticks)
        nodes = self.by_pid.setdefault(pid, [])
        nodes.append(node)
        nodes.sort(key=lambda n: n.born)
        for sel in self.selectors:
            if node.agent is None and sel.matches(node):
                node.agent = f"{sel.kind}:{sel.value}"
        return node

    def _complete_from_proc(self, node: Proc) -> None:
        """Walk up through /proc while ancestors are unknown (they predate obs-exec)."""
        depth = 0
        while node.ppid and node.parent is None and depth < MAX_DEPTH:
            parent = self._find(node.ppid, node.born)
            if parent is None:
                parent = self._add(node.ppid, node.born, live=True)
                if parent.proc_start is None:  # /proc did not know it (already gone)
                    self._drop(parent)
                    return
            if parent is node:
                return
            node.parent = parent
            node, depth = parent, depth + 1

    def _live(self, ev: dict[str, Any], ts: int) -> bool:
        return (self.proc is not None and ev.get("host") == self.local_host
                and ts >= self.wall() - LIVE_NS)

    # -- departure ------------------------------------------------------------------------
    def attribute(self, ev: dict[str, Any], kind: str, fields: dict[str, Any]) -> Proc | None:
        """Set identity.session/agent from the nearest agent ancestor; returns that root."""
        pid = fields.get("pid")
        if type(pid) is not int or pid <= 0:  # event_pid(), its common case inlined
            pid = event_pid(ev, fields)
        if pid is None or kind == "CollectorHeartbeat":
            return None
        ts: int = ev["ts"]
        root = self.root_of(pid, ts)
        if root is None:
            return None
        ident = ev.get("identity")
        if not isinstance(ident, dict):
            ident = ev["identity"] = {"agent": None, "task": None, "session": None}
        ident["session"] = root.session or self.session_of(root)  # set once, then kept
        ident["agent"] = (root.pod_name or root.container_id or root.comm_at(ts)
                          or ident.get("agent"))
        if ident.get("task") is None:
            ident["task"] = str(pid)
        return root

    def root_of(self, pid: int, ts: int) -> Proc | None:
        node = self._find(pid, ts)
        depth = 0
        while node is not None and depth < MAX_DEPTH:
            if node.agent is not None:
                return node
            node, depth = node.parent or self._parent(node), depth + 1
        return None

    def _parent(self, node: Proc) -> Proc | None:
        if node.parent is None and node.ppid and node.ppid != node.pid:
            parent = self._find(node.ppid, node.born)
            if parent is not node:
                node.parent = parent  # only found parents are cached: a late ToolExec may come
        return node.parent

    def session_of(self, root: Proc) -> str:
        if root.session is None:
            if root.pod_uid:
                root.session = root.pod_uid
            else:
                start = root.hint or root.proc_start or str(root.born)
                root.session = f"{root.pid}@{start}"
        return root.session

    # -- eviction -------------------------------------------------------------------------
    def evict(self, released_ts: int) -> None:
        """Forget processes whose last event can no longer arrive (stream time `released_ts`)."""
        exits = self._exits
        while exits and exits[0][0] + self.horizon_ns < released_ts:
            exit_ts, _, node = heapq.heappop(exits)
            if node.exit_ts == exit_ts:
                self._drop(node)
        if released_ts >= self._next_sweep:
            self._next_sweep = released_ts + 3600 * NS
            idle = [n for ns in self.by_pid.values() for n in ns
                    if n.exit_ts is None and n.last_ts + self.idle_ns < released_ts]
            for node in idle:
                self._drop(node)

    def _drop(self, node: Proc) -> None:
        nodes = self.by_pid.get(node.pid)
        if nodes and node in nodes:
            nodes.remove(node)
            self.evicted += 1
            if not nodes:
                del self.by_pid[node.pid]


def read_proc(pid: int, root: str = "/proc") -> ProcInfo | None:
    """ppid, comm, start and cgroup of a live process, or None when it is gone or unreadable."""
    st = read_stat(pid, root)
    if st is None:
        return None
    comm, ppid, _pgid, ticks = st
    text = read_proc_cgroup(pid, root)
    if text is None:
        return None
    path = best_path(text)
    start_ns = _boot_ns(root) + ticks * NS // _clock_ticks()
    return ProcInfo(pid, ppid, comm, ticks, start_ns, path)


_BOOT: dict[str, int] = {}


def _boot_ns(root: str) -> int:
    if root not in _BOOT:
        btime = 0
        try:
            with open(f"{root}/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        btime = int(line.split()[1])
        except (OSError, ValueError):
            pass
        _BOOT[root] = btime * NS
    return _BOOT[root]


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (OSError, ValueError):
        return 100
