"""The ModelInfer that Triton's clients send most, on `recommender`, without the generic tensor machinery.

perf_analyzer and tritonclient send one user per call: `user_id` BYTES [1, 1] and perhaps `k` INT32 [1, 1],
in raw_input_contents (other clients as typed contents). The generic path (decode every tensor into numpy,
check it against the model's specs, gather the rows, build numpy outputs, flatten them back) cost ~0.1 ms
more Python per call than Recommend, and Python is what the GIL serializes: ModelInfer served 0.76-0.79x
Recommend's throughput at c=64 and c=128 through the same load generator. This module answers exactly that
request shape from the protobuf fields directly, with the answer the generic path gives; any other shape,
and any request the generic path would refuse, goes the generic way (which says what is wrong).
"""

from __future__ import annotations

import struct

from recserve.inference import grpc_service_pb2 as pb
from recserve.server.kserve.models import RecommenderModel
from recserve.server.kserve.service import InferenceService

OUTPUTS = ("item_ids", "scores")
SINGLE = (1, 1)
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix in raw contents
_INT32 = struct.Struct("<i")


async def recommend_one(
    inference: InferenceService, request: pb.ModelInferRequest, time_remaining_s: float | None
) -> pb.ModelInferResponse | None:
    """The response to a one-user `recommender` request of the common shape, or None to go generic."""
    if request.model_name != RecommenderModel.name or request.parameters:
        return None
    found = _user_and_k(request)
    if found is None:
        return None
    user_id, k = found
    outputs = _requested_outputs(request)
    if outputs is None:
        return None
    model = inference.model(request.model_name, request.model_version)
    if not isinstance(model, RecommenderModel):
        return None
    service = model.service
    limits = service.config.limits
    if not 0 <= k <= limits.max_k:
        return None
    result = await service.recommend(user_id, (), k, timeout_s=time_remaining_s)
    width = k or limits.default_k
    padding = width - len(result.items)
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    raw = bool(request.raw_input_contents)  # outputs come back the way the inputs came, as generically
    for name in outputs:
        output = response.outputs.add(name=name, shape=SINGLE[:1] + (width,))
        if name == "item_ids":
            output.datatype = "BYTES"
            ids = [item_id.encode() for item_id, _ in result.items] + [b""] * padding
            if raw:
                response.raw_output_contents.append(b"".join(_LENGTH.pack(len(i)) + i for i in ids))
            else:
                output.contents.bytes_contents.extend(ids)
        else:
            output.datatype = "FP32"
            scores = [score for _, score in result.items] + [0.0] * padding
            if raw:
                response.raw_output_contents.append(struct.pack(f"<{width}f", *scores))
            else:
                output.contents.fp32_contents.extend(scores)
    return response


def _user_and_k(request: pb.ModelInferRequest) -> tuple[str, int] | None:
    """(user id, k; 0 when not given) from inputs of exactly the common shape, else None."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        return None
    user_id: str | None = None
    k: int | None = None
    for position, tensor in enumerate(request.inputs):
        if tensor.parameters or tuple(tensor.shape) != SINGLE:
            return None
        if tensor.name == "user_id" and user_id is None and tensor.datatype == "BYTES":
            user_id = _one_string(raw[position]) if raw else _one_typed_string(tensor)
            if user_id is None:
                return None
        elif tensor.name == "k" and k is None and tensor.datatype == "INT32":
            k = _one_int32(raw[position]) if raw else _one_typed_int32(tensor)
            if k is None:
                return None
        else:
            return None
        if raw and tensor.HasField("contents"):
            return None
    return (user_id, k or 0) if user_id is not None else None


def _one_string(raw: bytes) -> str | None:
    """The one UTF-8 element of raw BYTES contents, or None."""
    if len(raw) < _LENGTH.size or _LENGTH.unpack_from(raw)[0] != len(raw) - _LENGTH.size:
        return None
    try:
        return raw[_LENGTH.size :].decode()
    except UnicodeDecodeError:
        return None


def _one_typed_string(tensor: pb.ModelInferRequest.InferInputTensor) -> str | None:
    contents = tensor.contents
    if len(contents.bytes_contents) != 1 or len(contents.ListFields()) != 1:
        return None
    try:
        return contents.bytes_contents[0].decode()
    except UnicodeDecodeError:
        return None


def _one_int32(raw: bytes) -> int | None:
    return _INT32.unpack(raw)[0] if len(raw) == _INT32.size else None


def _one_typed_int32(tensor: pb.ModelInferRequest.InferInputTensor) -> int | None:
    contents = tensor.contents
    if len(contents.int_contents) != 1 or len(contents.ListFields()) != 1:
        return None
    return contents.int_contents[0]


def _requested_outputs(request: pb.ModelInferRequest) -> list[str] | None:
    """The outputs asked for, in order and once each (both when none is named); None if any is unusual."""
    if not request.outputs:
        return list(OUTPUTS)
    names = []
    for output in request.outputs:
        if output.name not in OUTPUTS or output.parameters:
            return None
        if output.name not in names:
            names.append(output.name)
    return names
