"""Typed clients for the recserve API: blocking and asyncio, both returning plain frozen dataclasses.

Callers never handle protobuf messages; conversion happens once, in the dataclasses' `from_proto`.
gRPC failures are not wrapped: they surface as `grpc.RpcError` with the server's status code and details.
Both speak plaintext or TLS (mutual TLS with a client certificate) and can send a bearer token with every
call (`recserve.client.credentials`). Every call carries the caller's OpenTelemetry context (W3C
`traceparent`, or what `OTEL_PROPAGATORS` selects) in its metadata, so the server's spans join the caller's
trace. Only grpc, protobuf, the OpenTelemetry API and the standard library are imported, so the CLI starts
fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate

from recserve.client.credentials import AUTHORIZATION, ChannelSecurity, PemSource, channel_security
from recserve.client.live import AsyncLiveStateCalls, LiveStateCalls
from recserve.client.results import (
    ModelInfo,
    ModelStatistics,
    ModelVersion,
    Recommendation,
    ScoreResult,
    SimilarItems,
)
from recserve.inference import grpc_service_pb2 as kserve_pb
from recserve.inference import grpc_service_pb2_grpc as kserve_grpc
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:8001"
SERVING = "SERVING"
# While waiting for a server to come up these mean "not yet" rather than "never": not listening yet, too
# slow to answer, or the health service does not know the service name until the model is loaded.
_NOT_YET_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND}
)
_MAX_HEALTH_PROBE_S = 1.0
# gRPC's reconnect backoff grows to 120 s by default, so a client that saw the server down could notice it
# come back minutes late (measured: 6.8 s late after 20 s down). Retrying a refused connection once a
# second is cheap. Everything else stays at gRPC's defaults.
CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 1000),)

Metadata = Sequence[tuple[str, str | bytes]]


def _health_status(response: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _ids(name: str, values: Iterable[str]) -> list[str]:
    """The ids as a list. Raises TypeError for a bare string, which protobuf would split into characters."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of ids, not a single string: {values!r}")
    return list(values)


def _recommend_request(
    user_id: str,
    k: int,
    recent_item_ids: Iterable[str],
    exclude_item_ids: Iterable[str],
    include_recent_items: bool,
    priority: int,
    ignore_history: bool,
) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        user_id=user_id,
        k=k,
        recent_item_ids=_ids("recent_item_ids", recent_item_ids),
        exclude_item_ids=_ids("exclude_item_ids", exclude_item_ids),
        include_recent_items=include_recent_items,
        priority=priority,
        ignore_history=ignore_history,
    )


def _score_request(
    user_id: str, item_ids: Iterable[str], recent_item_ids: Iterable[str], priority: int, ignore_history: bool
) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        user_id=user_id,
        item_ids=_ids("item_ids", item_ids),
        recent_item_ids=_ids("recent_item_ids", recent_item_ids),
        priority=priority,
        ignore_history=ignore_history,
    )


