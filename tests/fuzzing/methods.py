"""Every method the server serves, found in the descriptors, the statuses its docs allow, and raw calls.

Calls go through the channel's generic interface with no serializer, so the bytes a strategy made reach the
server as they are, however broken.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor, FileDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from recserve.inference import grpc_service_pb2
from recserve.server.servicers.inference import UNSUPPORTED
from recserve.server.servicers.reflection import REFLECTION_V1
from recserve.v1 import catalog_pb2, events_pb2, recommender_pb2

SERVED_FILES: tuple[FileDescriptor, ...] = (
    recommender_pb2.DESCRIPTOR,
    events_pb2.DESCRIPTOR,
    catalog_pb2.DESCRIPTOR,
    grpc_service_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
)
# Services served under another name with the same methods: reflection v1 speaks v1alpha's messages.
ALIASES = {"grpc.reflection.v1alpha.ServerReflection": (REFLECTION_V1,)}

C = grpc.StatusCode
# Any call: a request that does not decode is INVALID_ARGUMENT, one over max_receive_message_bytes is
# RESOURCE_EXHAUSTED (README, "The API"). Documented but impossible on the fuzzing server, and so refused:
# UNAVAILABLE (loading, shutting down, state backend down), INTERNAL (a model failure), PERMISSION_DENIED
# (write services disabled), DEADLINE_EXCEEDED for calls without a shorter timeout of their own.
ANY_CALL = frozenset({C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED})
# What else a method may answer, by its docs (README's API table, docs/live-state.md,
# docs/inference-protocol.md "Errors", the health protocol); the rest answer OK or ANY_CALL.
DOCUMENTED: dict[str, frozenset[grpc.StatusCode]] = {
    "/recserve.v1.Recommender/Recommend": frozenset({C.OK, C.NOT_FOUND}),  # a model_version not served
    "/recserve.v1.Recommender/Score": frozenset({C.OK, C.NOT_FOUND}),
    "/recserve.v1.Recommender/SimilarItems": frozenset({C.OK, C.NOT_FOUND}),
    "/recserve.v1.Catalog/GetItem": frozenset({C.OK, C.NOT_FOUND}),
    # NOT_FOUND: unknown model, version or item; DEADLINE_EXCEEDED: its `timeout` parameter ran out queued.
    "/inference.GRPCInferenceService/ModelInfer": frozenset({C.OK, C.NOT_FOUND, C.DEADLINE_EXCEEDED}),
    "/inference.GRPCInferenceService/ModelMetadata": frozenset({C.OK, C.NOT_FOUND}),
    "/inference.GRPCInferenceService/ModelConfig": frozenset({C.OK, C.NOT_FOUND}),
    "/inference.GRPCInferenceService/ModelStatistics": frozenset({C.OK, C.NOT_FOUND}),
    "/grpc.health.v1.Health/Check": frozenset({C.OK, C.NOT_FOUND}),  # a service the server does not serve
    # Model control is off unless model_control_mode is explicit (docs/model-control.md).
    "/inference.GRPCInferenceService/RepositoryModelLoad": frozenset({C.PERMISSION_DENIED}),
    "/inference.GRPCInferenceService/RepositoryModelUnload": frozenset({C.PERMISSION_DENIED}),
}


MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the server's max_receive_message_bytes (the default)
# Their requests queue in the batcher: RESOURCE_EXHAUSTED too when it cannot take one (the queue is full,
# or the deadline would pass first: batching.max_queue_size, max_queue_wait_microseconds, deadline_admission).
BATCHED = frozenset(
    {
        "/recserve.v1.Recommender/Recommend",
        "/recserve.v1.Recommender/Score",
        "/inference.GRPCInferenceService/ModelInfer",
    }
)
# What the client's transport says when it could not take the server's answer (e.g. its headers too large).
LOST_ANSWER = "Stream removed"


@dataclass(frozen=True)
class Method:
    """One RPC as the server serves it: `service` is the name in its path (an alias, for reflection v1)."""

    service: str
    descriptor: MethodDescriptor

    @property
    def path(self) -> str:
        """The call's path, `/package.Service/Method`."""
        return f"/{self.service}/{self.descriptor.name}"

    @property
    def input_type(self) -> Descriptor:
        """The request message's descriptor."""
        return self.descriptor.input_type

    @property
    def client_streaming(self) -> bool:
        """Whether the client sends a stream of requests."""
        return self.descriptor.client_streaming

    @property
    def server_streaming(self) -> bool:
        """Whether the server answers with a stream."""
        return self.descriptor.server_streaming

    def allowed(self) -> frozenset[grpc.StatusCode]:
        """The statuses the docs allow for this method on a SERVING server with every service enabled."""
        if self.service == grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name:
            if self.descriptor.name in UNSUPPORTED:
                return ANY_CALL | {C.UNIMPLEMENTED}
        return ANY_CALL | DOCUMENTED.get(self.path, frozenset({C.OK}))


def served_methods(files: Sequence[FileDescriptor] = SERVED_FILES) -> list[Method]:
    """Every method of every service in `files`, and of their aliases."""
    methods = []
    for file in files:
        for service in file.services_by_name.values():
            for name in (service.full_name, *ALIASES.get(service.full_name, ())):
                methods.extend(Method(name, method) for method in service.methods)
    return methods


@dataclass(frozen=True)
class Outcome:
    """How one call ended; `hung` when it ran into the client's own deadline."""

    code: grpc.StatusCode
    details: str
    hung: bool


def documented(method: Method, requests: Sequence[bytes], outcome: Outcome) -> bool:
    """Whether `outcome` is an answer the docs allow `method` to give `requests`.

    Never a hang, nor an answer the client could not receive; RESOURCE_EXHAUSTED only for a request over
    the size limit, or for a batched method.
    """
    if outcome.hung or outcome.details.startswith(LOST_ANSWER):
        return False
    if outcome.code == C.RESOURCE_EXHAUSTED:
        return method.path in BATCHED or any(len(request) > MAX_REQUEST_BYTES for request in requests)
    return outcome.code in method.allowed()


def invoke(channel: grpc.Channel, method: Method, requests: Sequence[bytes], timeout_s: float) -> Outcome:
    """Send raw `requests` (one, for a unary request) and wait for the status.

    A server-streaming call with one request (health Watch, which never ends by itself) counts as answered
    at its first response; a bidirectional one sends every request, half-closes and reads to the end.
    """
    started = time.monotonic()
    try:
        _call(channel, method, requests, timeout_s)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
    else:
        code, details = grpc.StatusCode.OK, ""
    hung = code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started >= timeout_s * 0.95
    return Outcome(code, details, hung)


def _call(channel: grpc.Channel, method: Method, requests: Sequence[bytes], timeout_s: float) -> None:
    if method.client_streaming:
        stream = channel.stream_stream if method.server_streaming else channel.stream_unary
        responses = stream(method.path)(iter(requests), timeout=timeout_s)
        if method.server_streaming:
            for _ in responses:
                pass
        return
    if not method.server_streaming:
        channel.unary_unary(method.path)(requests[0], timeout=timeout_s)
        return
    responses = channel.unary_stream(method.path)(requests[0], timeout=timeout_s)
    try:
        next(responses, None)
    finally:
        responses.cancel()
