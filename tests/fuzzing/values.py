"""The values a fuzzed field takes: ids the server knows, ids at and past every limit, invalid UTF-8, and
numbers at the edges of their type.

Every string the server could accept comes from a small, fixed set, so a long fuzzing run stores a bounded
amount of state: memory that keeps growing is then the server's fault, not a bigger catalog. Writes touch
only the `FUZZ_*` ids, so the model's own users and items answer at the end as they did at the start.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from recserve.server.kserve.models import MODEL_NAMES

BASE_USERS = tuple(f"user-{n}" for n in range(1, 9))
BASE_ITEMS = tuple(f"item-{n}" for n in range(1, 17))
FUZZ_USERS = tuple(f"fuzz-user-{n}" for n in range(8))
FUZZ_ITEMS = tuple(f"fuzz-item-{n}" for n in range(16))
TAGS = (*(f"tag-{n}" for n in range(1, 9)), "fuzz-tag")
# Empty, exactly 256 bytes (the id limit) in 1-, 2- and 4-byte characters, one byte over, 100 KB, a NUL.
EXTREME_TEXT = ("", "x" * 256, "é" * 128, "\U0001f642" * 64, "x" * 257, "é" * 129, "x" * 100_000, "\x00")
INVALID_UTF8 = (
    b"\xff",
    b"u\xc3er",  # a 2-byte sequence cut short
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xc0\xaf",  # an overlong encoding
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"x" * 255 + b"\xff",
)
UNKNOWN_MODEL_NAMES = ("nope", "recommender ", "RECOMMENDER")
MODEL_NAME_VALUES = (*MODEL_NAMES, *MODEL_NAMES, *UNKNOWN_MODEL_NAMES)  # known ones twice as likely
UNKNOWN_VERSIONS = ("2", "-1", "01", "latest")
VERSIONS = ("", "1", "", "1", *UNKNOWN_VERSIONS)
DATATYPES = ("BYTES", "FP32", "INT32", "INT64", "FP16", "FP64", "BOOL", "UINT8", "INT8", "STRING", "")
TENSOR_NAMES = ("user_id", "recent_item_ids", "k", "item_id", "user_embedding", "embedding", "item_ids")
OUTPUT_NAMES = ("item_ids", "scores", "embedding", "probability", "nope")
PARAMETER_NAMES = ("priority", "timeout", "sequence_id", "binary_data_output", "nope")
HEALTH_SERVICES = (
    "",
    "recserve.v1.Recommender",
    "recserve.v1.Events",
    "recserve.v1.Catalog",
    "inference.GRPCInferenceService",
    "grpc.health.v1.Health",
    "nope",
)
PROTO_FILES = (
    "recserve/v1/recommender.proto",
    "recserve/v1/events.proto",
    "recserve/inference/grpc_service.proto",
    "google/protobuf/timestamp.proto",
    "grpc_health/v1/health.proto",
    "nope.proto",
)
SYMBOLS = (
    "recserve.v1.Recommender",
    "recserve.v1.Recommender.Recommend",
    "recserve.v1.RecommendRequest",
    "inference.GRPCInferenceService.ModelInfer",
    "inference.ModelInferRequest.InferInputTensor",
    "google.protobuf.Timestamp",
    "recserve.v1.Recommender.Nope",
    "nope",
    ".",
)

# Ids of the items a fuzzed write may add: the fuzzing items, and the extreme texts that are valid ids.
WRITTEN_ITEMS = FUZZ_ITEMS + tuple(text for text in EXTREME_TEXT if 0 < len(text.encode()) <= 256)
# Fields naming the items a write adds or deletes: no text but theirs (SHORT_TEXT would add more).
WRITTEN_ITEM_FIELDS = ("recserve.v1.Item.item_id", "recserve.v1.DeleteItemsRequest.item_ids")
# Candidate values of string fields, by the field's full name, then by its name alone.
BY_FULL_NAME: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(WRITTEN_ITEM_FIELDS, FUZZ_ITEMS),
    "inference.ModelInferRequest.InferInputTensor.name": TENSOR_NAMES,
    "inference.ModelInferRequest.InferRequestedOutputTensor.name": OUTPUT_NAMES,
    "inference.ModelInferRequest.ParametersEntry.key": PARAMETER_NAMES,
    "inference.ModelInferRequest.InferInputTensor.ParametersEntry.key": PARAMETER_NAMES,
    "inference.ModelInferRequest.InferRequestedOutputTensor.ParametersEntry.key": PARAMETER_NAMES,
}
BY_NAME: dict[str, tuple[str, ...]] = {
    "user_id": BASE_USERS + FUZZ_USERS,
    "item_id": BASE_ITEMS + FUZZ_ITEMS,
    "item_ids": BASE_ITEMS + FUZZ_ITEMS,
    "recent_item_ids": BASE_ITEMS + FUZZ_ITEMS,
    "exclude_item_ids": BASE_ITEMS + FUZZ_ITEMS,
    "tags": TAGS,
    "name": MODEL_NAME_VALUES,
    "model_name": MODEL_NAME_VALUES,
    "version": VERSIONS,
    "model_version": VERSIONS,
    "datatype": DATATYPES,
    "service": HEALTH_SERVICES,
    "file_by_filename": PROTO_FILES,
    "file_containing_symbol": SYMBOLS,
    "containing_type": SYMBOLS,
    "all_extension_numbers_of_type": SYMBOLS,
    "list_services": ("", "*"),
    "host": ("", "localhost"),
}
# A few short texts from a tiny alphabet: arbitrary, yet bounded in number.
SHORT_TEXT = st.text(alphabet="ab-0", max_size=3)


def pool(full_name: str, name: str) -> tuple[str, ...]:
    """The meaningful values of a string field (empty when nothing in particular is)."""
    return BY_FULL_NAME.get(full_name) or BY_NAME.get(name, ())


def text_bytes(full_name: str, name: str) -> st.SearchStrategy[bytes]:
    """A string field's content as it goes on the wire: mostly meaningful, else extreme or not UTF-8."""
    meaningful = pool(full_name, name)
    choices = [st.sampled_from(EXTREME_TEXT).map(str.encode), st.sampled_from(INVALID_UTF8)]
    if full_name not in WRITTEN_ITEM_FIELDS:
        choices.append(SHORT_TEXT.map(str.encode))
    if meaningful:
        choices = [st.sampled_from(meaningful).map(str.encode)] * 5 + choices
    return st.one_of(choices)


