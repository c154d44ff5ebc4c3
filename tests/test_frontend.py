"""The two gRPC front ends: grpc++ (`native`, the default where built) and grpc.aio serve the same API.

The rest of the suite runs on the default front end; here the same calls go to a server on each, and the
native front end's own duties (streams, limits, cancellation, shutdown) are checked on a real server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from recserve.server.frontend import native_available, resolve_frontend
from recserve.server.settings import ServerSettings
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc
from tests.serving import ServerThread

needs_native = pytest.mark.skipif(
    not native_available(), reason="grpc++ front end not built (no libgrpc++-dev)"
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def aio_server(server_settings: ServerSettings) -> Iterator[ServerThread]:
    with ServerThread(server_settings.model_copy(update={"frontend": "aio"})) as running:
        yield running


@pytest.fixture(scope="module")
def native_server(server_settings: ServerSettings) -> Iterator[ServerThread]:
    if not native_available():
        pytest.skip("grpc++ front end not built (no libgrpc++-dev)")
    with ServerThread(server_settings.model_copy(update={"frontend": "native"})) as running:
        yield running


def recommend(address: str, **request) -> pb.RecommendResponse:
    with grpc.insecure_channel(address) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(**request), timeout=30
        )


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def test_auto_picks_native_where_built() -> None:
    assert resolve_frontend("aio") == "aio"
    assert resolve_frontend("auto") == ("native" if native_available() else "aio")


@needs_native
def test_both_front_ends_give_identical_answers(
    aio_server: ServerThread, native_server: ServerThread
) -> None:
    for request in (
        {"user_id": "user-3", "k": 7},
        {"user_id": "user-4", "k": 5, "recent_item_ids": ["item-2", "item-9"]},
        {"user_id": "nobody", "k": 3},
    ):
        assert recommend(native_server.address, **request) == recommend(aio_server.address, **request)


@needs_native
def test_both_front_ends_give_the_same_statuses(
    aio_server: ServerThread, native_server: ServerThread
) -> None:
    def statuses(address: str) -> list[tuple[grpc.StatusCode, str]]:
        with grpc.insecure_channel(address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            undecodable = channel.unary_unary("/recserve.v1.Recommender/Recommend")
            return [
                status_of(lambda: stub.Recommend(pb.RecommendRequest(user_id="user-1", k=-1), timeout=10)),
                status_of(
                    lambda: stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-missing"), timeout=10)
                ),
                status_of(lambda: undecodable(b"\xff\xff\xff", timeout=10)),
                status_of(lambda: channel.unary_unary("/recserve.v1.Recommender/Nope")(b"", timeout=10)),
            ]

    native, aio = statuses(native_server.address), statuses(aio_server.address)
    assert [code for code, _ in native] == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    ]
    assert native == aio


@needs_native
def test_health_watch_streams_status_changes(native_server: ServerThread) -> None:
    with grpc.insecure_channel(native_server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == SERVING
        native_server.run(native_server.running.set_serving(False))
        try:
            assert next(watch).status == NOT_SERVING
        finally:
            native_server.run(native_server.running.set_serving(True))
        assert next(watch).status == SERVING
        watch.cancel()
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == SERVING  # the cancelled stream left the server serving


@needs_native
def test_reflection_answers_every_request_of_one_stream(native_server: ServerThread) -> None:
    with grpc.insecure_channel(native_server.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="recserve.v1.Recommender"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        ]
        responses = list(call(iter(requests), timeout=30))
    assert len(responses) == 3
    assert "recserve.v1.Recommender" in {s.name for s in responses[0].list_services_response.service}
    assert responses[1].file_descriptor_response.file_descriptor_proto
    assert responses[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@needs_native
def test_concurrency_limit_is_resource_exhausted(server_settings: ServerSettings) -> None:
    settings = server_settings.model_copy(update={"frontend": "native", "max_concurrent_rpcs": 1})
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)  # holds the only slot
        assert next(watch).status == SERVING
        code, details = status_of(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Concurrent RPC limit" in details
        watch.cancel()
        deadline = time.monotonic() + 10
        while True:  # the slot frees once the server has seen the cancellation
            try:
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline
                time.sleep(0.05)


@needs_native
def test_abandoned_calls_do_not_hold_up_shutdown(server_settings: ServerSettings) -> None:
    settings = server_settings.model_copy(update={"frontend": "native"})
    running = ServerThread(settings).start()
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            futures = [
                stub.Recommend.future(pb.RecommendRequest(user_id=f"user-{i}", k=5), timeout=0.001)
                for i in range(200)
            ]
            for future in futures:
                future.cancel()
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == SERVING
            started = time.monotonic()
            running.stop(grace_s=0.5)  # the open Watch stream is cancelled after the grace period
            assert time.monotonic() - started < 10
            with pytest.raises(grpc.RpcError):
                list(watch)
    finally:
        if running.loop.is_running():
            running.loop.call_soon_threadsafe(running.loop.stop)


@needs_native
def test_many_concurrent_calls_each_get_their_own_answer(native_server: ServerThread) -> None:
    users = [f"user-{i}" for i in range(64)]
    expected = {user: recommend(native_server.address, user_id=user, k=4) for user in users[:8]}
    answers: dict[str, pb.RecommendResponse] = {}
    lock = threading.Lock()

    async def fire() -> None:
        async with grpc.aio.insecure_channel(native_server.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            replies = await asyncio.gather(
                *(stub.Recommend(pb.RecommendRequest(user_id=user, k=4), timeout=30) for user in users)
            )
        with lock:
            answers.update(zip(users, replies, strict=True))

    asyncio.run(fire())
    assert len(answers) == len(users)
    for user, reply in expected.items():  # batched answers equal single ones (scores up to float rounding)
        assert [item.item_id for item in answers[user].items] == [item.item_id for item in reply.items]
        assert [item.score for item in answers[user].items] == pytest.approx(
            [item.score for item in reply.items]
        )
