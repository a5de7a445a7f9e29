"""Follow the transcripts a watched agent process has open, for obs-llm --api.

How obs learns of a transcript: from the agent process itself — its open descriptors under
/proc/<pid>/fd, looked at while it has a connection to a provider open (JoinedDecoder) and when
one of its LlmCalls waits for usage. Nothing else is searched. A descriptor whose target looks
like a transcript (transcript.py's two layouts) is re-opened read-only through /proc (so the
path is right whatever the agent's mount namespace, and the file can still be read after the
agent exits) and followed from near its end: at most BACKLOG bytes back, then only what is
appended. Memory and work are bounded: MAX_FILES followed at once (least recently grown
dropped), 4 reads of MAX_READ bytes per poll of a process, lines over MAX_LINE skipped
(counted), facts kept per pid at most MAX_FACTS.
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from libobs.net.transcript import CLAUDE, CODEX, Bad, Usage, new_state, parse_line

BACKLOG = 256 * 1024
MAX_READ = 1 << 20
MAX_LINE = 256 * 1024
MAX_FILES = 256
MAX_FACTS = 1024
_PATTERNS = ((CODEX, re.compile(r"/sessions/\d{4}/\d{2}/\d{2}/rollout-[^/]*\.jsonl$")),
             (CLAUDE, re.compile(r"/projects/[^/]+/[0-9a-fA-F-]{36}\.jsonl$")))


def transcript_kind(target: str) -> str | None:
    """Which transcript format a descriptor's target (readlink of /proc/<pid>/fd/<n>) is."""
    if target.endswith(" (deleted)"):
        return None
    for kind, pat in _PATTERNS:
        if pat.search(target):
            return kind
    return None


