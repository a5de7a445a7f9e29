"""CollectorHeartbeat events and the liveness file."""

from __future__ import annotations

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
    host: str | None = None, unreadable: int | None = None,
    programs: tuple[int, int] | None = None, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`unreadable`: files whose TLS stack the tool found but cannot read (obs-ssl); `extra`:
    a tool's own documented fields (obs-llm --api's `transcripts`, obs-fileguard's cache).
    `programs`: (loaded from the start-up cache, compiled) of the tool's BPF programs."""
    node = host or hostname()
    fields = {
        "collector_id": collector_id, "tool": tool, "version": __version__, "node_name": node,
        "attached_probes": list(attached), "enabled_features": list(features),
        "interval_secs": interval, "counts": dict(counts), "dropped": int(dropped),
        "output_dropped": int(output_dropped),
    }
    if unreadable is not None:
        fields["unreadable"] = int(unreadable)
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
    tmp.write_bytes(dumps(ev))
    os.replace(tmp, path)
