"""The KServe v2 / Triton protocol, driven by Triton's own client (tritonclient) against a real server.

Typed-contents requests, which tritonclient never sends (it always sends raw bytes), go through the
generated stubs of protos/recserve/inference instead.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.server.settings import ServerSettings
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc
from tests.serving import ServerThread
from tests.triton_client import import_tritonclient

grpcclient, aioclient = import_tritonclient()
MODELS = ("recommender", "user_tower", "item_tower", "ranker")
USER = "user-3"
CONTEXT = ["item-42", "item-7"]


@pytest.fixture(scope="module")
def triton(server_address: str):
    client = grpcclient.InferenceServerClient(server_address)
    yield client
    client.close()


@pytest.fixture
def kstub(channel: grpc.Channel) -> kpb_grpc.GRPCInferenceServiceStub:
    return kpb_grpc.GRPCInferenceServiceStub(channel)


def raw_input(name: str, array: np.ndarray, datatype: str):
    """A tritonclient input; set_data_from_numpy sends raw_input_contents."""
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def strings(rows: list[list[str]]) -> np.ndarray:
    return np.array([[value.encode() for value in row] for row in rows], dtype=object)


def typed_input(
    name: str, datatype: str, shape: list[int], **contents
) -> kpb.ModelInferRequest.InferInputTensor:
    return kpb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=kpb.InferTensorContents(**contents)
    )


def typed_output(response: kpb.ModelInferResponse, name: str) -> kpb.ModelInferResponse.InferOutputTensor:
    return next(output for output in response.outputs if output.name == name)


# --- health, metadata, configuration -----------------------------------------------------------------------


def test_server_live_ready_and_metadata(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata.name == "recserve"
    assert metadata.version == importlib.metadata.version("recserve")
    assert set(metadata.extensions) == {
        "model_configuration",
        "schedule_policy",
        "statistics",
        "model_repository",
    }


def test_every_model_is_ready_at_the_served_version_only(triton) -> None:
    for model in MODELS:
        assert triton.is_model_ready(model)
        assert triton.is_model_ready(model, "1")
        assert not triton.is_model_ready(model, "2")
    assert not triton.is_model_ready("no_such_model")


def test_recommender_metadata(triton) -> None:
    metadata = triton.get_model_metadata("recommender")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("recommender", ["1"], "recserve")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("user_id", "BYTES", [-1, 1]),
        ("recent_item_ids", "BYTES", [-1, -1]),
        ("k", "INT32", [-1, 1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("item_ids", "BYTES", [-1, -1]),
        ("scores", "FP32", [-1, -1]),
    ]


def test_tower_and_ranker_metadata(triton) -> None:
    def tensors(model: str, side: str) -> list[tuple]:
        return [(t.name, t.datatype, list(t.shape)) for t in getattr(triton.get_model_metadata(model), side)]

    assert tensors("user_tower", "inputs") == [
        ("user_id", "BYTES", [-1, 1]),
        ("recent_item_ids", "BYTES", [-1, -1]),
    ]
    assert tensors("user_tower", "outputs") == [("embedding", "FP32", [-1, 32])]
    assert tensors("item_tower", "inputs") == [("item_id", "BYTES", [-1, 1])]
    assert tensors("item_tower", "outputs") == [("embedding", "FP32", [-1, 32])]
    assert tensors("ranker", "inputs") == [
        ("user_embedding", "FP32", [-1, 32]),
        ("item_id", "BYTES", [-1, 1]),
    ]
    assert tensors("ranker", "outputs") == [("probability", "FP32", [-1, 1])]


def test_recommender_config_is_the_batching_config(triton, server: ServerThread) -> None:
    config = triton.get_model_config("recommender").config
    batching = server.running.service.config.batching
    assert config.name == "recommender" and config.platform == "recserve" and config.backend == "recserve"
    assert config.max_batch_size == batching.max_batch_size
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("user_id", 13, [1], False),  # 13 = TYPE_STRING, the configuration's name for BYTES
        ("recent_item_ids", 13, [-1], True),
        ("k", 8, [1], True),  # TYPE_INT32
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("item_ids", 13, [-1]),
        ("scores", 11, [-1]),  # TYPE_FP32
    ]
    dynamic = config.dynamic_batching
    assert dynamic.max_queue_delay_microseconds == batching.max_queue_delay_microseconds
    assert list(dynamic.preferred_batch_size) == batching.preferred_batch_sizes
    assert dynamic.priority_levels == batching.priority_levels
    assert dynamic.default_queue_policy.max_queue_size == batching.max_queue_size
    (group,) = config.instance_group
    assert group.count == batching.instance_count and group.kind == 2  # KIND_CPU
    assert config.parameters["max_k"].string_value == "200"
    assert config.version_policy.latest.num_versions == 1  # the default policy: the newest version
    assert not triton.get_model_config("user_tower").config.HasField("dynamic_batching")


def test_repository_index_lists_the_four_models(triton, kstub) -> None:
    index = triton.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [(m, "1", "READY") for m in MODELS]
    assert len(kstub.RepositoryIndex(kpb.RepositoryIndexRequest(ready=True), timeout=10).models) == 4


def test_health_and_reflection_know_the_service(channel: grpc.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService.ModelInfer"
    )
    (answer,) = reflection.ServerReflectionInfo(iter([ask]), timeout=10)
    assert answer.HasField("file_descriptor_response"), answer.error_response


# --- inference ---------------------------------------------------------------------------------------------


def test_recommender_gives_recommends_answer(triton, stub: recommender_pb2_grpc.RecommenderStub) -> None:
    inputs = [
        raw_input("user_id", strings([[USER], ["nobody-at-all"]]), "BYTES"),
        raw_input("recent_item_ids", strings([CONTEXT, ["", ""]]), "BYTES"),
        raw_input("k", np.array([[5], [5]], dtype=np.int32), "INT32"),
    ]
    result = triton.infer("recommender", inputs, request_id="req-17")
    assert result.get_response().id == "req-17"
    assert result.get_response().model_version == "1"
    for row, (user, context) in enumerate([(USER, CONTEXT), ("nobody-at-all", [])]):
        expected = stub.Recommend(pb.RecommendRequest(user_id=user, recent_item_ids=context, k=5), timeout=30)
        assert [i.decode() for i in result.as_numpy("item_ids")[row]] == [i.item_id for i in expected.items]
        np.testing.assert_allclose(
            result.as_numpy("scores")[row], [i.score for i in expected.items], rtol=1e-6
        )


def test_recommender_typed_contents_come_back_typed(kstub, stub) -> None:
    request = kpb.ModelInferRequest(
        model_name="recommender",
        id="typed-1",
        inputs=[
            typed_input("user_id", "BYTES", [1, 1], bytes_contents=[USER.encode()]),
            typed_input("k", "INT32", [1, 1], int_contents=[4]),
        ],
    )
    response = kstub.ModelInfer(request, timeout=30)
    assert response.id == "typed-1" and not response.raw_output_contents
    item_ids, scores = typed_output(response, "item_ids"), typed_output(response, "scores")
    assert list(item_ids.shape) == [1, 4] and item_ids.datatype == "BYTES"
    expected = stub.Recommend(pb.RecommendRequest(user_id=USER, k=4), timeout=30)
    assert [i.decode() for i in item_ids.contents.bytes_contents] == [i.item_id for i in expected.items]
    np.testing.assert_allclose(scores.contents.fp32_contents, [i.score for i in expected.items], rtol=1e-6)


def test_rows_with_different_k_are_padded_to_the_widest(triton) -> None:
    inputs = [
        raw_input("user_id", strings([[USER], ["user-5"]]), "BYTES"),
        raw_input("k", np.array([[2], [6]], dtype=np.int32), "INT32"),
    ]
    result = triton.infer("recommender", inputs)
    item_ids, scores = result.as_numpy("item_ids"), result.as_numpy("scores")
    assert item_ids.shape == scores.shape == (2, 6)
    assert list(item_ids[0, 2:]) == [b""] * 4 and list(scores[0, 2:]) == [0.0] * 4
    assert all(item_ids[1]) and (scores[1] > 0).all()


def test_default_k_and_only_the_outputs_asked_for(triton) -> None:
    inputs = [raw_input("user_id", strings([[USER]]), "BYTES")]
    result = triton.infer("recommender", inputs, outputs=[grpcclient.InferRequestedOutput("scores")])
    assert [output.name for output in result.get_response().outputs] == ["scores"]
    assert result.as_numpy("scores").shape == (1, 10)
    assert result.as_numpy("item_ids") is None


def test_user_tower_is_the_embedding_recommend_searches_with(triton, server: ServerThread) -> None:
    model = server.running.service.model
    result = triton.infer(
        "user_tower",
        [
            raw_input("user_id", strings([[USER], ["nobody-at-all"]]), "BYTES"),
            raw_input("recent_item_ids", strings([CONTEXT, ["", ""]]), "BYTES"),
        ],
    )
    embedding = result.as_numpy("embedding")
    context = np.array([[model.items.index_of(i) for i in CONTEXT], [0, 0]], dtype=np.int32)
    users = np.array([model.users.index_of(USER), 0], dtype=np.int32)
    recent = np.where((context > 0)[..., None], model.item_embeddings[context - 1], 0.0)
    expected = model.user_tower(user_index=users, recent_item_embeddings=recent)["embedding"]
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


def test_item_tower_is_the_indexed_embedding(triton, kstub, version_dir: Path) -> None:
    items = ["item-1", "item-7", "item-42"]
    stored = np.load(version_dir / "item_embeddings.npy")
    rows = [version_dir.joinpath("item_ids.txt").read_text().splitlines().index(item) for item in items]
    raw = triton.infer("item_tower", [raw_input("item_id", strings([[i] for i in items]), "BYTES")])
    np.testing.assert_allclose(raw.as_numpy("embedding"), stored[rows], rtol=1e-5, atol=1e-6)
    typed = kstub.ModelInfer(
        kpb.ModelInferRequest(
            model_name="item_tower",
            inputs=[typed_input("item_id", "BYTES", [3, 1], bytes_contents=[i.encode() for i in items])],
        ),
        timeout=30,
    )
    output = typed_output(typed, "embedding")
    assert list(output.shape) == [3, 32] and output.datatype == "FP32"
    np.testing.assert_allclose(np.reshape(output.contents.fp32_contents, (3, 32)), stored[rows], atol=1e-6)


def test_user_tower_then_ranker_gives_scores_answer(triton, kstub, stub) -> None:
    items = ["item-1", "item-7", "item-42"]
    user = [
        raw_input("user_id", strings([[USER]] * 3), "BYTES"),
        raw_input("recent_item_ids", strings([CONTEXT] * 3), "BYTES"),
    ]
    embeddings = triton.infer("user_tower", user).as_numpy("embedding")
    ranked = triton.infer(
        "ranker",
        [
            raw_input("user_embedding", embeddings, "FP32"),
            raw_input("item_id", strings([[i] for i in items]), "BYTES"),
        ],
    ).as_numpy("probability")
    expected = stub.Score(pb.ScoreRequest(user_id=USER, recent_item_ids=CONTEXT, item_ids=items), timeout=30)
    assert ranked.shape == (3, 1)
    np.testing.assert_allclose(ranked[:, 0], expected.scores, rtol=1e-5)
    typed = kstub.ModelInfer(
        kpb.ModelInferRequest(
            model_name="ranker",
            inputs=[
                typed_input("user_embedding", "FP32", [3, 32], fp32_contents=embeddings.reshape(-1).tolist()),
                typed_input("item_id", "BYTES", [3, 1], bytes_contents=[i.encode() for i in items]),
            ],
        ),
        timeout=30,
    )
    np.testing.assert_allclose(
        typed_output(typed, "probability").contents.fp32_contents, expected.scores, rtol=1e-5
    )


def test_priority_and_timeout_parameters(triton) -> None:
    inputs = [raw_input("user_id", strings([[USER]]), "BYTES")]
    assert triton.infer("recommender", inputs, priority=1).as_numpy("scores").shape == (1, 10)
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        triton.infer("recommender", inputs, priority=7)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "priority" in caught.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        triton.infer("recommender", inputs, timeout=1)  # 1 µs: over before any batch can start
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"


# --- statistics and batching -------------------------------------------------------------------------------


def model_stats(triton, model: str):
    (stats,) = triton.get_inference_statistics(model).model_stats
    return stats


def test_statistics_count_each_execution(triton) -> None:
    before = model_stats(triton, "user_tower")
    started_ms = time.time() * 1000
    for _ in range(2):
        triton.infer("user_tower", [raw_input("user_id", strings([[USER], ["user-4"], ["user-5"]]), "BYTES")])
    after = model_stats(triton, "user_tower")
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 2
    success = after.inference_stats.success
    assert success.count - before.inference_stats.success.count == 6
    assert success.ns > before.inference_stats.success.ns
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    size_3 = {b.batch_size: b.compute_infer.count for b in after.batch_stats}[3]
    assert size_3 - {b.batch_size: b.compute_infer.count for b in before.batch_stats}.get(3, 0) == 2
    assert {b.batch_size: b.compute_infer.ns for b in after.batch_stats}[3] > 0
    assert after.last_inference >= started_ms - 1000
    names = [s.name for s in triton.get_inference_statistics().model_stats]
    assert names == list(MODELS)


def test_model_infer_and_recommend_share_batches(triton, server_address: str) -> None:
    """A burst from Triton's asyncio client and our API at once: fewer executions than requests."""
    calls = 48

    async def burst() -> None:
        client = aioclient.InferenceServerClient(server_address)
        async with grpc.aio.insecure_channel(server_address) as channel:
            recommender = recommender_pb2_grpc.RecommenderStub(channel)

            async def infer(n: int) -> None:
                tensor = aioclient.InferInput("user_id", [1, 1], "BYTES")
                tensor.set_data_from_numpy(strings([[f"user-{n}"]]))
                result = await client.infer("recommender", [tensor])
                assert result.as_numpy("item_ids").shape == (1, 10)

            async def recommend(n: int) -> None:
                response = await recommender.Recommend(pb.RecommendRequest(user_id=f"user-{n}"), timeout=30)
                assert len(response.items) == 10

            await asyncio.gather(*(call(n) for n in range(1, calls + 1) for call in (infer, recommend)))
        await client.close()

    before = model_stats(triton, "recommender")
    asyncio.run(burst())
    after = model_stats(triton, "recommender")
    requests = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert requests == 2 * calls
    assert executions < requests, f"{requests} requests in {executions} batches"
    assert after.inference_stats.queue.ns > before.inference_stats.queue.ns
    assert max(b.batch_size for b in after.batch_stats) > 1


