#!/usr/bin/env python3
"""obs-otel: obs NDJSON (from obs-merge) → OTLP traces and GenAI metrics. Wiring only:
libobs.export.otel maps events to spans and points, libobs.export.otlp sends them with the
OpenTelemetry SDK, libobs.export.pump runs the loop and the heartbeat."""

from __future__ import annotations

import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from libobs.export.otel import MAX_OPEN, Tracer
from libobs.export.otlp import Export, default_protocol, exporters
from libobs.export.pump import TOOL, Pump
from libobs.merge.input import Reader
from libobs.tool import options as cli
from libobs.tool.heartbeat import Liveness, new_collector_id
from libobs.tool.loop import err
from libobs.tool.sink import OutputClosed, Sink, quiet_broken_pipe

EPILOG = """Examples:

\b
  obs-merge <(obs-exec) <(obs-net) <(obs-llm --api) | obs-otel
      each agent session a trace, to the collector at localhost:4317 (gRPC)
  OTEL_EXPORTER_OTLP_ENDPOINT=https://otlp.example.com obs-otel --protocol http/protobuf run.ndjson
      replay a recorded run to an HTTP/protobuf endpoint (headers and TLS from OTEL_EXPORTER_OTLP_*)
  obs-otel --heartbeat-interval 10 - < merged.ndjson | jq .event.CollectorHeartbeat.counts
      what was exported, what failed

Standard variables: OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _CERTIFICATE, _CLIENT_KEY,
_CLIENT_CERTIFICATE, _INSECURE, _TIMEOUT, _COMPRESSION, _PROTOCOL (and their _TRACES_/_METRICS_
forms); OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES for the resource.

Exit status: 0 everything exported, 1 a source could not be read or something could not be
exported (counted in the last heartbeat), 2 bad usage.
"""


class Protocol(StrEnum):
    grpc = "grpc"
    http = "http/protobuf"


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)
Opt = typer.Option


@app.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]},
             help="Export obs NDJSON (files or - for stdin; default -; normally obs-merge's "
             "output) as OpenTelemetry traces and GenAI metrics over OTLP: each agent session a "
             "trace, each LlmCall a GenAI client span, each tool process a span; writes "
             "CollectorHeartbeat NDJSON with what was and was not exported.")
def main(
    sources: Annotated[list[str] | None, typer.Argument(metavar="FILE|-")] = None,
    protocol: Annotated[Protocol | None, Opt("--protocol", envvar="OBS_OTEL_PROTOCOL",
                        help="grpc or http/protobuf; default OTEL_EXPORTER_OTLP_PROTOCOL, "
                        "else grpc.")] = None,
    endpoint: Annotated[str | None, Opt("--endpoint", envvar="OBS_OTEL_ENDPOINT",
                        help="Collector URL (http/protobuf: the base, /v1/traces is added); "
                        "default OTEL_EXPORTER_OTLP_*_ENDPOINT, else localhost.")] = None,
    max_open: Annotated[int, Opt("--max-open-spans", envvar="OBS_OTEL_MAX_OPEN_SPANS", min=2,
                        help="Spans held open (sessions, running tools); beyond it the oldest "
                        "ends early, marked obs.evicted.")] = MAX_OPEN,
    max_queue: Annotated[int, Opt("--max-queue", envvar="OBS_OTEL_MAX_QUEUE", min=1,
                         help="Finished spans waiting for export; beyond it spans are "
                         "dropped (counted).")] = 8192,
    metric_interval: Annotated[float, Opt("--metric-interval", envvar="OBS_OTEL_METRIC_INTERVAL",
                               min=0.1, help="Seconds between metric exports.")] = 10.0,
    heartbeat_interval: cli.HeartbeatOpt = 30.0,
    heartbeat_file: cli.HeartbeatFileOpt = None,
) -> int:
    specs = sources or ["-"]
    proto = protocol.value if protocol else default_protocol()
    try:
        spans, metrics = exporters(proto, endpoint)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--protocol'") from None
    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.__setitem__("now", True))
    sink = Sink("json", fd=1, lossless=True)

    liveness = Liveness(Path(heartbeat_file) if heartbeat_file is not None else None)

    def emit(ev: dict) -> None:
        if news := liveness.write(ev):  # first: whoever reads the line finds the file fresh
            err(TOOL, news)
        sink.emit(ev)

    where = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or f"localhost ({proto})"
    reader = Reader(specs)
    pump = Pump(reader, Tracer(max_open), Export(spans, metrics, metric_interval_s=metric_interval,
                max_queue=max_queue), where=where, protocol=proto,
                heartbeat_s=heartbeat_interval, emit=emit, collector_id=new_collector_id(TOOL),
                say=lambda text: print(text, end="", file=sys.stderr, flush=True))
    try:
        rc = pump.run(lambda: stop["now"])
        sink.close()
    except OutputClosed:
        quiet_broken_pipe()
        return 0
    finally:
        reader.close()
    return rc


def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
