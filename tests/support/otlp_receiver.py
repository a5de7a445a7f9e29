"""A real OTLP receiver for tests, on loopback: the gRPC TraceService and MetricsService from
opentelemetry-proto served by grpcio, or OTLP/HTTP protobuf (POST /v1/traces, /v1/metrics)
served by http.server. It keeps every request it decoded; `fail` makes it refuse them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as msvc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tsvc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class Received:
    traces: list[tsvc.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[msvc.ExportMetricsServiceRequest] = field(default_factory=list)
    refused: int = 0
    fail: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Any]:
        with self.lock:
            return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans
                    for s in ss.spans]

    def metric_points(self) -> dict[str, list[Any]]:
        """Histogram data points by metric name, from the newest export of each metric."""
        out: dict[str, list[Any]] = {}
        with self.lock:
            for r in self.metrics:
                for rm in r.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            out[m.name] = list(m.histogram.data_points)
        return out


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


class _Traces(tgrpc.TraceServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the gRPC method name)
        if self.got.fail:
            self.got.refused += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused by the test")
        with self.got.lock:
            self.got.traces.append(request)
        return tsvc.ExportTraceServiceResponse()


class _Metrics(mgrpc.MetricsServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.got.fail:
            self.got.refused += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused by the test")
        with self.got.lock:
            self.got.metrics.append(request)
        return msvc.ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    got = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    tgrpc.add_TraceServiceServicer_to_server(_Traces(got), server)
    mgrpc.add_MetricsServiceServicer_to_server(_Metrics(got), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", got
    finally:
        server.stop(0)


@contextmanager
def http_receiver() -> Iterator[tuple[str, Received]]:
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            kinds = {"/v1/traces": (tsvc.ExportTraceServiceRequest, got.traces,
                                    tsvc.ExportTraceServiceResponse),
                     "/v1/metrics": (msvc.ExportMetricsServiceRequest, got.metrics,
                                     msvc.ExportMetricsServiceResponse)}
            if self.path not in kinds or got.fail:
                got.refused += 1
                self.send_response(400 if got.fail else 404)
                self.end_headers()
                return
            request_type, into, response_type = kinds[self.path]
            request = request_type()
            request.ParseFromString(body)
            with got.lock:
                into.append(request)
            out = response_type().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()