INT32_EDGES = (0, 1, -1, 2, 5, 10, 50, 64, 65, 200, 201, 1000, 1001, 2**31 - 1, -(2**31))
INT64_EDGES = (0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, -(2**63))
UINT32_EDGES = (0, 1, 2, 3, 255, 2**31, 2**32 - 1)
UINT64_EDGES = (0, 1, 2, 2**32, 2**63, 2**64 - 1)
# What a varint field may hold on the wire whatever its declared type: protobuf truncates or wraps.
WIDE_VARINTS = (2**32, 2**63, 2**64 - 1)


def integers(edges: tuple[int, ...], low: int, high: int) -> st.SearchStrategy[int]:
    """Edge values mostly, any value of the type sometimes, a value too wide for it rarely."""
    return st.one_of(
        st.sampled_from(edges), st.sampled_from(edges), st.integers(low, high), st.sampled_from(WIDE_VARINTS)
    )


INT32 = integers(INT32_EDGES, -(2**31), 2**31 - 1)
INT64 = integers(INT64_EDGES, -(2**63), 2**63 - 1)
UINT32 = integers(UINT32_EDGES, 0, 2**32 - 1)
UINT64 = integers(UINT64_EDGES, 0, 2**64 - 1)
FINITE_FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False)
EXTREME_FLOATS = st.sampled_from((float("nan"), float("inf"), float("-inf"), -0.0, 1.4e-45, 3.4028235e38))
FLOATS = st.one_of(FINITE_FLOATS, EXTREME_FLOATS)

LENGTH = struct.Struct("<I")
# How a raw BYTES element's 4-byte length prefix may lie about the element that follows it.
LIES = ("none", "none", "longer", "shorter", "zero", "max", "cut")


def framed(elements: list[bytes], lie: str) -> bytes:
    """Raw BYTES tensor data: each element after its little-endian length, the last one's length per `lie`.

    `longer` claims one byte past the end, `shorter` one byte less (the rest reads as a garbled element),
    `zero` claims nothing, `max` claims 2^32 - 1 bytes, `cut` ends inside a length.
    """
    body = b"".join(LENGTH.pack(len(element)) + element for element in elements[:-1])
    last = elements[-1] if elements else b""
    claims = {"longer": len(last) + 1, "shorter": max(len(last) - 1, 0), "zero": 0, "max": 2**32 - 1}
    if lie == "cut":
        return body + LENGTH.pack(len(last)) + last + b"\x07\x00"
    return body + LENGTH.pack(claims.get(lie, len(last))) + last


ID_BYTES = st.sampled_from(BASE_USERS + BASE_ITEMS + FUZZ_ITEMS).map(str.encode)


def binary(full_name: str, name: str) -> st.SearchStrategy[bytes]:
    """A bytes field's content: an id, text at the limits, invalid UTF-8, framed BYTES data, noise."""
    return st.one_of(
        ID_BYTES,
        ID_BYTES,
        st.sampled_from(EXTREME_TEXT).map(str.encode),
        st.sampled_from(INVALID_UTF8),
        st.binary(max_size=64),
        st.tuples(st.lists(ID_BYTES | st.sampled_from(INVALID_UTF8), max_size=4), st.sampled_from(LIES)).map(
            lambda drawn: framed(*drawn)
        ),
    )
