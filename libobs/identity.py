"""Who acted: process facts, container / pod identity, and session keys.

Short-lived processes vanish from /proc before user space can look, so the kernel header of
every record carries pid, ppid, comm, uid, cgroup id, process group and start time. The cgroup
*path* behind a cgroup id, from which container id and pod UID are parsed, is read from the
cgroup-v2 filesystem (libobs/cgroup.py: it outlives the process); /proc/<pid>/cgroup is only the
fallback when the id is not on a mounted v2 hierarchy.

Default session: `<pgid>@<start>` — the process group is what shells make per command line and
what an agent's subprocesses inherit, so an agent and the tools it runs share one value without
any configuration. obs-merge refines this with the full process tree and LLM-calling roots.
`<start>` is the group leader's start time in clock ticks since boot, as in /proc/<pid>/stat, so
every tool (kernel or /proc based) computes the same key. On Kubernetes the pod UID is the
session, and the agent is the pod.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any

from libobs import cgroup
from libobs.kernel import host
from libobs.kernel.records import Hdr, comm

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NS_PER_TICK = 1_000_000_000 // CLK_TCK

# 64-hex container ids as the runtimes write them into cgroup paths:
#   docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope,
#   /docker/<id>, /kubepods/.../<id>, containerd's /k8s.io/<id>
_CONTAINER = re.compile(r"(?:^|[/-])(?:docker-|cri-containerd-|crio-|libpod-|containerd-)?"
                        r"([0-9a-f]{64})(?:\.scope)?(?:/|$)")
# pod UIDs: /kubepods/burstable/pod<uid>/ (cgroupfs, dashes) or
#           kubepods-burstable-pod<uid_with_underscores>.slice (systemd driver)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def container_id(cgroup_path: str) -> str | None:
    ids = [m.group(1) for m in _CONTAINER.finditer(cgroup_path)]
    return ids[-1] if ids else None  # the innermost (last) match is the container itself


def pod_uid(cgroup_path: str) -> str | None:
    m = _POD.search(cgroup_path)
    return m.group(1).replace("_", "-") if m else None


def parse_stat(data: bytes) -> tuple[str, int, int, int] | None:
    """(comm, ppid, pgid, start ticks) from /proc/<pid>/stat, or None. The comm may itself
    contain ") ", so fields are counted from the last ")"."""
    try:
        left, right = data.index(b"("), data.rindex(b")")
        fields = data[right + 2:].split()
        comm = data[left + 1:right].decode("utf-8", "replace")
        return comm, int(fields[1]), int(fields[2]), int(fields[19])
    except (ValueError, IndexError):
        return None


def read_stat(pid: int | str, root: str = "/proc") -> tuple[str, int, int, int] | None:
    """parse_stat of a live process, or None when it is gone."""
    try:
        with open(f"{root}/{pid}/stat", "rb") as f:
            return parse_stat(f.read())
    except OSError:
        return None


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot)."""
    st = read_stat(pid)
    return st[3] if st else None


class Identities:
    """Turns a record header into the envelope's `identity` and `process` objects.
    Caches are bounded LRUs: a long-running collector's memory stays flat."""

    def __init__(self, max_entries: int = 2048, paths: cgroup.CgroupPaths | None = None):
        self.max = max_entries
        self.paths = paths if paths is not None else cgroup.CgroupPaths(host.cgroup2_root())
        self._cgroups: OrderedDict[int, tuple[str | None, str | None]] = OrderedDict()
        self._roots: OrderedDict[int, tuple[int, str]] = OrderedDict()  # pgid -> (ticks, comm)
        self._exited: OrderedDict[int, tuple[int, str]] = OrderedDict()  # leaders seen exit
        self._recent: dict[tuple[Any, ...], tuple[dict[str, str | None], dict[str, Any]]] = {}
        self._recent_groups: set[int] = set()

    def _lru_put(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self.max:
            cache.popitem(last=False)

    def container(self, cgroup_id: int, pid: int) -> tuple[str | None, str | None]:
        """(container_id, pod_uid) for a cgroup id: from the cgroup filesystem, else from
        /proc/<pid>/cgroup while the process lives."""
        hit = self._cgroups.get(cgroup_id)
        if hit is not None:
            return hit
        path = self.paths.path(cgroup_id)
        if path is None:
            text = cgroup.read_proc_cgroup(pid)
            if text is None:
                return None, None  # unknown id, process gone: unknown, and not cached
            path = cgroup.best_path(text)
        value = (container_id(path), pod_uid(path))
        self._lru_put(self._cgroups, cgroup_id, value)
        return value

    def root(self, h: Hdr) -> tuple[int, str] | None:
        """(start ticks, comm) of the record's process-group leader."""
        if h.pgid == 0:
            return None
        if h.pid == h.pgid:
            value = (h.start_bt // _NS_PER_TICK, comm(h))
            self._lru_put(self._roots, h.pgid, value)
            self._exited.pop(h.pgid, None)
            return value
        hit = self._roots.get(h.pgid)
        if hit is not None:
            return hit
        ticks = proc_start_ticks(h.pgid)
        if ticks is None:
            # The leader is gone from /proc. Its pid stays allocated while its group lives, so
            # what the leader's own records told us still names this group.
            return self._exited.get(h.pgid)
        self._exited.pop(h.pgid, None)  # a live leader: the pid was reused
        try:
            with open(f"/proc/{h.pgid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = ""
        value = (ticks, name)
        self._lru_put(self._roots, h.pgid, value)
        return value

    def forget(self, pid: int) -> None:
        """A process-group leader exited: a new process may reuse its pid once the group is
        gone, so its entry only answers while /proc has no live process of that pid."""
        gone = self._roots.pop(pid, None)
        if gone is not None:
            self._lru_put(self._exited, pid, gone)
        if pid in self._recent_groups:  # rare: a group whose members are cached ended
            self._recent.clear()
            self._recent_groups.clear()

    def of(self, h: Hdr) -> tuple[dict[str, str | None], dict[str, Any]]:
        """(identity, process) for a record. The same process yields the same (shared, never
        mutated) objects, so a busy process costs one dict lookup per event."""
        key = (h.pid, h.ppid, h.uid, h.pgid, h.cgroup_id, h.comm)
        hit = self._recent.get(key)
        if hit is not None:
            return hit
        value = self._compute(h)
        if value[0]["session"] is not None:
            if len(self._recent) >= self.max:
                self._recent.clear()
                self._recent_groups.clear()
            self._recent[key] = value
            self._recent_groups.add(h.pgid)
        return value

    def _compute(self, h: Hdr) -> tuple[dict[str, str | None], dict[str, Any]]:
        cid, pod = self.container(h.cgroup_id, h.pid)
        root = self.root(h)
        if pod:
            session: str | None = pod
            agent: str | None = pod
        else:
            session = f"{h.pgid}@{root[0]}" if root else None
            agent = cid or (root[1] if root and root[1] else comm(h))
        identity = {"agent": agent, "task": str(h.pid), "session": session}
        process = {"pid": h.pid, "ppid": h.ppid, "comm": comm(h), "uid": h.uid,
                   "cgroup_id": h.cgroup_id, "container_id": cid, "pod_uid": pod}
        return identity, process
