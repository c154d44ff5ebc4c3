"""`grpc.health.v1.Health`: grpc's own health servicer, its requests decoded here.

grpc's registration gives the method handlers a deserializer, and grpc.aio answers a request that does not
decode with UNKNOWN; decoded here, it is INVALID_ARGUMENT on both front ends, as on every other service.
grpc's servicer answers a Check of an unknown service NOT_FOUND without a word; this one names the
services it reports on.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from recserve.server.errors import clipped, decoded

SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
_serialize = health_pb2.HealthCheckResponse.SerializeToString


class HealthServicer(health.aio.HealthServicer):
    """grpc's asyncio health servicer, whose NOT_FOUND says which services there are."""

    def __init__(self) -> None:
        super().__init__()
        self._services: set[str] = {""}

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Report `status` for `service` ("" is the server as a whole)."""
        self._services.add(service)
        await super().set(service, status)

    async def Check(  # noqa: N802 - grpc's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The service's status; NOT_FOUND, naming the known services, for one never reported."""
        if request.service not in self._services:
            known = ", ".join(sorted(name for name in self._services if name))
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                clipped(  # what to ask for first: the caller's name is quoted last, cut if long
                    f"no health is reported for that service; ask for '' (the whole server) or one of: "
                    f"{known}. Asked for: {request.service!r}"
                ),
            )
        return await super().Check(request, context)


def health_handlers(servicer: health.aio.HealthServicer) -> grpc.GenericRpcHandler:
    """Check and Watch of `servicer`, taking raw requests."""

    async def check(raw_request: bytes, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return await servicer.Check(
            await decoded(health_pb2.HealthCheckRequest, raw_request, context), context
        )

    async def watch(raw_request: bytes, context: grpc.aio.ServicerContext) -> None:
        await servicer.Watch(await decoded(health_pb2.HealthCheckRequest, raw_request, context), context)

    return grpc.method_handlers_generic_handler(
        SERVICE.full_name,
        {
            "Check": grpc.unary_unary_rpc_method_handler(check, response_serializer=_serialize),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, response_serializer=_serialize),
        },
    )
