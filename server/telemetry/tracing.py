"""OpenTelemetry tracing: the tracer provider built from settings, and spans for batches.

One forward pass serves many requests, so a batch cannot be a child of one request. The OpenTelemetry
way is used instead: every request span gets a `queue` child for its wait; every batch gets a span of
its own that links to each request span it served (and each `queue` span links back to its batch); the
batch span's children are the pipeline stages. A batch span is recorded when any request it served was
sampled, so a sampled trace is always complete.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import Attributes

from recserve.server.settings import TracingSettings

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "recserve"


_SAMPLED_NEW_TRACE = create_key("recserve.sampled-new-trace")


class BatchAwareSampler(Sampler):
    """Parent-based ratio sampling, except that a root span with links follows the spans it links to.

    Request spans continue the caller's decision (or sample `ratio` of new traces); a batch span, which
    has no parent, is sampled exactly when one of the requests it served was.

    `sample_new_trace()` lets the RPC wrapper decide for a call without trace context before any span
    exists: the ~99% of calls not sampled then make no span at all (an unsampled SDK span still costs
    ~20 us of the event loop's time), and the ones sampled carry the decision in their context.
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._requests = ParentBased(TraceIdRatioBased(ratio))

    def sample_new_trace(self) -> Context | None:
        """For a call without trace context: a context to start its (sampled) span in, or None to skip it."""
        if random.random() >= self.ratio:  # noqa: S311 - sampling, not security
            return None
        return set_value(_SAMPLED_NEW_TRACE, True, Context())

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        """Decide for one new span."""
        if parent_context is not None and get_value(_SAMPLED_NEW_TRACE, parent_context):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        has_parent = trace.get_current_span(parent_context).get_span_context().is_valid
        if not has_parent and links:
            sampled = any(link.context.trace_flags.sampled for link in links)
            return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP, attributes)
        return self._requests.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """Shown by the SDK in debug output."""
        return f"BatchAwareSampler(ParentBased(TraceIdRatioBased({self.ratio})))"


def build_tracer_provider(settings: TracingSettings) -> TracerProvider | None:
    """A tracer provider exporting as configured, or None when tracing is off.

    The standard `OTEL_*` variables fill in what the settings leave unset: `OTEL_TRACES_EXPORTER`,
    `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and the OTLP exporters' own
    `OTEL_EXPORTER_OTLP_*` (endpoint, headers, timeout, ...).
    """
    exporter_name = settings.resolved_exporter()
    if exporter_name == "none":
        return None
    resource = Resource.create(
        {**settings.resource_attributes, "service.name": settings.resolved_service_name()}
    )
    sampler = BatchAwareSampler(settings.resolved_sampling_ratio())
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter_name, settings.endpoint)))
    return provider


def _exporter(name: str, endpoint: str | None) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=_insecure(endpoint))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint)


def _insecure(endpoint: str | None) -> bool | None:
    """Plaintext for http:// endpoints and bare host:port (a sidecar collector); TLS for https://."""
    if endpoint is None:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_INSECURE and the endpoint's scheme
    return not endpoint.startswith("https://")


def describe(settings: TracingSettings) -> str:
    """One log-friendly line of the tracing set-up."""
    exporter = settings.resolved_exporter()
    if exporter == "none":
        return "tracing off"
    endpoint = (
        settings.endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "the exporter's default endpoint")
    )
    target = "" if exporter == "console" else f" to {endpoint}"
    return (
        f"tracing: {exporter}{target}, service {settings.resolved_service_name()!r}, "
        f"sampling ratio {settings.resolved_sampling_ratio():g} (parent-based)"
    )


@dataclass
class RequestTrace:
    """A sampled request waiting in the batcher: its span's context and its open `queue` span."""

    request: trace.SpanContext
    queue: Span


class BatchTracer:
    """Creates the batcher's spans. Costs one `is_recording()` check per request when not sampled."""

    def __init__(self, tracer: Tracer, attributes: Attributes) -> None:
        self.tracer = tracer
        self._attributes = dict(attributes or {})

    def request_waits(self) -> RequestTrace | None:
        """Open the `queue` span under the current request span, if that one is sampled."""
        request_span = trace.get_current_span()
        if not request_span.is_recording():
            return None
        queue_span = self.tracer.start_span("queue", attributes=self._attributes)
        return RequestTrace(request_span.get_span_context(), queue_span)

    def start_batch(
        self, traces: Sequence[RequestTrace], size: int, queue_us: Sequence[float]
    ) -> Span | None:
        """The batch span linked to every sampled request (None when none was); closes their queue spans."""
        if not traces:
            return None
        links = [Link(t.request) for t in traces]
        batch = self.tracer.start_span(
            "batch",
            links=links,
            attributes={
                **self._attributes,
                "recserve.batch.size": size,
                "recserve.batch.traced_requests": len(traces),
                "recserve.batch.queue_us.max": max(queue_us),
                "recserve.batch.queue_us.mean": sum(queue_us) / len(queue_us),
            },
        )
        for request_trace in traces:
            request_trace.queue.add_link(batch.get_span_context())
            request_trace.queue.set_attribute("recserve.batch.size", size)
            request_trace.queue.end()
        return batch

    @staticmethod
    def request_dropped(request_trace: RequestTrace, reason: str) -> None:
        """Close the queue span of a request that never ran (expired or cancelled)."""
        request_trace.queue.set_attribute("recserve.dropped", reason)
        request_trace.queue.end()

    @staticmethod
    def end_batch(batch: Span, error: BaseException | None = None) -> None:
        """Close a batch span; a failed batch is marked ERROR with its exception."""
        if error is not None:
            batch.record_exception(error)
            batch.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        batch.end()


@contextmanager
def child_span(tracer: Tracer | None, name: str, attributes: dict[str, str | int]) -> Iterator[None]:
    """A child of the current span; nothing at all (no unsampled span) when that one is not recorded."""
    if tracer is None or not trace.get_current_span().is_recording():
        yield
        return
    with tracer.start_as_current_span(name, attributes=attributes):
        yield


def stage_span(tracer: Tracer | None, name: str, rows: int) -> AbstractContextManager[None]:
    """A child span of the current batch span for one pipeline stage; nothing when the batch is not traced."""
    return child_span(tracer, name, {"recserve.stage.rows": rows})
