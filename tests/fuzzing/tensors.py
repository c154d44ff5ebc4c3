"""ModelInfer requests that get past decoding: the models' real inputs, wrong in at most one way each.

Tensors are what the model declares (docs/inference-protocol.md, "Models"), so that a request reaches the
checks behind decoding and the models themselves, with values at the edges: NaN, infinite and denormal
embeddings for the ranker, k at every edge, ids of every length and invalid UTF-8. Then at most one thing
goes wrong (a FAULT): the model or version, a name, a datatype, a shape with a negative dimension or an
element count past int64, batch sizes, a contents field of another type, an element count off, raw data a
byte off, BYTES length prefixes that lie, typed and raw data both, raw_input_contents for fewer or more
inputs, an input unknown, missing or given twice, an unknown output, a parameter of the wrong type, a
timeout that runs out in the queue.
"""

from __future__ import annotations

import math
import struct

from hypothesis import strategies as st

from recserve.inference import grpc_service_pb2 as pb
from tests.fuzzing import values

EMBEDDING_DIM = 32  # the demo model's and the test model's
MAX_BATCH_SIZE = 64  # models/recommender/config.yaml
# name, datatype, shape (batch first, -1 any size), optional
Spec = tuple[str, str, tuple[int, ...], bool]
MODELS: dict[str, tuple[Spec, ...]] = {
    "recommender": (
        ("user_id", "BYTES", (-1, 1), False),
        ("recent_item_ids", "BYTES", (-1, -1), True),
        ("k", "INT32", (-1, 1), True),
    ),
    "user_tower": (("user_id", "BYTES", (-1, 1), False), ("recent_item_ids", "BYTES", (-1, -1), True)),
    "item_tower": (("item_id", "BYTES", (-1, 1), False),),
    "ranker": (
        ("user_embedding", "FP32", (-1, EMBEDDING_DIM), False),
        ("item_id", "BYTES", (-1, 1), False),
    ),
}
OUTPUTS = {
    "recommender": ("item_ids", "scores"),
    "user_tower": ("embedding",),
    "item_tower": ("embedding",),
    "ranker": ("probability",),
}
BATCH_SIZES = (1, 1, 1, 2, 3, MAX_BATCH_SIZE)
WIDTHS = (0, 1, 2, 3, 50, 51, 100_000)  # of a dimension of any size
# Shapes no model takes: negative, products past int64, the wrong rank.
SHAPE_TRAPS = (
    (-1, 1),
    (1, -1),
    (2**62, 4),
    (2**32, 2**32),
    (3_037_000_500, 3_037_000_500),
    (2**63 - 1, 2**63 - 1),
    (-(2**63), 1),
    (1,),
    (1, 1, 1),
    (),
)
MOST_ELEMENTS = 200_000  # larger shapes get a few elements only: the count is wrong anyway
LONG_IDS_UP_TO = 1_000  # elements; a larger BYTES tensor holds short known ids only
PACKERS = {"FP32": "f", "INT32": "i", "INT64": "q", "FP64": "d", "INT8": "b", "UINT8": "B"}
CONTENTS_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.sampled_from(values.INT32_EDGES),
    "int64_contents": st.sampled_from(values.INT64_EDGES),
    "uint_contents": st.sampled_from(values.UINT32_EDGES),
    "uint64_contents": st.sampled_from(values.UINT64_EDGES),
    "fp32_contents": values.FLOATS,
    "fp64_contents": values.FLOATS,
    "bytes_contents": values.ID_BYTES,
}
DATATYPE_FIELDS = {
    "BYTES": "bytes_contents",
    "FP32": "fp32_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
}
TENSOR_FAULTS = (
    "name",
    "datatype",
    "shape",
    "batch size",
    "element count",
    "contents field",
    "raw size",
    "bytes framing",
    "typed and raw",
)
REQUEST_FAULTS = (
    "model",
    "version",
    "unknown input",
    "missing input",
    "input twice",
    "raw for fewer",
    "raw for more",
    "output",
    "parameter",
    "timeout",
)
FAULTS = ("none",) * 8 + TENSOR_FAULTS + REQUEST_FAULTS


