"""The one table from domain error to gRPC status, and the method wrapper that applies it.

Servicer methods are registered through `unary_handlers`, which decodes the request itself so that a
malformed message is INVALID_ARGUMENT (gRPC's default would be UNKNOWN or INTERNAL) and turns domain
errors into statuses in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from recserve.server import exceptions
from recserve.server.decoding import invalid_utf8_field
from recserve.server.statistics import RpcStatistics
from recserve.server.telemetry.grpc_tracing import RpcTracing, status_code, traced

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[exceptions.RecserveError], grpc.StatusCode] = {
    exceptions.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    exceptions.NotFoundError: grpc.StatusCode.NOT_FOUND,
    exceptions.QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    exceptions.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    exceptions.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    exceptions.ModelExecutionError: grpc.StatusCode.INTERNAL,
    exceptions.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    exceptions.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    exceptions.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
}

# grpc-message is percent-encoded: 1 KiB of UTF-8 is at most 3 KiB of header, under every client's limit.
MAX_DETAILS_BYTES = 1024
CUT = " ... (cut)"

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]
# Run before a request is decoded: raises a domain error (UNAUTHENTICATED, PERMISSION_DENIED) to refuse it.
CallCheck = Callable[[Sequence[tuple[str, str | bytes]], str], object]


def details(error: exceptions.RecserveError) -> str:
    """The error's message as the caller gets it: at most MAX_DETAILS_BYTES of UTF-8, the rest cut.

    Messages quote what the caller sent (`unknown item id '...'`); a 100 kB id made the status's
    grpc-message header larger than clients accept, and the caller saw RESOURCE_EXHAUSTED instead.
    """
    return clipped(str(error))


def clipped(message: str) -> str:
    """`message` cut to at most MAX_DETAILS_BYTES of UTF-8, for any status that quotes the caller."""
    encoded = message.encode()
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    return encoded[: MAX_DETAILS_BYTES - len(CUT)].decode(errors="ignore") + CUT


def status_for(error: exceptions.RecserveError) -> grpc.StatusCode:
    """The gRPC status of a domain error (INTERNAL for any not in the table)."""
    for error_type in type(error).__mro__:
        if error_type in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_type]
    return grpc.StatusCode.INTERNAL


def guarded(
    behavior: Behavior,
    request_type: type[Message],
    method: str = "",
    statistics: RpcStatistics | None = None,
    check: CallCheck | None = None,
) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    """Wrap a servicer method: check the caller, decode the raw request, run it, map domain errors.

    With `statistics`, every call of `method` is counted by its final status code and timed; with `check`,
    a call it refuses is answered before its request is even decoded.
    """
    handle = (
        _decoded(behavior, request_type) if check is None else _checked(behavior, request_type, check, method)
    )
    if statistics is None:
        return handle

    async def counted(raw_request: bytes, context: grpc.aio.ServicerContext) -> Message:
        started_ns = time.perf_counter_ns()
        code = None
        try:
            return await handle(raw_request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            code = code or status_code(context.code()).name
            statistics.record(method, code, (time.perf_counter_ns() - started_ns) / 1000)

    return counted


def _decoded(
    behavior: Behavior, request_type: type[Message]
) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    async def handle(raw_request: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = await decoded(request_type, raw_request, context)
        try:
            return await behavior(request, context)
        except exceptions.RecserveError as error:
            await context.abort(status_for(error), details(error))
        except (grpc.aio.AbortError, KeyboardInterrupt):
            raise
        except Exception:
            logger.exception("unexpected error in %s", request_type.DESCRIPTOR.full_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
        raise AssertionError("unreachable: context.abort raises")

    return handle


def _checked(
    behavior: Behavior, request_type: type[Message], check: CallCheck, method: str
) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    handle = _decoded(behavior, request_type)

    async def checked(raw_request: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            check(context.invocation_metadata() or (), method)
        except exceptions.RecserveError as error:
            await context.abort(status_for(error), details(error))
        return await handle(raw_request, context)

    return checked


async def decoded(request_type: type[Message], raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
    """The message `raw_request` holds; one that does not decode ends the call with INVALID_ARGUMENT.

    Handlers take raw bytes and decode with this: grpc.aio answers UNKNOWN when a deserializer raises.
    """
    try:
        return request_type.FromString(raw_request)
    except DecodeError as error:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, _decode_failure(request_type, raw_request, error)
        )
        raise AssertionError("unreachable: context.abort raises") from error


def _decode_failure(request_type: type[Message], raw_request: bytes, error: DecodeError) -> str:
    """What to tell a caller whose request did not decode: the field with invalid UTF-8 when that is why."""
    field = invalid_utf8_field(request_type.DESCRIPTOR, raw_request)
    if field is not None:
        return f"{field} is not valid UTF-8; string fields must be UTF-8"
    return f"request is not a valid {request_type.DESCRIPTOR.full_name}: {error}"


def unary_handlers(
    service: ServiceDescriptor,
    servicer: object,
    statistics: RpcStatistics | None = None,
    tracing: RpcTracing | None = None,
    check: CallCheck | None = None,
    method_checks: dict[str, CallCheck | None] | None = None,
) -> grpc.GenericRpcHandler:
    """A generic handler for every unary method of `service`, served by the same-named servicer methods.

    With `statistics`, every call is counted by method and status code, and timed; with `tracing`, every
    call runs in a server span; with `check` (the service's role check), every call is checked first;
    `method_checks` replaces it for the methods it names (model control in the inference service).
    """
    handlers = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue  # streaming methods are registered by the service's own module
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behavior = guarded(
            getattr(servicer, method.name),
            request_type,
            f"{service.full_name}/{method.name}",
            statistics,
            (method_checks or {}).get(method.name, check),
        )
        if tracing is not None:
            behavior = traced(behavior, service.full_name, method.name, tracing)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def disabled_handlers(service: ServiceDescriptor, setting: str, flag: str) -> grpc.GenericRpcHandler:
    """A generic handler refusing every method of a service that is switched off: PERMISSION_DENIED.

    The message says how to switch it on; the service stays in reflection, so clients can see it exists.
    """
    details = (
        f"{service.full_name} is disabled on this server: enable it with `{setting}: true` in the server "
        f"config, RECSERVE_{setting.upper()}=true or `recserve serve {flag}`"
    )

    async def refuse(raw_request: bytes, context: grpc.aio.ServicerContext) -> Message:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, details)
        raise AssertionError("unreachable: context.abort raises")

    handlers = {method.name: grpc.unary_unary_rpc_method_handler(refuse) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
