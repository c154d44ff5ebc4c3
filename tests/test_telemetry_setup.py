"""Tracing set-up from settings and OTEL_* variables, real OTLP export to a collector, structured logs."""

from __future__ import annotations

import http.server
import io
import json
import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from recserve.client import RecommenderClient
from recserve.server.settings import ServerSettings, TracingSettings
from recserve.server.telemetry.logs import JsonFormatter, TraceContextFilter
from recserve.server.telemetry.tracing import build_tracer_provider
from tests.serving import ServerThread


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802 - the OTLP method name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_grpc_collector() -> Iterator[tuple[str, _Collector]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", collector
    server.stop(0)


@pytest.fixture
def otlp_http_collector() -> Iterator[tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]]]:
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1/traces", received
    httpd.shutdown()
    httpd.server_close()


def exported_spans(requests) -> tuple[dict[str, str], list[str]]:
    """(resource attributes, span names) of everything exported."""
    attributes, names = {}, []
    for request in requests:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                attributes[attribute.key] = attribute.value.string_value
            for scope_spans in resource_spans.scope_spans:
                names += [span.name for span in scope_spans.spans]
    return attributes, names


def serve_one_recommend(settings: ServerSettings, tracing: dict) -> None:
    """Start a server configured with `tracing`, make one call, stop it (which flushes the exporter)."""
    server = ServerThread(settings.model_copy(update={"tracing": TracingSettings(**tracing)})).start()
    try:
        with RecommenderClient(server.address, timeout_s=30) as client:
            client.recommend("user-1")
    finally:
        server.stop()


def test_spans_reach_an_otlp_grpc_collector(server_settings, otlp_grpc_collector) -> None:
    endpoint, collector = otlp_grpc_collector
    tracing = {
        "exporter": "otlp_grpc",
        "endpoint": endpoint,
        "sampling_ratio": 1.0,
        "service_name": "recserve-test",
        "resource_attributes": {"deployment.environment": "ci"},
    }
    serve_one_recommend(server_settings, tracing)
    resource, names = exported_spans(collector.requests)
    assert resource["service.name"] == "recserve-test"
    assert resource["deployment.environment"] == "ci"
    assert {"recserve.v1.Recommender/Recommend", "queue", "batch", "user_tower", "ann", "ranker"} <= set(
        names
    )


def test_spans_reach_an_otlp_http_collector(server_settings, otlp_http_collector) -> None:
    endpoint, received = otlp_http_collector
    serve_one_recommend(
        server_settings, {"exporter": "otlp_http", "endpoint": endpoint, "sampling_ratio": 1.0}
    )
    resource, names = exported_spans(received)
    assert resource["service.name"] == "recserve"
    assert "recserve.v1.Recommender/Recommend" in names and "batch" in names


def test_tracing_is_off_by_default(monkeypatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    settings = TracingSettings()
    assert settings.resolved_exporter() == "none"
    assert build_tracer_provider(settings) is None
    assert settings.resolved_sampling_ratio() == 0.01
    assert settings.resolved_service_name() == "recserve"


def test_standard_otel_variables_fill_in_unset_settings(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "recs-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=recserve-0")
    settings = TracingSettings()
    assert settings.resolved_exporter() == "otlp_http"
    assert settings.resolved_sampling_ratio() == 0.25
    provider = build_tracer_provider(settings)
    try:
        assert provider.resource.attributes["service.name"] == "recs-eu"
        assert provider.resource.attributes["k8s.pod.name"] == "recserve-0"
        assert "0.25" in provider.sampler.get_description()
    finally:
        provider.shutdown()
    explicit = TracingSettings(exporter="console", sampling_ratio=1.0, service_name="mine")
    assert explicit.resolved_exporter() == "console"
    assert explicit.resolved_sampling_ratio() == 1.0
    assert explicit.resolved_service_name() == "mine"


def test_tracing_settings_from_environment_and_flags(monkeypatch) -> None:
    from recserve.server.settings import load_server_settings

    monkeypatch.setenv("RECSERVE_TRACING__EXPORTER", "otlp_grpc")
    monkeypatch.setenv("RECSERVE_TRACING__SAMPLING_RATIO", "0.5")
    settings = load_server_settings(tracing={"endpoint": "http://collector:4317", "exporter": None})
    assert settings.tracing.exporter == "otlp_grpc"
    assert settings.tracing.sampling_ratio == 0.5
    assert settings.tracing.endpoint == "http://collector:4317"


def log_line(formatter: logging.Formatter, in_span: bool) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("recserve-log-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if in_span:
            with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
                logger.warning("queue is %d deep", 7, extra={"queue_depth": 7})
                ids = span.get_span_context()
        else:
            logger.warning("no span here")
            ids = trace.INVALID_SPAN_CONTEXT
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().strip(), ids


def test_json_logs_carry_trace_and_span_ids() -> None:
    line, ids = log_line(JsonFormatter(), in_span=True)
    entry = json.loads(line)
    assert entry["message"] == "queue is 7 deep"
    assert entry["level"] == "WARNING"
    assert entry["trace_id"] == format(ids.trace_id, "032x")
    assert entry["span_id"] == format(ids.span_id, "016x")
    assert entry["queue_depth"] == 7
    outside, _ = log_line(JsonFormatter(), in_span=False)
    assert "trace_id" not in json.loads(outside)


def test_text_logs_append_trace_ids_only_inside_a_span() -> None:
    from recserve.server.telemetry.logs import TEXT_FORMAT

    line, ids = log_line(logging.Formatter(TEXT_FORMAT), in_span=True)
    assert line.endswith(f"trace_id={ids.trace_id:032x} span_id={ids.span_id:016x}")
    outside, _ = log_line(logging.Formatter(TEXT_FORMAT), in_span=False)
    assert outside.endswith("no span here")