def _known_ids(name: str) -> st.SearchStrategy[bytes]:
    ids = (
        values.BASE_USERS + values.FUZZ_USERS if name == "user_id" else values.BASE_ITEMS + values.FUZZ_ITEMS
    )
    return st.sampled_from(ids).map(str.encode)


def _id_elements(name: str) -> st.SearchStrategy[bytes]:
    """Ids the server knows mostly; now and then one not UTF-8, empty, or at the id length limits."""
    odd = st.one_of(
        st.sampled_from(values.INVALID_UTF8), st.sampled_from(values.EXTREME_TEXT[:6]).map(str.encode)
    )
    return st.one_of(*[_known_ids(name)] * 9, odd)


def _elements(name: str, datatype: str) -> st.SearchStrategy:
    """Values of a tensor's elements as its datatype holds them (bytes for BYTES and unknown datatypes)."""
    if datatype in ("FP32", "FP64"):
        return values.FLOATS
    if datatype == "INT32":
        return st.sampled_from(values.INT32_EDGES)
    if datatype in PACKERS:
        return st.sampled_from((0, 1, 2, 5, 127))
    return _id_elements(name)


def _enough(draw: st.DrawFn, elements: st.SearchStrategy, count: int) -> list:
    """`count` elements: a few drawn ones, cycled (a 100,000-element tensor costs a handful of draws)."""
    drawn = draw(st.lists(elements, min_size=min(count, 4), max_size=min(count, 4)))
    return [drawn[i % len(drawn)] for i in range(count)] if drawn else []


def _raw(draw: st.DrawFn, name: str, datatype: str, count: int, fault: str) -> bytes:
    short = count > LONG_IDS_UP_TO and datatype not in PACKERS  # a huge BYTES tensor: short known ids
    elements = _enough(draw, _known_ids(name) if short else _elements(name, datatype), count)
    if datatype in PACKERS:
        data = struct.pack(f"<{count}{PACKERS[datatype]}", *elements)
    else:
        lie = draw(st.sampled_from(values.LIES[2:])) if fault == "bytes framing" else "none"
        data = values.framed(elements, lie) if elements or lie != "none" else b""
    if fault == "raw size":
        return draw(st.sampled_from((data + b"\x00", data[:-1], data + data[:4])))
    return data


def _shape(draw: st.DrawFn, spec: Spec, batch: int, fault: str) -> tuple[int, ...]:
    if fault == "shape":
        return draw(st.sampled_from(SHAPE_TRAPS))
    if fault == "batch size":
        batch = draw(st.sampled_from((0, MAX_BATCH_SIZE + 1, batch + 1)))
    return (batch, *(draw(st.sampled_from(WIDTHS)) if dim == -1 else dim for dim in spec[2][1:]))


