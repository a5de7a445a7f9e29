"""CollectorHeartbeat events and the liveness file."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libobs import __version__
from libobs.events import COLLECTOR_ENV, envelope, hostname, null_identity
from libobs.tool.sink import dumps


def heartbeat_event(
    *, collector_id: str, tool: str, attached: list[str], features: list[str],
    interval: float, counts: Mapping[str, int], dropped: int, output_dropped: int,
    host: str | None = None, unreadable: list[dict[str, str]] | None = None,
    programs: tuple[int, int] | None = None, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`unreadable`: files whose TLS stack the tool found but cannot read (obs-ssl, obs-llm
    --api), each {path, stack, problem}: counted in `unreadable`, listed in
    `unreadable_files`; `extra`: a tool's own documented fields (obs-llm --api's
    `transcripts`, obs-fileguard's cache). `programs`: (loaded from the start-up cache,
    compiled) of the tool's BPF programs."""
    node = host or hostname()
    fields = {
        "collector_id": collector_id, "tool": tool, "version": __version__, "node_name": node,
        "attached_probes": list(attached), "enabled_features": list(features),
        "interval_secs": interval, "counts": dict(counts), "dropped": int(dropped),
        "output_dropped": int(output_dropped),
    }
    if unreadable is not None:
        fields["unreadable"] = len(unreadable)
        fields["unreadable_files"] = [dict(u) for u in unreadable]
    if programs is not None:
        fields["programs_cached"], fields["programs_compiled"] = map(int, programs)
    fields.update(extra or {})
    return envelope("CollectorHeartbeat", fields, ts=time.time_ns(), host=node,
                    identity=null_identity(), provider=None)


def new_collector_id(tool: str, environ: Mapping[str, str] = os.environ) -> str:
    """OBS_COLLECTOR_ID when the deployment pins one, else unique per process."""
    return environ.get(COLLECTOR_ENV) or f"{tool}-{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_liveness(path: Path, ev: dict[str, Any]) -> None:
    """Atomically replace the liveness file with the latest heartbeat (for probes/monitors)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(dumps(ev))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Liveness:
    """--heartbeat-file, rewritten with each heartbeat. A write that fails does not stop the
    tool (its events still flow); it is said once, naming the user's file, and said again only
    after a write succeeded in between."""

    def __init__(self, path: Path | None):
        self.path = path
        self._failing = False

    def write(self, ev: dict[str, Any]) -> str | None:
        """The line to say on stderr, or None."""
        if self.path is None:
            return None
        try:
            write_liveness(self.path, ev)
        except OSError as e:
            if self._failing:
                return None
            self._failing = True
            return f"cannot write heartbeat file {self.path}: {e.strerror or e}"
        self._failing = False
        return None