class _ClientBase:
    """What both clients share: the target, the default deadline and the metadata sent with every call."""

    def __init__(
        self,
        target: str,
        timeout_s: float | None,
        metadata: Metadata | None,
        security: ChannelSecurity,
        channel: object | None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        given = tuple(metadata or ())
        if security.metadata and any(key.lower() == AUTHORIZATION for key, _ in given):
            raise ValueError("give token or an authorization metadata entry, not both")
        if channel is not None and (security.credentials is not None or security.options):
            raise ValueError("TLS arguments configure the channel the client opens: not with channel=")
        self._metadata = (*given, *security.metadata)

    def _call_options(self, timeout_s: float | None) -> dict[str, object]:
        """Keyword arguments for a stub call; a per-call `timeout_s` of None means the client default."""
        return {
            "timeout": self.timeout_s if timeout_s is None else timeout_s,
            "metadata": self._call_metadata(),
        }

    def _call_metadata(self) -> Metadata:
        """The client's metadata plus the current trace context (nothing extra outside a span)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return (*self._metadata, *carrier.items()) if carrier else self._metadata

    def _timeout_error(self, timeout_s: float, last_status: str) -> TimeoutError:
        return TimeoutError(
            f"{self.target} was not SERVING after {timeout_s:g} s (last status: {last_status})"
        )


class RecommenderClient(_ClientBase, LiveStateCalls):
    """Blocking client for every recserve service. Use as a context manager to close the channel it created.

    Recommendations here; events and catalog writes from `LiveStateCalls` (record_events, upsert_items, ...).

    Args:
        target: HOST:PORT of the server, dialled with `CHANNEL_OPTIONS`, in plaintext unless a TLS argument
            is given; ignored when `channel` is given.
        timeout_s: default deadline per call; None means no deadline.
        channel: an existing channel to use; the caller keeps ownership and closes it.
        metadata: (key, value) pairs sent with every call.
        tls: TLS, verifying the server against the system's root certificates (implied by the next two).
        root_certificates: PEM root certificates to verify the server with: bytes (the PEM text) or a
            path to a PEM file.
        certificate_chain: PEM client certificate for mutual TLS (bytes or a path), with `private_key`.
        private_key: PEM private key of `certificate_chain` (bytes or a path).
        server_name: the name to verify in the server's certificate instead of the target's host.
        token: bearer token, sent as `authorization: Bearer <token>` metadata with every call.

    Raises:
        ValueError: contradictory arguments (a certificate without its key, TLS arguments with `channel`).
        OSError: a PEM file cannot be read.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 10.0,
        channel: grpc.Channel | None = None,
        metadata: Metadata | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        security = channel_security(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            server_name=server_name,
            token=token,
        )
        super().__init__(target, timeout_s, metadata, security, channel)
        self._channel = channel if channel is not None else _open_channel(target, security)
        self._owns_channel = channel is None
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: str,
        k: int = 0,
        recent_item_ids: Iterable[str] = (),
        exclude_item_ids: Iterable[str] = (),
        include_recent_items: bool = False,
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
        model_version: str = "",
    ) -> Recommendation:
        """Top-k items for the user (k=0: the server default); see RecommendRequest in the API.

        `model_version` "" is the server's default version; one it does not serve is NOT_FOUND.
        """
        request = _recommend_request(
            user_id, k, recent_item_ids, exclude_item_ids, include_recent_items, priority, ignore_history
        )
        request.model_version = model_version
        return Recommendation.from_proto(self._stub.Recommend(request, **self._call_options(timeout_s)))

    def score(
        self,
        user_id: str,
        item_ids: Iterable[str],
        recent_item_ids: Iterable[str] = (),
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
        model_version: str = "",
    ) -> ScoreResult:
        """P(like) for each item, in order. Unknown items are NOT_FOUND; `model_version` as in recommend."""
        request = _score_request(user_id, item_ids, recent_item_ids, priority, ignore_history)
        request.model_version = model_version
        return ScoreResult.from_proto(self._stub.Score(request, **self._call_options(timeout_s)))

    def similar_items(self, item_id: str, k: int = 0, timeout_s: float | None = None) -> SimilarItems:
        """The k items closest to `item_id`, excluding itself. An unknown item id is NOT_FOUND."""
        request = pb.SimilarItemsRequest(item_id=item_id, k=k)
        return SimilarItems.from_proto(self._stub.SimilarItems(request, **self._call_options(timeout_s)))

    def model_info(self, timeout_s: float | None = None) -> ModelInfo:
        """What model the server has loaded."""
        response = self._stub.GetModelInfo(pb.GetModelInfoRequest(), **self._call_options(timeout_s))
        return ModelInfo.from_proto(response)

    def model_versions(self, timeout_s: float | None = None) -> list[ModelVersion]:
        """Every model at every version the server knows, with its state and why (RepositoryIndex)."""
        stub = kserve_grpc.GRPCInferenceServiceStub(self._channel)
        index = stub.RepositoryIndex(kserve_pb.RepositoryIndexRequest(), **self._call_options(timeout_s))
        return [ModelVersion(m.name, m.version, m.state, m.reason) for m in index.models]

    def load_model(self, model_name: str = "recommender", timeout_s: float | None = None) -> None:
        """Load the versions the model's policy picks now (explicit model control; an admin token)."""
        stub = kserve_grpc.GRPCInferenceServiceStub(self._channel)
        request = kserve_pb.RepositoryModelLoadRequest(model_name=model_name)
        stub.RepositoryModelLoad(request, **self._call_options(timeout_s))

    def unload_model(self, model_name: str = "recommender", timeout_s: float | None = None) -> None:
        """Stop serving every version of the model (explicit model control; an admin token)."""
        stub = kserve_grpc.GRPCInferenceServiceStub(self._channel)
        request = kserve_pb.RepositoryModelUnloadRequest(model_name=model_name)
        stub.RepositoryModelUnload(request, **self._call_options(timeout_s))

    def model_statistics(self, timeout_s: float | None = None) -> ModelStatistics:
        """Batching and pipeline-stage counters since the model was loaded."""
        request = pb.GetModelStatisticsRequest()
        return ModelStatistics.from_proto(
            self._stub.GetModelStatistics(request, **self._call_options(timeout_s))
        )

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """The standard health status of `service` ("" = the whole server), e.g. "SERVING"."""
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_status(self._health.Check(request, **self._call_options(timeout_s)))

    def wait_until_serving(self, timeout_s: float, service: str = "", poll_interval_s: float = 0.1) -> None:
        """Poll health until `service` is SERVING, riding out a server that is not up yet.

        Raises:
            TimeoutError: not SERVING within `timeout_s`.
            grpc.RpcError: the health check failed in a way waiting will not fix.
        """
        deadline = time.monotonic() + timeout_s
        last_status = "no answer"
        while (remaining_s := deadline - time.monotonic()) > 0:
            try:
                last_status = self.health(service, timeout_s=min(remaining_s, _MAX_HEALTH_PROBE_S))
            except grpc.RpcError as error:
                last_status = _not_yet_status(error)
            if last_status == SERVING:
                return
            time.sleep(max(0.0, min(poll_interval_s, deadline - time.monotonic())))
        raise self._timeout_error(timeout_s, last_status)

    def close(self) -> None:
        """Close the channel if this client created it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRecommenderClient(_ClientBase, AsyncLiveStateCalls):
    """Asyncio client (grpc.aio) with the same methods as `RecommenderClient`, as coroutines.

    Create it inside a running event loop; use as an async context manager to close the channel it created.
    The arguments are `RecommenderClient`'s.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 10.0,
        channel: grpc.aio.Channel | None = None,
        metadata: Metadata | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        security = channel_security(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            server_name=server_name,
            token=token,
        )
        super().__init__(target, timeout_s, metadata, security, channel)
        self._channel = channel if channel is not None else _open_aio_channel(target, security)
        self._owns_channel = channel is None
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def recommend(
        self,
        user_id: str,
        k: int = 0,
        recent_item_ids: Iterable[str] = (),
        exclude_item_ids: Iterable[str] = (),
        include_recent_items: bool = False,
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
        model_version: str = "",
    ) -> Recommendation:
        """Top-k items for the user (k=0: the server default); see RecommendRequest in the API.

        `model_version` "" is the server's default version; one it does not serve is NOT_FOUND.
        """
        request = _recommend_request(
            user_id, k, recent_item_ids, exclude_item_ids, include_recent_items, priority, ignore_history
        )
        request.model_version = model_version
        return Recommendation.from_proto(await self._stub.Recommend(request, **self._call_options(timeout_s)))

    async def score(
        self,
        user_id: str,
        item_ids: Iterable[str],
        recent_item_ids: Iterable[str] = (),
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
        model_version: str = "",
    ) -> ScoreResult:
        """P(like) for each item, in order. Unknown items are NOT_FOUND; `model_version` as in recommend."""
        request = _score_request(user_id, item_ids, recent_item_ids, priority, ignore_history)
        request.model_version = model_version
        return ScoreResult.from_proto(await self._stub.Score(request, **self._call_options(timeout_s)))

    async def similar_items(self, item_id: str, k: int = 0, timeout_s: float | None = None) -> SimilarItems:
        """The k items closest to `item_id`, excluding itself. An unknown item id is NOT_FOUND."""
        request = pb.SimilarItemsRequest(item_id=item_id, k=k)
        return SimilarItems.from_proto(
            await self._stub.SimilarItems(request, **self._call_options(timeout_s))
        )

    async def model_info(self, timeout_s: float | None = None) -> ModelInfo:
        """What model the server has loaded."""
        response = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), **self._call_options(timeout_s))
        return ModelInfo.from_proto(response)

    async def model_statistics(self, timeout_s: float | None = None) -> ModelStatistics:
        """Batching and pipeline-stage counters since the model was loaded."""
        request = pb.GetModelStatisticsRequest()
        response = await self._stub.GetModelStatistics(request, **self._call_options(timeout_s))
        return ModelStatistics.from_proto(response)

    async def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """The standard health status of `service` ("" = the whole server), e.g. "SERVING"."""
        request = health_pb2.HealthCheckRequest(service=service)
        return _health_status(await self._health.Check(request, **self._call_options(timeout_s)))

    async def wait_until_serving(
        self, timeout_s: float, service: str = "", poll_interval_s: float = 0.1
    ) -> None:
        """Poll health until `service` is SERVING, riding out a server that is not up yet.

        Raises:
            TimeoutError: not SERVING within `timeout_s`.
            grpc.RpcError: the health check failed in a way waiting will not fix.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_status = "no answer"
        while (remaining_s := deadline - loop.time()) > 0:
            try:
                last_status = await self.health(service, timeout_s=min(remaining_s, _MAX_HEALTH_PROBE_S))
            except grpc.RpcError as error:
                last_status = _not_yet_status(error)
            if last_status == SERVING:
                return
            await asyncio.sleep(max(0.0, min(poll_interval_s, deadline - loop.time())))
        raise self._timeout_error(timeout_s, last_status)

    async def close(self) -> None:
        """Close the channel if this client created it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _open_channel(target: str, security: ChannelSecurity) -> grpc.Channel:
    options = (*CHANNEL_OPTIONS, *security.options)
    if security.credentials is None:
        return grpc.insecure_channel(target, options)
    return grpc.secure_channel(target, security.credentials, options)


def _open_aio_channel(target: str, security: ChannelSecurity) -> grpc.aio.Channel:
    options = (*CHANNEL_OPTIONS, *security.options)
    if security.credentials is None:
        return grpc.aio.insecure_channel(target, options)
    return grpc.aio.secure_channel(target, security.credentials, options)


def _not_yet_status(error: grpc.RpcError) -> str:
    """The status name of an error that waiting may cure. Re-raises any other error."""
    code = error.code()  # type: ignore[attr-defined]  # every RpcError from a stub call is also a Call
    if code not in _NOT_YET_CODES:
        raise error
    return code.name
