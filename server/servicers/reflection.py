"""gRPC server reflection (v1 and v1alpha) that also resolves method symbols.

Load testers such as ghz ask for the file containing `recserve.v1.Recommender.Recommend`; the stock
Python servicer looks the name up in the descriptor pool, which knows services and messages but not
methods, and answers NOT_FOUND. Here a method symbol resolves to its service's file.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


class MethodAwareReflectionServicer(ReflectionServicer):
    """Reflection whose file_containing_symbol also accepts `package.Service.Method`."""

    def _file_containing_symbol(self, request, fully_qualified_name):  # noqa: ANN001, ANN202
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response") or "." not in fully_qualified_name:
            return response
        service_name, method_name = fully_qualified_name.rsplit(".", 1)
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service_name)


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for `service_names` under both the v1 and the v1alpha service names.

    The two protocols are the same messages under different package names, so one servicer answers both.
    """
    names = [*service_names, REFLECTION_V1ALPHA, REFLECTION_V1]
    servicer = MethodAwareReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
