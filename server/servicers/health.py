"""`grpc.health.v1.Health`: grpc's own health servicer, its requests decoded here.

grpc's registration gives the method handlers a deserializer, and grpc.aio answers a request that does not
decode with UNKNOWN; decoded here, it is INVALID_ARGUMENT on both front ends, as on every other service.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

from recserve.server.errors import decoded

SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
_serialize = health_pb2.HealthCheckResponse.SerializeToString


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
