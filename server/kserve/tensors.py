"""Tensors of the open inference protocol as numpy arrays: datatypes, typed contents, raw bytes.

Raw data is little-endian and row-major. A BYTES tensor's raw form is its elements one after another, each
preceded by its length as a 4-byte little-endian unsigned integer; as an array it is an object array of
`bytes`. Every error names the tensor, because that is what the caller has to fix.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recserve.server.exceptions import InvalidArgumentError

BYTES = "BYTES"
# The datatypes recserve's models use, as numpy dtypes with the protocol's byte order.
DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    BYTES: np.dtype(object),
}
# Where typed (not raw) data of each datatype travels in InferTensorContents.
CONTENTS_FIELD: dict[str, str] = {
    "FP32": "fp32_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    BYTES: "bytes_contents",
}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or returns. `shape` starts with the batch dimension; -1 is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class InputTensor:
    """One input as a request carried it, decoded only on demand (after the model is known).

    `raw` is its raw_input_contents entry; otherwise `contents` holds the non-empty typed fields of its
    InferTensorContents by field name.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    contents: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """The first dimension (0 for a scalar)."""
        return self.shape[0] if self.shape else 0

    def decode(self) -> np.ndarray:
        """The data as an array of `shape` (BYTES: an object array of bytes).

        Raises:
            InvalidArgumentError: a negative dimension, an unsupported datatype, data in a contents field that
                is not the datatype's, both typed and raw data, or an element count or byte size that does
                not match the shape.
        """
        count = element_count(self.name, self.shape)
        if self.datatype not in DTYPES:
            raise InvalidArgumentError(
                f"input {self.name!r}: datatype {self.datatype!r} is not supported (use {', '.join(DTYPES)})"
            )
        if self.raw is not None:
            if self.contents:
                raise InvalidArgumentError(
                    f"input {self.name!r} has data both in contents and in raw_input_contents; send one"
                )
            return from_raw(self.name, self.datatype, self.shape, self.raw)
        expected = CONTENTS_FIELD[self.datatype]
        misplaced = sorted(set(self.contents) - {expected})
        if misplaced:
            raise InvalidArgumentError(
                f"input {self.name!r} of datatype {self.datatype} carries its data in contents.{expected}, "
                f"not contents.{', contents.'.join(misplaced)}"
            )
        values = self.contents.get(expected, ())
        if len(values) != count:
            raise InvalidArgumentError(
                f"input {self.name!r} has shape {list(self.shape)} ({count} elements) but "
                f"{len(values)} elements in contents.{expected}"
            )
        if self.datatype == BYTES:
            array = np.empty(count, dtype=object)
            array[:] = list(values)
            return array.reshape(self.shape)
        return np.asarray(values, dtype=DTYPES[self.datatype]).reshape(self.shape)


@dataclass(frozen=True)
class OutputTensor:
    """One output: its datatype and its data (BYTES: an object array of bytes)."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """The data's shape."""
        return tuple(self.data.shape)

    def raw(self) -> bytes:
        """The data in the protocol's raw form."""
        if self.datatype == BYTES:
            return serialize_bytes(self.data)
        return np.ascontiguousarray(self.data, dtype=DTYPES[self.datatype]).tobytes()

    def values(self) -> list[Any]:
        """The data as a flat list for the datatype's typed contents field."""
        if self.datatype == BYTES:
            return list(self.data.reshape(-1))
        return self.data.reshape(-1).tolist()


def element_count(name: str, shape: Sequence[int]) -> int:
    """Elements in a tensor of `shape`. Raises InvalidArgumentError for a negative dimension."""
    if any(dim < 0 for dim in shape):
        raise InvalidArgumentError(f"input {name!r} has shape {list(shape)}: dimensions cannot be negative")
    return math.prod(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Decode raw contents. Raises InvalidArgumentError if their size does not fit the shape."""
    count = element_count(name, shape)
    if datatype == BYTES:
        elements = deserialize_bytes(name, raw)
        if len(elements) != count:
            raise InvalidArgumentError(
                f"input {name!r} has shape {list(shape)} ({count} elements) but its raw_input_contents "
                f"hold {len(elements)} BYTES elements"
            )
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgumentError(
            f"input {name!r} has shape {list(shape)} of {datatype}, {count * dtype.itemsize} bytes, but its "
            f"raw_input_contents hold {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def deserialize_bytes(name: str, raw: bytes) -> list[bytes]:
    """Split length-prefixed BYTES elements. Raises InvalidArgumentError if a length runs past the end."""
    elements, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidArgumentError(
                f"input {name!r}: raw BYTES data ends inside the 4-byte length of element {len(elements)}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidArgumentError(
                f"input {name!r}: raw BYTES element {len(elements)} claims {length} bytes but only "
                f"{len(raw) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefixed BYTES elements, row-major."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in array.reshape(-1))


def to_strings(name: str, array: np.ndarray) -> list[str]:
    """Decode a BYTES array's elements as UTF-8, row-major. Raises InvalidArgumentError naming the tensor."""
    flat = array.reshape(-1)
    try:
        return [element.decode() for element in flat]
    except UnicodeDecodeError as error:
        position = next(i for i, element in enumerate(flat) if not _is_utf8(element))
        raise InvalidArgumentError(f"input {name!r}: element {position} is not valid UTF-8") from error


def from_strings(rows: Sequence[Sequence[str]], width: int) -> np.ndarray:
    """A [len(rows), width] BYTES array of the rows, each padded with empty strings."""
    array = np.full((len(rows), width), b"", dtype=object)
    for row, values in enumerate(rows):
        array[row, : len(values)] = [value.encode() for value in values]
    return array


def _is_utf8(element: bytes) -> bool:
    try:
        element.decode()
    except UnicodeDecodeError:
        return False
    return True
