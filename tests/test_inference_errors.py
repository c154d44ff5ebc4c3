"""Bad ModelInfer requests: each gets the protocol's status and a message naming what to fix.

The requests are built with the generated stubs of protos/recserve/inference, since a real client
(tritonclient) refuses to send most of them.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.v1 import recommender_pb2 as pb

Tensor = kpb.ModelInferRequest.InferInputTensor
Requested = kpb.ModelInferRequest.InferRequestedOutputTensor
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def typed(name: str, datatype: str, shape: list[int], **contents) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape, contents=kpb.InferTensorContents(**contents))


def user(*ids: bytes, shape: list[int] | None = None) -> Tensor:
    return typed("user_id", "BYTES", shape or [len(ids), 1], bytes_contents=list(ids))


def item(*ids: bytes) -> Tensor:
    return typed("item_id", "BYTES", [len(ids), 1], bytes_contents=list(ids))


def requested(name: str, **parameters: kpb.InferParameter) -> Requested:
    return Requested(name=name, parameters=parameters)


def header(name: str, datatype: str, shape: list[int]) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape)


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


EMBEDDING = np.full(32, 0.1, dtype=np.float32).tolist()
# Finite values near float32's limit, of either sign: the ranker's sums overflow to ±inf, and where both
# meet the probability is NaN (a few of these 64 rows do, whichever rows the trained weights make it).
SIXTY_FOUR_ITEMS = [f"item-{n}".encode() for n in range(1, 65)]
HUGE_EMBEDDINGS = [
    sign * scale
    for row in range(64)
    for scale in [(1e38, 3.4e38)[row % 2]]
    for sign in ([1.0] * 32, [-1.0] * 32, [1.0, -1.0] * 16)[row % 3]
]

# (case, model, request fields, status, fragments the message must contain)
CASES = [
    ("unknown model", "nope", {"inputs": [user(b"user-1")]}, NOT_FOUND, ["'nope'", "recommender"]),
    (
        "unknown version",
        "recommender",
        {"model_version": "7", "inputs": [user(b"user-1")]},
        NOT_FOUND,
        ["version '7'", "served versions: 1"],
    ),
    (
        "wrong datatype",
        "recommender",
        {"inputs": [user(b"user-1"), typed("k", "INT64", [1, 1], int64_contents=[5])]},
        INVALID,
        ["'k'", "INT64", "INT32"],
    ),
    (
        "unsupported datatype",
        "ranker",
        {"inputs": [typed("user_embedding", "FP16", [1, 32]), item(b"item-1")]},
        INVALID,
        ["'user_embedding'", "FP16", "FP32"],
    ),
    (
        "shape does not match the typed contents",
        "recommender",
        {"inputs": [user(b"user-1", b"user-2", shape=[1, 1])]},
        INVALID,
        ["'user_id'", "1 elements", "2 elements"],
    ),
    (
        "contents in the wrong field",
        "recommender",
        {"inputs": [typed("user_id", "BYTES", [1, 1], int_contents=[1])]},
        INVALID,
        ["'user_id'", "bytes_contents", "int_contents"],
    ),
    (
        "raw size does not match the shape",
        "ranker",
        {
            "inputs": [header("user_embedding", "FP32", [1, 32]), header("item_id", "BYTES", [1, 1])],
            "raw_input_contents": [b"\0" * 100, length_prefixed(b"item-1")],
        },
        INVALID,
        ["'user_embedding'", "128 bytes", "100 bytes"],
    ),
    (
        "raw BYTES length runs past the end",
        "recommender",
        {"inputs": [header("user_id", "BYTES", [1, 1])], "raw_input_contents": [b"\x10\0\0\0abc"]},
        INVALID,
        ["'user_id'", "16 bytes"],
    ),
    (
        "raw BYTES element count does not match the shape",
        "recommender",
        {"inputs": [header("user_id", "BYTES", [2, 1])], "raw_input_contents": [length_prefixed(b"user-1")]},
        INVALID,
        ["'user_id'", "2 elements", "1 BYTES elements"],
    ),
    (
        "raw data for some inputs only",
        "recommender",
        {
            "inputs": [header("user_id", "BYTES", [1, 1]), header("k", "INT32", [1, 1])],
            "raw_input_contents": [length_prefixed(b"user-1")],
        },
        INVALID,
        ["raw_input_contents has 1 entries for 2 inputs"],
    ),
    (
        "typed and raw data for one input",
        "recommender",
        {"inputs": [user(b"user-1")], "raw_input_contents": [length_prefixed(b"user-1")]},
        INVALID,
        ["'user_id'", "both"],
    ),
    (
        "missing required input",
        "recommender",
        {"inputs": [typed("k", "INT32", [1, 1], int_contents=[5])]},
        INVALID,
        ["'user_id'", "required"],
    ),
    (
        "unknown input",
        "recommender",
        {"inputs": [user(b"user-1"), typed("bogus", "INT32", [1, 1], int_contents=[1])]},
        INVALID,
        ["'bogus'", "user_id, recent_item_ids, k"],
    ),
    (
        "input given twice",
        "recommender",
        {"inputs": [user(b"user-1"), user(b"user-2")]},
        INVALID,
        ["'user_id'"],
    ),
    (
        "unknown output",
        "recommender",
        {
            "inputs": [user(b"user-1")],
            "outputs": [kpb.ModelInferRequest.InferRequestedOutputTensor(name="bogus_output")],
        },
        INVALID,
        ["'bogus_output'", "item_ids, scores"],
    ),
    (
        "wrong rank",
        "recommender",
        {"inputs": [typed("user_id", "BYTES", [1], bytes_contents=[b"user-1"])]},
        INVALID,
        ["'user_id'", "[1]", "[-1, 1]"],
    ),
    (
        "wrong fixed dimension",
        "ranker",
        {"inputs": [typed("user_embedding", "FP32", [1, 31], fp32_contents=EMBEDDING[:31]), item(b"item-1")]},
        INVALID,
        ["'user_embedding'", "[1, 31]", "[-1, 32]"],
    ),
    (
        "negative dimension",
        "recommender",
        {"inputs": [typed("user_id", "BYTES", [-1, 1])]},
        INVALID,
        ["'user_id'", "negative"],
    ),
    (
        "inputs with different batch sizes",
        "recommender",
        {"inputs": [user(b"user-1", b"user-2"), typed("k", "INT32", [1, 1], int_contents=[5])]},
        INVALID,
        ["'k'", "batch size 1", "'user_id' has 2"],
    ),
    (
        "batch over max_batch_size",
        "recommender",
        {"inputs": [user(*[b"user-1"] * 65)]},
        INVALID,
        ["'user_id'", "65", "max_batch_size"],
    ),
    (
        "empty batch",
        "item_tower",
        {"inputs": [typed("item_id", "BYTES", [0, 1])]},
        INVALID,
        ["'item_id'", "batch size 0"],
    ),
    (
        "k above max_k",
        "recommender",
        {"inputs": [user(b"user-1"), typed("k", "INT32", [1, 1], int_contents=[1000])]},
        INVALID,
        ["'k'", "1000", "200"],
    ),
    (
        "negative k",
        "recommender",
        {"inputs": [user(b"user-1"), typed("k", "INT32", [1, 1], int_contents=[-2])]},
        INVALID,
        ["'k'", "-2"],
    ),
    (
        "id that is not UTF-8",
        "recommender",
        {"inputs": [user(b"user-1", b"\xff\xfe")]},
        INVALID,
        ["'user_id'", "element 1", "UTF-8"],
    ),
    (
        "unknown item in item_tower",
        "item_tower",
        {"inputs": [typed("item_id", "BYTES", [2, 1], bytes_contents=[b"item-1", b"item-nope"])]},
        NOT_FOUND,
        ["'item_id'", "'item-nope'"],
    ),
    (
        "NaN in the ranker's user embedding",
        "ranker",
        {
            "inputs": [
                typed(
                    "user_embedding",
                    "FP32",
                    [2, 32],
                    fp32_contents=EMBEDDING + [float("nan")] + EMBEDDING[1:],
                ),
                typed("item_id", "BYTES", [2, 1], bytes_contents=[b"item-1", b"item-2"]),
            ]
        },
        INVALID,
        ["'user_embedding'", "row 1", "NaN or infinity"],
    ),
    (
        "infinity in the ranker's user embedding",
        "ranker",
        {
            "inputs": [
                typed("user_embedding", "FP32", [1, 32], fp32_contents=[float("-inf")] + EMBEDDING[1:]),
                item(b"item-1"),
            ]
        },
        INVALID,
        ["'user_embedding'", "row 0", "finite"],
    ),
    (
        "unknown item in ranker",
        "ranker",
        {
            "inputs": [
                typed("user_embedding", "FP32", [1, 32], fp32_contents=EMBEDDING),
                typed("item_id", "BYTES", [1, 1], bytes_contents=[b"item-nope"]),
            ]
        },
        NOT_FOUND,
        ["'item_id'", "'item-nope'"],
    ),
    (
        "finite ranker embeddings too large to rank",
        "ranker",
        {
            "inputs": [
                typed("user_embedding", "FP32", [64, 32], fp32_contents=HUGE_EMBEDDINGS),
                typed("item_id", "BYTES", [64, 1], bytes_contents=SIXTY_FOUR_ITEMS),
            ]
        },
        INVALID,
        ["'user_embedding'", "too large for the ranker", "unit length"],
    ),
    (
        "classification asked of an output",
        "recommender",
        {
            "inputs": [user(b"user-1")],
            "outputs": [requested("scores", classification=kpb.InferParameter(int64_param=3))],
        },
        INVALID,
        ["'scores'", "class_count", "without class_count"],
    ),
    (
        "shared-memory output",
        "user_tower",
        {
            "inputs": [user(b"user-1")],
            "outputs": [requested("embedding", shared_memory_region=kpb.InferParameter(string_param="r0"))],
        },
        INVALID,
        ["output 'embedding'", "'shared_memory_region'", "not supported"],
    ),
    (
        "shared-memory input",
        "item_tower",
        {
            "inputs": [
                Tensor(
                    name="item_id",
                    datatype="BYTES",
                    shape=[1, 1],
                    parameters={"shared_memory_region": kpb.InferParameter(string_param="region-0")},
                )
            ]
        },
        INVALID,
        ["input 'item_id'", "shared-memory"],
    ),
    (
        "unknown version of a tower",
        "user_tower",
        {"model_version": "9", "inputs": [user(b"user-1")]},
        NOT_FOUND,
        ["model 'user_tower' version '9'", "served versions: 1"],
    ),
    (
        "priority that is not an integer",
        "recommender",
        {"inputs": [user(b"user-1")], "parameters": {"priority": kpb.InferParameter(string_param="high")}},
        INVALID,
        ["'priority'"],
    ),
]


@pytest.fixture
def kstub(channel: grpc.Channel) -> kpb_grpc.GRPCInferenceServiceStub:
    return kpb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    ("model", "fields", "code", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_rejected_with_a_useful_message(kstub, model, fields, code, fragments) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        kstub.ModelInfer(kpb.ModelInferRequest(model_name=model, **fields), timeout=30)
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()


@pytest.mark.parametrize("method", ["ModelMetadata", "ModelConfig", "ModelStatistics"])
def test_unknown_model_or_version_is_not_found(kstub, method: str) -> None:
    request_type = getattr(kpb, f"{method}Request")
    for request, fragment in [
        (request_type(name="nope"), "'nope'"),
        (request_type(name="ranker", version="3"), "'3'"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(kstub, method)(request, timeout=10)
        assert caught.value.code() == NOT_FOUND
        assert fragment in caught.value.details()


def test_undecodable_request_is_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == INVALID
    assert "inference.ModelInferRequest" in caught.value.details()


def test_the_server_serves_on_after_bad_requests(kstub, stub) -> None:
    response = kstub.ModelInfer(
        kpb.ModelInferRequest(model_name="recommender", inputs=[user(b"user-1")]), timeout=30
    )
    assert list(response.outputs[0].shape) == [1, 10]
    assert stub.Recommend(pb.RecommendRequest(user_id="user-1"), timeout=30).items
