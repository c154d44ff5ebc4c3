"""The one-user ModelInfer on `recommender` answers exactly what the generic path answers, or leaves it to it.

Each request goes to a real server twice: as sent, and with a `priority` parameter of 0 (the default), which
sends it down the generic path; the two responses must be the same message. A spy on the single-row path
shows which requests it answered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.server.kserve import single_row
from tests.serving import ServerThread
from tests.triton_client import import_tritonclient

grpcclient, _ = import_tritonclient()
Tensor = kpb.ModelInferRequest.InferInputTensor


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the single-row path answered each ModelInfer (in order)."""
    calls: list[bool] = []
    real = single_row.recommend_one

    async def spy(*args: object) -> kpb.ModelInferResponse | None:
        response = await real(*args)  # type: ignore[arg-type]
        calls.append(response is not None)
        return response

    monkeypatch.setattr(single_row, "recommend_one", spy)
    return calls


@pytest.fixture
def kstub(server: ServerThread) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def typed_user(user: str) -> Tensor:
    return Tensor(name="user_id", datatype="BYTES", shape=[1, 1],
                  contents=kpb.InferTensorContents(bytes_contents=[user.encode()]))  # fmt: skip


def typed_k(k: int) -> Tensor:
    return Tensor(
        name="k", datatype="INT32", shape=[1, 1], contents=kpb.InferTensorContents(int_contents=[k])
    )


def generic(request: kpb.ModelInferRequest) -> kpb.ModelInferRequest:
    """The same request with a parameter that only the generic path takes (priority 0, the default)."""
    copy = kpb.ModelInferRequest()
    copy.CopyFrom(request)
    copy.parameters["priority"].int64_param = 0
    return copy


def both(stub: kpb_grpc.GRPCInferenceServiceStub, request: kpb.ModelInferRequest) -> kpb.ModelInferResponse:
    fast, slow = stub.ModelInfer(request, timeout=10), stub.ModelInfer(generic(request), timeout=10)
    assert fast == slow
    return fast


@pytest.mark.parametrize(
    "inputs, outputs",
    [
        ([typed_user("user-3")], []),
        ([typed_user("user-3"), typed_k(3)], []),
        ([typed_k(25), typed_user("user-9")], ["scores"]),
        ([typed_user("nobody-knows-me"), typed_k(5)], ["scores", "item_ids", "scores"]),
        ([typed_user("user-3"), typed_k(0)], ["item_ids"]),
    ],
)
def test_typed_requests_get_the_generic_answer(
    kstub: kpb_grpc.GRPCInferenceServiceStub, answered: list[bool], inputs: list[Tensor], outputs: list[str]
) -> None:
    request = kpb.ModelInferRequest(
        model_name="recommender", id="req-1", inputs=inputs,
        outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
    )  # fmt: skip
    response = both(kstub, request)
    assert answered == [True, False]
    assert response.id == "req-1" and response.model_name == "recommender"


def test_raw_requests_as_tritonclient_sends_them_get_the_generic_answer(
    kstub: kpb_grpc.GRPCInferenceServiceStub, answered: list[bool]
) -> None:
    user = struct.pack("<I", 6) + b"user-7"
    request = kpb.ModelInferRequest(
        model_name="recommender",
        inputs=[Tensor(name="user_id", datatype="BYTES", shape=[1, 1]),
                Tensor(name="k", datatype="INT32", shape=[1, 1])],
        raw_input_contents=[user, struct.pack("<i", 4)],
    )  # fmt: skip
    response = both(kstub, request)
    assert answered == [True, False]
    assert [output.shape for output in response.outputs] == [[1, 4], [1, 4]]
    assert len(response.raw_output_contents) == 2


def test_tritonclient_gets_its_answers_from_the_single_row_path(
    server: ServerThread, answered: list[bool]
) -> None:
    client = grpcclient.InferenceServerClient(server.address)
    user = grpcclient.InferInput("user_id", [1, 1], "BYTES")
    user.set_data_from_numpy(np.array([[b"user-5"]], dtype=object))
    k = grpcclient.InferInput("k", [1, 1], "INT32")
    k.set_data_from_numpy(np.array([[6]], dtype=np.int32))
    result = client.infer("recommender", [user, k])
    client.close()
    assert answered == [True]
    assert result.as_numpy("item_ids").shape == (1, 6)
    assert result.as_numpy("scores").dtype == np.float32


@pytest.mark.parametrize(
    "inputs, raw, code, words",
    [
        ([typed_user("user-3"), typed_k(-1)], [], grpc.StatusCode.INVALID_ARGUMENT, "k must be between"),
        ([typed_user("user-3"), typed_k(10_000)], [], grpc.StatusCode.INVALID_ARGUMENT, "k must be between"),
        ([Tensor(name="user_id", datatype="BYTES", shape=[1, 1],
                 contents=kpb.InferTensorContents(bytes_contents=[b"\xff\xfe"]))], [],
         grpc.StatusCode.INVALID_ARGUMENT, "not valid UTF-8"),
        ([Tensor(name="user_id", datatype="BYTES", shape=[1, 1])], [struct.pack("<I", 99) + b"short"],
         grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        ([typed_k(3)], [], grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
    ],
)  # fmt: skip
def test_requests_the_generic_path_refuses_are_left_to_it(
    kstub: kpb_grpc.GRPCInferenceServiceStub,
    answered: list[bool],
    inputs: list[Tensor],
    raw: list[bytes],
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = kpb.ModelInferRequest(model_name="recommender", inputs=inputs, raw_input_contents=raw)
    with pytest.raises(grpc.RpcError) as refused:
        kstub.ModelInfer(request, timeout=10)
    assert refused.value.code() == code and words in refused.value.details()
    assert answered == [False]


def test_an_unknown_version_is_not_found_naming_the_served_ones(
    kstub: kpb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = kpb.ModelInferRequest(
        model_name="recommender", model_version="99", inputs=[typed_user("user-3")]
    )
    with pytest.raises(grpc.RpcError) as refused:
        kstub.ModelInfer(request, timeout=10)
    assert (
        refused.value.code() == grpc.StatusCode.NOT_FOUND and "served versions: 1" in refused.value.details()
    )