def open_transcripts(pid: int, proc: str = "/proc") -> Iterable[tuple[str, str, int, int]]:
    """(kind, target, inode, fd we opened) for each transcript `pid` has open. The caller owns
    the fds. A process gone or not ours to read yields nothing."""
    base = f"{proc}/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return
    for name in fds:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        kind = transcript_kind(target)
        if kind is None:
            continue
        try:  # O_NONBLOCK: a FIFO named like a transcript must not hang the collector
            fd = os.open(f"{base}/{name}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            continue
        yield kind, target, st.st_ino, fd


@dataclass
class Tail:
    """New complete lines of one file, from `offset` on; bounded (see module doc)."""
    fd: int
    kind: str
    offset: int
    partial: bytes = b""
    skipping: bool = False   # inside a line longer than MAX_LINE (or the backlog's first)
    state: Any = None
    grown_ns: int = 0        # when it last gave bytes (monotonic ns)
    more: bool = False       # the last read stopped at MAX_READ

    @classmethod
    def at_end(cls, fd: int, kind: str) -> Tail:
        size = os.fstat(fd).st_size
        start = max(0, size - BACKLOG)
        return cls(fd, kind, start, skipping=start > 0, state=new_state(kind))

    def lines(self, counts: dict[str, int]) -> list[bytes]:
        try:
            size = os.fstat(self.fd).st_size
            if size < self.offset:  # truncated or rewritten: start over at its end
                counts["truncated"] = counts.get("truncated", 0) + 1
                self.offset, self.partial, self.skipping, self.more = size, b"", False, False
                return []
            data = os.pread(self.fd, min(MAX_READ, size - self.offset), self.offset)
        except OSError:
            counts["read_errors"] = counts.get("read_errors", 0) + 1
            self.more = False
            return []
        self.offset += len(data)
        self.more = len(data) == MAX_READ
        out = []
        *whole, rest = data.split(b"\n")
        for piece in whole:
            if self.skipping:
                self.skipping, self.partial = False, b""
                continue
            line, self.partial = self.partial + piece, b""
            out.append(line)
        if self.skipping:
            return out
        self.partial += rest
        if len(self.partial) > MAX_LINE:
            counts["long_lines"] = counts.get("long_lines", 0) + 1
            self.partial, self.skipping = b"", True
        return out


@dataclass(frozen=True)
class TranscriptFact:
    pid: int
    ts: int                  # wall ns the agent stamped on the line
    fields: dict[str, Any]


@dataclass
class Transcripts:
    """Per agent pid, the usage lines appended to the transcripts it has open."""
    say: Callable[[str], None] = lambda msg: None
    proc: str = "/proc"
    rescan_ns: int = 1_000_000_000
    tails: OrderedDict[tuple[int, int], Tail] = field(default_factory=OrderedDict)  # (pid, ino)
    facts: dict[int, list[TranscriptFact]] = field(default_factory=dict)
    scanned: dict[int, int] = field(default_factory=dict)  # pid -> last scan (monotonic ns)
    counts: dict[str, int] = field(default_factory=dict)

    def has(self, pid: int) -> bool:
        return any(p == pid for p, _ in self.tails)

    def watch(self, pid: int, now_ns: int) -> None:
        """Look at pid's open files (at most once per rescan_ns) for transcripts not followed."""
        last = self.scanned.get(pid)
        if last is not None and now_ns - last < self.rescan_ns:
            return
        self.scanned[pid] = now_ns
        if len(self.scanned) > 4 * MAX_FILES:
            for old in list(self.scanned)[:MAX_FILES]:
                del self.scanned[old]
        for kind, target, ino, fd in open_transcripts(pid, self.proc):
            if (pid, ino) in self.tails:
                os.close(fd)
                continue
            self.tails[(pid, ino)] = Tail.at_end(fd, kind)
            self.tails[(pid, ino)].grown_ns = now_ns
            self._bump("files")
            if self.counts["files"] == 1:
                self.say(f"reading model and token usage of pid {pid} from its {kind} "
                         f"transcript {target} (usage_source \"transcript\")")
            while len(self.tails) > MAX_FILES:
                _, old_tail = self.tails.popitem(last=False)
                os.close(old_tail.fd)
                self._bump("files_dropped")

    def poll(self, pid: int, now_ns: int) -> None:
        """Read what pid's transcripts gained since the last poll into facts."""
        for (p, ino), tail in list(self.tails.items()):
            if p != pid:
                continue
            for _ in range(4):  # at most 4 MiB per poll; the rest next time
                lines = tail.lines(self.counts)
                if lines:
                    tail.grown_ns = now_ns
                    self.tails.move_to_end((p, ino))
                for line in lines:
                    got = parse_line(tail.kind, line, tail.state)
                    if isinstance(got, Bad):
                        self._bump("bad_lines")
                    elif isinstance(got, Usage):
                        self._bump("usage_lines")
                        self.add(TranscriptFact(pid, got.ts, got.fields))
                if not tail.more:
                    break

    def add(self, fact: TranscriptFact) -> None:
        got = self.facts.setdefault(fact.pid, [])
        got.append(fact)
        if len(got) > MAX_FACTS:
            del got[0]
            self._bump("facts_dropped")

    def take(self, pid: int, start: int, end: int, before: int | None) -> TranscriptFact | None:
        """The earliest fact of pid stamped in [start, end] and before `before` (the next
        call of pid started then), removed."""
        best = None
        for f in self.facts.get(pid, ()):
            if start <= f.ts <= end and (before is None or f.ts < before) and \
                    (best is None or f.ts < best.ts):
                best = f
        if best is not None:
            self.facts[pid].remove(best)
        return best

    def expire(self, before_ns: int) -> None:
        for pid in list(self.facts):
            kept = [f for f in self.facts[pid] if f.ts >= before_ns]
            if len(kept) < len(self.facts[pid]):
                self.counts["unclaimed"] = self.counts.get("unclaimed", 0) + \
                    len(self.facts[pid]) - len(kept)
            if kept:
                self.facts[pid] = kept
            else:
                del self.facts[pid]

    def forget_gone(self, now_ns: int, idle_ns: int) -> None:
        """Stop following the transcripts of processes that have exited and whose files have
        not grown for idle_ns (their last lines have been read by then)."""
        for (pid, ino), tail in list(self.tails.items()):
            if now_ns - tail.grown_ns > idle_ns and not os.path.exists(f"{self.proc}/{pid}"):
                os.close(tail.fd)
                del self.tails[(pid, ino)]

    def close(self) -> None:
        for tail in self.tails.values():
            os.close(tail.fd)
        self.tails.clear()

    def _bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
