"""Standard health checking and server reflection, asked the way grpcurl and ghz ask."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from recserve.server.settings import ServerSettings
from recserve.v1 import recommender_pb2 as pb
from tests.serving import ServerThread

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(channel, service: str = "") -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        .status
    )


def reflect(channel, method: str, **request) -> reflection_pb2.ServerReflectionResponse:
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(iter(call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)))


V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def test_health_is_serving_for_server_and_service(channel) -> None:
    assert check(channel) == SERVING
    assert check(channel, "recserve.v1.Recommender") == SERVING


def test_health_unknown_service_is_not_found(channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        check(channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'no.such.Service'" in caught.value.details()
    assert "recserve.v1.Recommender" in caught.value.details()  # what one may ask for instead
    with pytest.raises(grpc.RpcError) as long_name:
        check(channel, "x" * 20_000)  # quoted whole, it made a status header clients refuse
    assert long_name.value.code() == grpc.StatusCode.NOT_FOUND
    assert "recserve.v1.Recommender" in long_name.value.details()
    assert len(long_name.value.details().encode()) <= 1024


@pytest.mark.parametrize("method", [V1ALPHA, V1])
def test_reflection_lists_services(channel, method: str) -> None:
    response = reflect(channel, method, list_services="")
    names = {service.name for service in response.list_services_response.service}
    assert {"recserve.v1.Recommender", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    "symbol",
    [
        "recserve.v1.Recommender",
        "recserve.v1.Recommender.Recommend",
        "recserve.v1.Recommender.Score",
        "recserve.v1.RecommendRequest",
    ],
)
@pytest.mark.parametrize("method", [V1ALPHA, V1])
def test_reflection_resolves_services_methods_and_messages(channel, method: str, symbol: str) -> None:
    response = reflect(channel, method, file_containing_symbol=symbol)
    assert response.HasField("file_descriptor_response"), response.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].name == "recserve/v1/recommender.proto"
    methods = {m.name for s in files[0].service for m in s.method}
    assert {"Recommend", "Score", "SimilarItems", "GetModelInfo"} <= methods


@pytest.mark.parametrize("method", [V1ALPHA, V1])
@pytest.mark.parametrize(
    ("symbol", "file", "package"),
    [
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"),
        (
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc_reflection/v1alpha/reflection.proto",
            "grpc.reflection.v1alpha",
        ),
    ],
)
def test_every_listed_reflection_service_can_be_described(
    channel, method: str, symbol: str, file: str, package: str
) -> None:
    response = reflect(channel, method, file_containing_symbol=symbol)
    assert response.HasField("file_descriptor_response"), response.error_response
    (described,) = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    assert (described.name, described.package) == (file, package)
    (service,) = described.service
    (info,) = service.method
    assert (info.input_type, info.output_type) == (
        f".{package}.ServerReflectionRequest",
        f".{package}.ServerReflectionResponse",
    )


@pytest.mark.parametrize("method", [V1ALPHA, V1])
def test_reflection_answers_the_protos_with_their_comments(channel, method: str) -> None:
    response = reflect(channel, method, file_containing_symbol="recserve.v1.Recommender.Recommend")
    files = {
        described.name: described
        for raw in response.file_descriptor_response.file_descriptor_proto
        for described in [descriptor_pb2.FileDescriptorProto.FromString(raw)]
    }
    comments = [
        location.leading_comments
        for location in files["recserve/v1/recommender.proto"].source_code_info.location
    ]
    assert any("Top-k items for a user, best first" in comment for comment in comments)
    # Otherwise the very file the generated code holds.
    served = files["recserve/v1/recommender.proto"]
    served.ClearField("source_code_info")
    generated = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(generated)
    assert served == generated


def test_reflection_unknown_symbol_is_not_found(channel) -> None:
    response = reflect(channel, V1ALPHA, file_containing_symbol="recserve.v1.Recommender.Nope")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_not_serving_and_unavailable_until_the_model_is_loaded(server_settings: ServerSettings) -> None:
    from recserve.server.app import load_and_serve_model

    server = ServerThread(server_settings).start(load_model=False)
    try:
        with grpc.insecure_channel(server.address) as channel:
            assert check(channel) == NOT_SERVING
            stub_call = channel.unary_unary(
                "/recserve.v1.Recommender/Recommend",
                request_serializer=pb.RecommendRequest.SerializeToString,
                response_deserializer=pb.RecommendResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub_call(pb.RecommendRequest(user_id="user-1"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in caught.value.details()
            server.run(load_and_serve_model(server.running))
            assert check(channel) == SERVING
            assert stub_call(pb.RecommendRequest(user_id="user-1"), timeout=10).items
    finally:
        server.stop()


def test_grpcurl_style_call_through_reflection_alone(channel) -> None:
    """Resolve the method by reflection, build the request from JSON, decode the answer: as grpcurl does."""
    from google.protobuf import descriptor_pool, json_format, message_factory

    response = reflect(channel, V1, file_containing_symbol="recserve.v1.Recommender.Recommend")
    pool = descriptor_pool.DescriptorPool()  # empty: nothing compiled in, only what the server sent
    for raw in response.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    method = pool.FindMethodByName("recserve.v1.Recommender.Recommend")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse('{"user_id": "user-3", "k": 5}', request_class())
    call = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    answer = json_format.MessageToDict(call(request, timeout=10))
    assert len(answer["items"]) == 5
    assert answer["modelVersion"] == "1"
    assert all(0 < item["score"] < 1 for item in answer["items"])


@pytest.fixture(scope="module")
def aio_address(server_settings: ServerSettings) -> Iterator[str]:
    with ServerThread(server_settings.model_copy(update={"frontend": "aio"})) as running:
        yield running.address


@pytest.mark.parametrize("frontend", ["default", "aio"])
def test_a_request_that_does_not_decode_is_invalid_argument(
    server_address: str, aio_address: str, frontend: str
) -> None:
    # grpc's own registration decoded health and reflection requests with a deserializer, which grpc.aio
    # answers with UNKNOWN when it raises (found by tests/test_fuzz.py).
    with grpc.insecure_channel(aio_address if frontend == "aio" else server_address) as channel:
        for call in (
            lambda: channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff", timeout=10),
            lambda: next(channel.unary_stream("/grpc.health.v1.Health/Watch")(b"\xff", timeout=10)),
            lambda: list(channel.stream_stream(V1ALPHA)(iter([b"\xff"]), timeout=10)),
            lambda: list(channel.stream_stream(V1)(iter([b"\x0a\x02\xff\xff"]), timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert check(channel) == SERVING
        assert reflect(channel, V1, list_services="").list_services_response.service
