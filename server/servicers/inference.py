"""`inference.GRPCInferenceService` (KServe v2 / Triton): converts messages and delegates the rest.

The protocol's logic is in `recserve.server.kserve`.

Register with `errors.unary_handlers(SERVICE, InferenceServicer(slot, models))` for the unary methods and
`stream_handlers()` for ModelStreamInfer. The methods recserve does not implement answer UNIMPLEMENTED,
saying why and what to use instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from recserve.inference import grpc_service_pb2 as pb
from recserve.server.exceptions import PermissionDeniedError, UnavailableError, UnimplementedError
from recserve.server.kserve import protocol, single_row
from recserve.server.kserve.service import InferenceService, server_version
from recserve.server.model_control.manager import ModelManager
from recserve.server.model_control.slot import ServiceSlot

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

_NO_SHARED_MEMORY = "shared-memory tensors are not supported; send tensor data in the request"
UNSUPPORTED: dict[str, str] = {
    "SystemSharedMemoryStatus": _NO_SHARED_MEMORY,
    "SystemSharedMemoryRegister": _NO_SHARED_MEMORY,
    "SystemSharedMemoryUnregister": _NO_SHARED_MEMORY,
    "CudaSharedMemoryStatus": _NO_SHARED_MEMORY + " (recserve runs on CPUs)",
    "CudaSharedMemoryRegister": _NO_SHARED_MEMORY + " (recserve runs on CPUs)",
    "CudaSharedMemoryUnregister": _NO_SHARED_MEMORY + " (recserve runs on CPUs)",
    "TraceSetting": "tracing is configured in the server's settings, not over this protocol",
    "LogSettings": "logging is configured in the server's settings (--log-level), not over this protocol",
    "ModelStreamInfer": "streaming inference is not supported; call ModelInfer",
}


def unsupported_message(method: str) -> str:
    """What an UNIMPLEMENTED answer to `method` says."""
    return f"recserve does not implement {SERVICE.full_name}/{method}: {UNSUPPORTED[method]}"


MODEL_CONTROL_METHODS = ("RepositoryModelLoad", "RepositoryModelUnload")


class InferenceServicer:
    """Implements the protocol over the versions in `slot`, changed by `models` (model control)."""

    def __init__(self, slot: ServiceSlot, models: ModelManager, control_mode: str = "none") -> None:
        self._inference = InferenceService(slot, models)
        self._models = models
        self._control_mode = control_mode
        self._version = server_version()

    async def ServerLive(  # noqa: N802
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """Always live while it answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready once the model is loaded and warmed up."""
        return pb.ServerReadyResponse(ready=self._inference.server_ready())

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """False for unknown models and versions, as for a model still loading."""
        return pb.ModelReadyResponse(ready=self._inference.model_ready(request.name, request.version))

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """Name, version, extensions."""
        return protocol.server_metadata(self._version)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """Tensors of one model."""
        return protocol.model_metadata(self._inference.model(request.name, request.version))

    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        """Configuration of one model."""
        model = self._inference.model(request.name, request.version)
        return protocol.model_config(model, self._inference.policy)

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One inference; outputs come back raw if the inputs came raw, else as typed contents."""
        common = await single_row.recommend_one(self._inference, request, context.time_remaining())
        if common is not None:  # one user on `recommender`, as Triton's clients send it
            return common
        response = await self._inference.infer(protocol.infer_request(request, context.time_remaining()))
        return protocol.infer_response(response, raw=bool(request.raw_input_contents))

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        """Statistics of one model at one version; no version: at every served one; no name: every model."""
        if request.name and request.version:
            return protocol.model_statistics([self._inference.model(request.name, request.version)])
        return protocol.model_statistics(self._inference.models(request.name))

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every model at every version the repository or the server has, with its state and why."""
        return protocol.repository_index(self._inference.index(ready_only=request.ready))

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Load (or reload) the model: the versions its policy picks on disk now; returns once they serve."""
        self._check_control(request.model_name)
        protocol.check_load_parameters(request.parameters)
        if not await self._models.reconcile():
            raise UnavailableError(
                f"model {request.model_name!r} could not be loaded: {self._inference.rejections()}"
            )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop serving every version; queued requests finish first."""
        self._check_control(request.model_name)
        protocol.check_unload_parameters(request.parameters)
        await self._models.unload_all()
        return pb.RepositoryModelUnloadResponse()

    def _check_control(self, model_name: str) -> None:
        if self._control_mode != "explicit":
            raise PermissionDeniedError(
                f"model control is off (model_control_mode: {self._control_mode}): start the server with "
                "model_control_mode: explicit (--model-control-mode explicit, RECSERVE_MODEL_CONTROL_MODE) "
                "and call with a token holding the admin role"
            )
        self._inference.check_controllable(model_name)

    def __getattr__(self, method: str) -> Any:
        """The methods in UNSUPPORTED: each raises UnimplementedError, which answers UNIMPLEMENTED."""
        if method not in UNSUPPORTED:
            raise AttributeError(method)

        async def unsupported(request: object, context: object) -> None:
            raise UnimplementedError(unsupported_message(method))

        return unsupported


async def _model_stream_infer(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, unsupported_message("ModelStreamInfer"))
    yield b""  # pragma: no cover - abort raises; the yield makes this a stream handler


def stream_handlers() -> grpc.GenericRpcHandler:
    """ModelStreamInfer as a bidirectional stream that answers UNIMPLEMENTED at once."""
    return grpc.method_handlers_generic_handler(
        SERVICE.full_name,
        {
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                _model_stream_infer, request_deserializer=None, response_serializer=None
            )
        },
    )
