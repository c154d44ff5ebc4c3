"""One server span per unary RPC, continuing the caller's trace.

Spans follow OpenTelemetry's RPC conventions (name `service/method`, kind SERVER, `rpc.system`,
`rpc.service`, `rpc.method`, `rpc.grpc.status_code`); the caller's W3C `traceparent` (or whatever
`OTEL_PROPAGATORS` selects) is read from the gRPC metadata. Status ERROR is set only for server-side
faults, never for a caller's mistake such as INVALID_ARGUMENT.

The span is opened by a wrapper around each method handler, applied once when the service is
registered, rather than by a grpc.aio interceptor: an interceptor adds coroutines to every call, which
on this GIL-bound event loop measured as 12% of throughput at concurrency 64 with 1% sampling. Health
checks and reflection are registered without it, so probes make no spans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Tracer, TracerProvider

from recserve.server.telemetry.tracing import INSTRUMENTATION_NAME, BatchAwareSampler

# What OpenTelemetry's gRPC conventions count as the server's fault.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class _MetadataGetter(Getter[Iterable[tuple[str, str | bytes]]]):
    """Reads propagation headers from gRPC invocation metadata (a sequence of key/value pairs)."""

    def get(self, carrier: Iterable[tuple[str, str | bytes]], key: str) -> list[str] | None:
        values = [value for name, value in carrier if name == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, str | bytes]]) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _MetadataGetter()


_PROPAGATION_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


@dataclass(frozen=True)
class RpcTracing:
    """What the RPC wrapper needs: the tracer, and the up-front sampling decision for new traces."""

    tracer: Tracer
    sample_new_trace: Callable[[], Context | None] | None = None

    @classmethod
    def from_provider(cls, provider: TracerProvider) -> RpcTracing:
        """Tracing through `provider`, with the fast path when its sampler offers one."""
        sampler = getattr(provider, "sampler", None)
        return cls(
            provider.get_tracer(INSTRUMENTATION_NAME),
            sampler.sample_new_trace if isinstance(sampler, BatchAwareSampler) else None,
        )


def traced(behavior: UnaryBehavior, service: str, method: str, tracing: RpcTracing) -> UnaryBehavior:
    """Wrap a unary handler so each call runs inside its own server span.

    With `tracing.sample_new_trace` (see `BatchAwareSampler`) calls without trace context are decided up
    front, so unsampled ones skip the SDK entirely; otherwise every call goes through the sampler.
    """
    tracer, sample_new_trace = tracing.tracer, tracing.sample_new_trace
    name = f"{service}/{method}"
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        if any(key in _PROPAGATION_KEYS for key, _ in metadata):
            parent = propagate.extract(metadata, getter=_GETTER)
        elif sample_new_trace is None:
            parent = Context()
        else:
            parent = sample_new_trace()
            if parent is None:
                return await behavior(request, context)
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            code = None
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller went away
                raise
            finally:
                if span.is_recording():
                    _record_status(span, code or status_code(context.code()), context)

    return handle


def status_code(value: object) -> grpc.StatusCode:
    """The status an aio servicer context holds: a StatusCode, its integer value, or None for OK."""
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        return next((code for code in grpc.StatusCode if code.value[0] == value), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


def _record_status(span: trace.Span, code: grpc.StatusCode, context: grpc.aio.ServicerContext) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {context.details() or ''}"))
