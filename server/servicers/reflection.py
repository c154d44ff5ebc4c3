"""gRPC server reflection (v1 and v1alpha) that also resolves method symbols.

Load testers such as ghz ask for the file containing `recserve.v1.Recommender.Recommend`; the stock
Python servicer looks the name up in the descriptor pool, which knows services and messages but not
methods, and answers NOT_FOUND. Here a method symbol resolves to its service's file. Requests are decoded
here, not by grpc: grpc.aio answers a request that does not decode with UNKNOWN, this INVALID_ARGUMENT.

grpcio-reflection ships only v1alpha's .proto, so `grpc.reflection.v1.ServerReflection` was listed but
could not be described. v1 is the same file under another package; its descriptor is derived from v1alpha's.

recserve's own files are answered with their comments (`recserve/descriptors.binpb`, written with the
generated code), so `grpcurl describe` shows what each service, field and status means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from functools import cache
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from recserve.server.errors import decoded

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add v1's reflection.proto to `pool` (once): v1alpha's messages and service, renamed."""
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = REFLECTION_V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())


Response = reflection_pb2.ServerReflectionResponse


@cache
def commented_files() -> Mapping[str, descriptor_pb2.SourceCodeInfo]:
    """The comments (source info) of the project's .proto files, by file name."""
    raw = (resources.files("recserve") / "descriptors.binpb").read_bytes()
    return {
        file.name: file.source_code_info for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file
    }


def with_comments(response: Response) -> Response:
    """`response` with the comments added to each of the project's files (nothing else changes)."""
    files = response.file_descriptor_response.file_descriptor_proto
    if not files:
        return response
    comments = commented_files()
    for position, raw in enumerate(files):
        described = descriptor_pb2.FileDescriptorProto.FromString(raw)
        if described.name in comments:
            described.source_code_info.CopyFrom(comments[described.name])
            files[position] = described.SerializeToString()
    return response


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
    register_v1_descriptor(descriptor_pool.Default())
    commented_files()  # read now: an install without the file fails at start, not in a client's call
    servicer = MethodAwareReflectionServicer(names)

    async def info(
        raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in servicer.ServerReflectionInfo(_decoded(raw_requests, context), context):
            yield with_comments(response)

    handler = grpc.stream_stream_rpc_method_handler(
        info, response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (REFLECTION_V1ALPHA, REFLECTION_V1)
        )
    )


async def _decoded(
    raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
    async for raw_request in raw_requests:
        yield await decoded(reflection_pb2.ServerReflectionRequest, raw_request, context)
