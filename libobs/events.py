"""The event envelope and constructors from the contract (docs/events.md).

Kernel timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns); the envelope's `ts` is wall-clock.
The offset between the two clocks is measured once at start-up (Clock), never re-read per event,
so events keep the kernel's ordering and spacing exactly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NS = 1_000_000_000

KINDS = (
    "ToolExec", "ProcessExit", "SecurityAction", "FileAccess", "FileDelete", "Egress", "Dns",
    "LlmCall", "SslContent", "LlmApi", "Denied", "CollectorHeartbeat",
)


def duration(ns: int) -> dict[str, int]:
    """A contract duration: {"secs", "nanos"}; negative inputs clamp to zero."""
    ns = max(0, int(ns))
    return {"secs": ns // NS, "nanos": ns % NS}


def duration_ns(d: dict[str, int]) -> int:
    return int(d["secs"]) * NS + int(d["nanos"])


@dataclass(frozen=True)
class Clock:
    """Monotonic → wall-clock conversion, fixed at construction."""

    offset_ns: int

    @classmethod
    def now(cls) -> Clock:
        # Take the tightest of a few samples so the offset error is well under a microsecond.
        best: tuple[int, int] | None = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            w = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, w - (m0 + m1) // 2)
        assert best is not None
        return cls(best[1])

    def wall(self, mono_ns: int) -> int:
        return int(mono_ns) + self.offset_ns


def null_identity() -> dict[str, str | None]:
    return {"agent": None, "task": None, "session": None}


def envelope(
    kind: str,
    fields: dict[str, Any],
    *,
    ts: int,
    host: str,
    identity: dict[str, str | None] | None = None,
    process: dict[str, Any] | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """One contract event: exactly one key under `event`."""
    out: dict[str, Any] = {
        "ts": ts,
        "host": host,
        "identity": identity if identity is not None else null_identity(),
        "provider": provider,
    }
    if process is not None:
        out["process"] = process
    out["event"] = {kind: fields}
    return out


def event_kind(ev: dict[str, Any]) -> str | None:
    """The single key under `event`, or None when the object is not a contract event."""
    inner = ev.get("event")
    if isinstance(inner, dict) and len(inner) == 1:
        return next(iter(inner))
    return None


NODE_ENV = "OBS_NODE_NAME"          # e.g. a DaemonSet's spec.nodeName (downward API)
COLLECTOR_ENV = "OBS_COLLECTOR_ID"  # a stable collector identity pinned by the deployment


def env_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why OBS_NODE_NAME or OBS_COLLECTOR_ID cannot be used as given, or None. They land in
    every event: one printable word of at most 253 characters (a DNS name's limit). Empty is
    unset, as for every OBS_* variable."""
    for var in (NODE_ENV, COLLECTOR_ENV):
        value = environ.get(var)
        if not value:
            continue
        if len(value) > 253 or not value.isprintable() or value.split() != [value]:
            return f"{var} must be one printable word of 1-253 characters, not {value[:64]!r}"
    return None


def hostname(environ: Mapping[str, str] = os.environ) -> str:
    """The envelope's ``host``: OBS_NODE_NAME when set (inside a pod the hostname is the pod's
    name, not the node's), else this host's name."""
    return environ.get(NODE_ENV) or socket.gethostname()


def text(raw: bytes) -> str:
    """Kernel/wire bytes → str; never fails, never yields invalid JSON."""
    return raw.decode("utf-8", errors="replace")

