"""Which TLS stack each file holds, kept between runs: judging reads the symbol tables of every
executable mapping on the host (node's alone is ~100 MB) — about a second of each obs-ssl start.

A judgement decides where uprobes go, so it lives in the root-only start-up cache
(libobs/kernel/cache.py). It is found again only for the same file, as the kernel names it
(device, inode) with the same size, modification and change times, judged by the same code
(the hash of libobs/tls/*.py) with the same options: anything else is judged afresh. One entry
holds the judgements of the last run, so files gone from the host leave it.

A second entry names the programs obs met only after a start (when they exec'd, or on a
rescan): the next start attaches to them at once, so a program run again (an agent) is read
from its first request, not from when obs noticed its exec. A path is used only while it is
the same file; the few most recently met are kept.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from libobs.kernel import cache
from libobs.tls.points import ProbePoint
from libobs.tls.stacks import Judgement

KIND = "tls"
PROGRAMS = "tls-programs"  # the programs' entry: a kind of its own, never pruned with KIND's
PROGRAMS_KEPT = 4  # each attached program takes one of bpf/ssl.bpf.c's 16 library slots


@functools.cache
def code_digest() -> str:
    """The judging code: any change to it is a new entry."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def file_id(path: str | os.PathLike[str]) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def to_json(j: Judgement) -> dict[str, Any]:
    return {"stack": j.stack, "problem": j.problem,
            "points": [[p.fn, p.addr, p.label, list(p.covers), list(p.returns), p.uretprobe]
                       for p in j.points]}


def from_json(v: Any) -> Judgement:
    """A stored judgement, or ValueError for anything `to_json` did not write."""
    try:
        stack, problem = v["stack"], v["problem"]
        points = tuple(ProbePoint(str(fn), int(addr), str(label), tuple(map(str, covers)),
                                  tuple(map(int, returns)), bool(uret))
                       for fn, addr, label, covers, returns, uret in v["points"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad judgement: {e!r}") from None
    if not (stack is None or isinstance(stack, str)) or not (
            problem is None or isinstance(problem, str)):
        raise ValueError("bad judgement: stack and problem are strings or null")
    return Judgement(stack, points, problem)


class Memo:
    """Judgements of files, from the last run's entry when the file is the same."""

    def __init__(self, judge: Callable[[str, bool], Judgement]):
        self._judge = judge
        self._old: dict[str, Any] | None = None
        self._new: dict[str, Any] = {}
        self._saved: dict[str, Any] | None = None  # what the last save() stored
        self._key: str | None = None
        self.hits = 0

    def _load(self, exported_only: bool) -> dict[str, Any]:
        if self._old is None:
            self._key = cache.key("tls-judgements", code_digest(), exported_only)
            old = cache.load_json(KIND, self._key)
            self._old = old if isinstance(old, dict) else {}
        return self._old

    def judge(self, path: str, exported_only: bool) -> Judgement:
        ident = file_id(path)
        old = self._load(exported_only)
        if ident is not None and ident in old:
            try:
                found = from_json(old[ident])
            except ValueError as e:
                cache.warn(f"ignoring a bad TLS library judgement in the start-up cache: {e}")
            else:
                self.hits += 1
                self._new[ident] = old[ident]
                return found
        found = self._judge(path, exported_only)
        if ident is not None and ident == file_id(path):  # not changed while being judged
            self._new[ident] = to_json(found)
        return found

    def save(self) -> None:
        """Keep this run's judgements (when any was new or any old one is gone, and they
        changed since the last save: a late attach saves them again)."""
        if self._key is not None and self._new != (
                self._old if self._saved is None else self._saved):
            cache.store_json(KIND, self._key, self._new)
            self._saved = dict(self._new)


def _programs() -> list[list[str]]:
    """[path, file_id] pairs of the last runs, still the same files, newest first."""
    kept = cache.load_json(PROGRAMS, PROGRAMS)
    if not isinstance(kept, list):
        return []
    return [item for item in kept
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
            and file_id(item[0]) == item[1]][:PROGRAMS_KEPT]


def remembered() -> list[str]:
    """Programs met after earlier starts, to attach to at this one."""
    return [path for path, _ in _programs()]


def remember(path: str) -> None:
    """Note a program met after the start (a path through /proc/<pid>/root names a container's
    file only while that process lives: not kept)."""
    ident = file_id(path)
    if ident is None or path.startswith("/proc/"):
        return
    old = _programs()
    if [path, ident] in old[:1]:
        return
    kept = [[path, ident], *(item for item in old if item[0] != path)][:PROGRAMS_KEPT]
    cache.store_json(PROGRAMS, PROGRAMS, kept)
