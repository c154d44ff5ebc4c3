"""Tensor data of the inference protocol: typed contents, raw bytes, BYTES framing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from recserve.server.exceptions import InvalidArgumentError
from recserve.server.kserve.tensors import (
    InputTensor,
    OutputTensor,
    deserialize_bytes,
    from_strings,
    serialize_bytes,
    to_strings,
)


def test_bytes_are_length_prefixed_little_endian() -> None:
    array = np.array([[b"ab"], [b""], ["é".encode()]], dtype=object)
    raw = serialize_bytes(array)
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    assert deserialize_bytes("t", raw) == [b"ab", b"", "é".encode()]
    decoded = InputTensor("t", "BYTES", (3, 1), raw=raw).decode()
    assert decoded.shape == (3, 1) and decoded.dtype == object
    assert to_strings("t", decoded) == ["ab", "", "é"]


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [("FP32", [1.5, -2.0], "<f4"), ("INT32", [7, -1], "<i4"), ("INT64", [2**40, -3], "<i8")],
)
def test_raw_and_typed_numbers_decode_alike(datatype: str, values: list, dtype: str) -> None:
    raw = np.array(values, dtype=dtype).tobytes()
    from_raw = InputTensor("t", datatype, (1, 2), raw=raw).decode()
    field = {"FP32": "fp32_contents", "INT32": "int_contents", "INT64": "int64_contents"}[datatype]
    from_typed = InputTensor("t", datatype, (1, 2), contents={field: values}).decode()
    np.testing.assert_array_equal(from_raw, from_typed)
    assert from_raw.dtype == np.dtype(dtype) and from_raw.shape == (1, 2)
    output = OutputTensor("t", datatype, from_raw)
    assert output.raw() == raw and output.values() == values


def test_empty_typed_contents_fit_an_empty_tensor() -> None:
    assert InputTensor("t", "INT32", (0, 1)).decode().shape == (0, 1)


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        (InputTensor("t", "FP32", (1, 2), raw=b"\0" * 7), "8 bytes"),
        (InputTensor("t", "BYTES", (1, 1), raw=b"\1\0"), "ends inside"),
        (InputTensor("t", "BYTES", (1, 1), raw=b"\5\0\0\0ab"), "claims 5 bytes"),
        (InputTensor("t", "BYTES", (2,), raw=serialize_bytes(np.array([b"a"], dtype=object))), "2 elements"),
        (InputTensor("t", "INT32", (2,), contents={"int_contents": [1]}), "1 elements"),
        (InputTensor("t", "INT32", (1,), contents={"int64_contents": [1]}), "int_contents"),
        (InputTensor("t", "BF16", (1,), raw=b"\0\0"), "not supported"),
        (InputTensor("t", "INT32", (-1,)), "negative"),
        (InputTensor("t", "INT32", (1,), raw=b"\0" * 4, contents={"int_contents": [1]}), "both"),
    ],
)
def test_malformed_data_names_the_tensor(tensor: InputTensor, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        tensor.decode()
    assert "'t'" in str(caught.value) and fragment in str(caught.value)


def test_invalid_utf8_names_the_element() -> None:
    with pytest.raises(InvalidArgumentError, match="'ids': element 1 is not valid UTF-8"):
        to_strings("ids", np.array([b"ok", b"\xff"], dtype=object))


def test_rows_of_strings_are_padded() -> None:
    array = from_strings([["a", "b"], []], 3)
    assert array.tolist() == [[b"a", b"b", b""], [b"", b"", b""]]