@st.composite
def input_tensor(
    draw: st.DrawFn, spec: Spec, batch: int, raw: bool, fault: str = "none"
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """One input for `spec`, wrong by `fault`; its raw data (b"" when the request sends typed contents)."""
    name = draw(st.sampled_from(values.TENSOR_NAMES)) if fault == "name" else spec[0]
    datatype = draw(st.sampled_from(values.DATATYPES)) if fault == "datatype" else spec[1]
    shape = _shape(draw, spec, batch, fault)
    count = math.prod(shape) if all(dim >= 0 for dim in shape) else 0
    if count > MOST_ELEMENTS:
        count = draw(st.integers(0, 3))
    if fault == "element count":
        count = draw(st.sampled_from((count + 1, max(count - 1, 0), 2 * count)))
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if not raw or fault == "typed and raw":
        field = DATATYPE_FIELDS.get(datatype, "bytes_contents")
        if fault == "contents field":
            field = draw(st.sampled_from(sorted(set(CONTENTS_FIELDS) - {field})))
        elements = CONTENTS_FIELDS[field]
        if field == "bytes_contents":  # a huge tensor of short ids: its request stays under 4 MiB
            elements = _id_elements(spec[0]) if count <= LONG_IDS_UP_TO else _known_ids(spec[0])
        getattr(tensor.contents, field).extend(_enough(draw, elements, count))
    return tensor, _raw(draw, spec[0], datatype, count, fault) if raw else b""


def parameter() -> st.SearchStrategy[pb.InferParameter]:
    """An InferParameter of any of its five types, at the edges of each."""
    return st.one_of(
        st.booleans().map(lambda value: pb.InferParameter(bool_param=value)),
        st.sampled_from(values.INT64_EDGES).map(lambda value: pb.InferParameter(int64_param=value)),
        st.sampled_from(values.UINT64_EDGES).map(lambda value: pb.InferParameter(uint64_param=value)),
        values.FLOATS.map(lambda value: pb.InferParameter(double_param=value)),
        st.sampled_from(values.EXTREME_TEXT[:6]).map(lambda value: pb.InferParameter(string_param=value)),
    )


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """A serialized ModelInferRequest for one of the models, wrong in at most one way."""
    fault = draw(st.sampled_from(FAULTS))
    model = draw(st.sampled_from(sorted(MODELS)))
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(values.UNKNOWN_MODEL_NAMES)) if fault == "model" else model,
        model_version=draw(st.sampled_from(values.UNKNOWN_VERSIONS))
        if fault == "version"
        else draw(st.sampled_from(("", "1"))),
        id=draw(st.sampled_from(("", "r-1", "x" * 100_000))),
    )
    specs = [spec for spec in MODELS[model] if not spec[3] or draw(st.booleans())]
    faulty = draw(st.integers(0, len(specs) - 1))
    batch, raw = draw(st.sampled_from(BATCH_SIZES)), draw(st.booleans())
    raws = []
    for position, spec in enumerate(specs):
        tensor, data = draw(input_tensor(spec, batch, raw, fault if position == faulty else "none"))
        request.inputs.append(tensor)
        raws.append(data)
    _spoil(draw, request, raws, fault)
    if raw:
        request.raw_input_contents.extend(raws)
    _options(draw, request, model, fault)
    return request.SerializeToString()


def _spoil(draw: st.DrawFn, request: pb.ModelInferRequest, raws: list[bytes], fault: str) -> None:
    """Make the inputs wrong by a request-level `fault`."""
    if fault == "unknown input":
        request.inputs.add(name="nope", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"x")
        raws.append(values.framed([b"x"], "none"))
    elif fault == "missing input":
        del request.inputs[0]
        del raws[0]
    elif fault == "input twice":
        request.inputs.append(request.inputs[0])
        raws.append(raws[0])
    elif fault == "raw for fewer":
        raws.pop(draw(st.integers(0, len(raws) - 1)))
    elif fault == "raw for more":
        raws.append(draw(values.binary("", "raw_input_contents")))


def _options(draw: st.DrawFn, request: pb.ModelInferRequest, model: str, fault: str) -> None:
    """Parameters and requested outputs: fitting ones, others the server ignores, or one wrong by `fault`."""
    if fault == "parameter":
        kind = draw(st.sampled_from(("bool_param", "string_param", "double_param")))
        name = draw(st.sampled_from(("priority", "timeout")))
        request.parameters[name].CopyFrom(
            draw(parameter().filter(lambda p: p.WhichOneof("parameter_choice") == kind))
        )
    elif fault == "timeout":
        request.parameters["timeout"].int64_param = 1
    else:
        for name, value in draw(
            st.dictionaries(st.sampled_from(values.PARAMETER_NAMES[2:]), parameter(), max_size=2)
        ).items():
            request.parameters[name].CopyFrom(value)
        if draw(st.booleans()):
            request.parameters["priority"].int64_param = draw(st.sampled_from((0, 1)))
    outputs = OUTPUTS[model] + (("nope",) if fault == "output" else ())
    chosen = draw(st.lists(st.sampled_from(outputs), max_size=2))
    if fault == "output":
        chosen.append("nope")
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in chosen)
