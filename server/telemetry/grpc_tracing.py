"""A server interceptor that opens one span per unary RPC, continuing the caller's trace.

Spans follow OpenTelemetry's RPC conventions (name `service/method`, kind SERVER, `rpc.system`,
`rpc.service`, `rpc.method`, `rpc.grpc.status_code`); the caller's W3C `traceparent` (or whatever
`OTEL_PROPAGATORS` selects) is read from the gRPC metadata. Status ERROR is set only for server-side
faults, never for a caller's mistake such as INVALID_ARGUMENT. Health checks and reflection make no spans:
probes every few seconds would drown the traces that matter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Tracer

UNTRACED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
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


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler of a traced service in a server span."""

    def __init__(self, tracer: Tracer, untraced_services: frozenset[str] = UNTRACED_SERVICES) -> None:
        self._tracer = tracer
        self._untraced = untraced_services
        self._wrapped: dict[int, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler for this call, wrapped when it is a traced unary method (wrappers are cached)."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            service, _, method = handler_call_details.method.lstrip("/").partition("/")
            if service in self._untraced:
                return handler
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._traced(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            self._wrapped[id(handler)] = wrapped
        return wrapped

    def _traced(self, behavior: UnaryBehavior, service: str, method: str) -> UnaryBehavior:
        name = f"{service}/{method}"
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        tracer = self._tracer

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = propagate.extract(context.invocation_metadata() or (), getter=_GETTER)
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await behavior(request, context)
                finally:
                    if span.is_recording():
                        _record_status(span, context)

        return traced


def _record_status(span: trace.Span, context: grpc.aio.ServicerContext) -> None:
    code = context.code() or grpc.StatusCode.OK
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_FAULTS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {context.details() or ''}"))
