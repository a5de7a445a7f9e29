"""Sending libobs.export.otel's spans and points with the official OpenTelemetry SDK exporters
(OTLP over gRPC or HTTP/protobuf), and counting what did not arrive.

The exporters read endpoint, headers, TLS files, compression and timeout from the standard
OTEL_EXPORTER_OTLP_* variables and retry transient failures (UNAVAILABLE, 429, 5xx) with
exponential back-off within that timeout. Spans go through the SDK's BatchSpanProcessor
(bounded queue; a full queue drops). Nothing is lost silently: every span handed over is
counted, and at any time spans handed over = exported + failed + still queued or dropped;
metric exports are counted likewise. The first failure is said once on stderr by the caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from libobs import __version__
from libobs.export.otel import Point, Span

PROTOCOLS = ("grpc", "http/protobuf")
SCOPE = InstrumentationScope("obs", __version__)
# Bucket boundaries the GenAI semantic conventions advise for these histograms.
TOKEN_BUCKETS: list[float] = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864]
SECONDS_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92]
HISTOGRAMS: dict[str, tuple[str, str, list[float]]] = {
    "gen_ai.client.token.usage": ("{token}", "Number of input and output tokens used.",
                                  TOKEN_BUCKETS),
    "gen_ai.client.operation.duration": ("s", "GenAI operation duration.", SECONDS_BUCKETS),
    "gen_ai.client.operation.time_to_first_chunk": (
        "s", "Time to receive the first chunk in a streaming operation.", SECONDS_BUCKETS),
}


def exporters(protocol: str, endpoint: str | None = None) -> tuple[SpanExporter, MetricExporter]:
    """The SDK's OTLP exporters for `protocol`; `endpoint` overrides OTEL_EXPORTER_OTLP_*."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetrics,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpans,
        )
        return GrpcSpans(endpoint=endpoint), GrpcMetrics(endpoint=endpoint)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetrics,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpans,
        )
        base = endpoint.rstrip("/") if endpoint else None
        return (HttpSpans(endpoint=f"{base}/v1/traces" if base else None),
                HttpMetrics(endpoint=f"{base}/v1/metrics" if base else None))
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")


def default_resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES as given; service.name `obs` otherwise."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "obs"}))
    return resource


def default_protocol() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"


class Tally:
    """Thread-safe counts shared by the counting exporters and the heartbeat; the first
    failure's reason is kept for one line on stderr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.first_failure: str | None = None

    def add(self, key: str, n: int = 1, failure: str | None = None) -> None:
        with self.lock:
            self.counts[key] += n
            if failure and self.first_failure is None:
                self.first_failure = failure

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


class _FirstReason(logging.Handler):
    """The SDK exporters log every retry and failure; the first failure's text becomes the
    reason said once (with the counts in the heartbeat) instead of a line per retry."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.WARNING)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        if self.tally.first_failure is None and "retrying" not in record.getMessage():
            self.tally.first_failure = record.getMessage().splitlines()[0][:300]


def quiet_sdk_logs(tally: Tally) -> None:
    sdk = logging.getLogger("opentelemetry")
    sdk.handlers[:] = [_FirstReason(tally)]
    sdk.propagate = False


class CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, tally: Tally) -> None:
        self.inner, self.tally = inner, tally

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as e:  # an exporter bug must not stop counting
            result, why = SpanExportResult.FAILURE, f"{type(e).__name__}: {e}"
        else:
            why = "spans refused or unanswered after retries"
        ok = result == SpanExportResult.SUCCESS
        self.tally.add("spans_exported" if ok else "spans_failed", len(spans),
                       None if ok else why)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingMetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, tally: Tally) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner, self.tally = inner, tally

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        points = sum(len(m.data.data_points) for rm in metrics_data.resource_metrics
                     for sm in rm.scope_metrics for m in sm.metrics)
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as e:
            result, why = MetricExportResult.FAILURE, f"{type(e).__name__}: {e}"
        else:
            why = "metrics refused or unanswered after retries"
        ok = result == MetricExportResult.SUCCESS
        self.tally.add("metric_points_exported" if ok else "metric_points_failed", points,
                       None if ok else why)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def readable(span: Span, resource: Resource) -> ReadableSpan:
    """A libobs Span as the SDK's ReadableSpan, ids as given (deterministic per session)."""
    flags = TraceFlags(TraceFlags.SAMPLED)
    ctx = SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=flags)
    parent = (SpanContext(span.trace_id, span.parent_id, is_remote=False, trace_flags=flags)
              if span.parent_id is not None else None)
    attrs = dict(span.attributes)
    if span.error is not None:
        attrs["error.type"] = span.error
    if span.dropped_events:
        attrs["obs.dropped_events"] = span.dropped_events
    return ReadableSpan(
        name=span.name, context=ctx, parent=parent, resource=resource, attributes=attrs,
        events=[Event(name, attributes=a, timestamp=ts) for name, ts, a in span.events],
        kind=SpanKind.CLIENT if span.kind == "client" else SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, span.error) if span.error else Status(StatusCode.UNSET),
        start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=SCOPE)


class Export:
    """Spans and points out through the SDK; `close` flushes and shuts down."""

    def __init__(self, spans: SpanExporter, metrics: MetricExporter, *,
                 metric_interval_s: float = 10.0, max_queue: int = 8192,
                 resource: Resource | None = None) -> None:
        self.tally = Tally()
        quiet_sdk_logs(self.tally)
        self.resource = resource or default_resource()
        self.processor = BatchSpanProcessor(CountingSpanExporter(spans, self.tally),
                                            max_queue_size=max_queue,
                                            max_export_batch_size=min(512, max_queue))
        self.reader = PeriodicExportingMetricReader(
            CountingMetricExporter(metrics, self.tally),
            export_interval_millis=metric_interval_s * 1000)
        self.meters = MeterProvider(resource=self.resource, metric_readers=[self.reader])
        meter = self.meters.get_meter("obs", __version__)
        self.histograms = {name: meter.create_histogram(
            name, unit=unit, description=desc, explicit_bucket_boundaries_advisory=buckets)
            for name, (unit, desc, buckets) in HISTOGRAMS.items()}

    def spans(self, spans: list[Span]) -> None:
        for span in spans:
            self.tally.add("spans_queued")
            self.processor.on_end(readable(span, self.resource))

    def points(self, points: list[Point]) -> None:
        for p in points:
            self.histograms[p.metric].record(p.value, p.attributes)
            self.tally.add("metric_points_recorded")

    def counts(self) -> dict[str, int]:
        """Span counts; `spans_pending` is queued minus exported minus failed: waiting in
        the queue, or dropped by a full queue (all of them lost, once closed)."""
        c = self.tally.snapshot()
        pending = c.get("spans_queued", 0) - c.get("spans_exported", 0) - c.get("spans_failed", 0)
        return {**c, "spans_pending": pending}

    def close(self, timeout_s: float = 30.0) -> None:
        self.processor.force_flush(int(timeout_s * 1000))
        self.processor.shutdown()
        self.meters.force_flush(int(timeout_s * 1000))
        self.meters.shutdown(timeout_millis=timeout_s * 1000)