# --- what is not implemented --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "method"),
    [
        (lambda c: c.get_system_shared_memory_status(), "SystemSharedMemoryStatus"),
        (lambda c: c.unregister_cuda_shared_memory(), "CudaSharedMemoryUnregister"),
        (lambda c: c.get_trace_settings(), "TraceSetting"),
        (lambda c: c.get_log_settings(), "LogSettings"),
    ],
)
def test_unsupported_methods_are_unimplemented(triton, call, method: str) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        call(triton)
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert f"GRPCInferenceService/{method}" in caught.value.message()
    assert triton.is_server_live()


@pytest.mark.parametrize(
    "call", [lambda c: c.load_model("recommender"), lambda c: c.unload_model("recommender")]
)
def test_model_control_is_refused_unless_enabled(triton, call) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as caught:
        call(triton)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "model_control_mode: explicit" in caught.value.message()
    assert triton.is_model_ready("recommender")


def test_streaming_inference_is_unimplemented_and_the_server_goes_on(kstub, triton, stub) -> None:
    request = kpb.ModelInferRequest(
        model_name="recommender", inputs=[typed_input("user_id", "BYTES", [1, 1], bytes_contents=[b"user-1"])]
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(kstub.ModelStreamInfer(iter([request, request]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "call ModelInfer" in caught.value.details()
    assert triton.is_server_ready()
    assert (
        triton.infer("recommender", [raw_input("user_id", strings([[USER]]), "BYTES")])
        .as_numpy("scores")
        .size
    )
    assert stub.Recommend(pb.RecommendRequest(user_id=USER), timeout=30).items


# --- before the model is loaded -----------------------------------------------------------------------------


def test_live_but_not_ready_while_the_model_loads(server_settings: ServerSettings) -> None:
    server = ServerThread(server_settings).start(load_model=False)
    client = grpcclient.InferenceServerClient(server.address)
    try:
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert not client.is_model_ready("recommender")
        assert client.get_server_metadata().name == "recserve"
        index = client.get_model_repository_index()
        assert {(m.name, m.state) for m in index.models} == {(m, "LOADING") for m in MODELS}
        with grpc.insecure_channel(server.address) as channel:
            ready_only = kpb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                kpb.RepositoryIndexRequest(ready=True), timeout=10
            )
        assert not ready_only.models
        with pytest.raises(grpcclient.InferenceServerException) as caught:
            client.infer("recommender", [raw_input("user_id", strings([[USER]]), "BYTES")])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        with pytest.raises(grpcclient.InferenceServerException) as caught:
            client.get_model_metadata("recommender")
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
        server.stop()
