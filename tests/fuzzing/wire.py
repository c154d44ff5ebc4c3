"""The protobuf wire format written by hand, and strategies for bytes that are not a message at all.

Written by hand so that a fuzzed request can carry what protobuf refuses to serialize: invalid UTF-8 in a
string field, values too wide for their field, overlong varints, lengths that run past the end, groups
nested past the parser's recursion limit.
"""

from __future__ import annotations

import struct
from functools import cache

from hypothesis import strategies as st

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
UNKNOWN_FIELD = 9_999  # a field number no request message of ours declares
MAX_FIELD_NUMBER = (1 << 29) - 1


def varint(value: int) -> bytes:
    """`value` as a base-128 varint; a negative value as its 64-bit two's complement (ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value: int) -> int:
    """The sint32/sint64 encoding of `value`."""
    return (value << 1) ^ (value >> 63)


def key(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint((number << 3) | wire_type)


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes, a message or a packed repeated scalar."""
    return key(number, LENGTH_DELIMITED) + varint(len(payload)) + payload


def fixed32(number: int, payload: bytes) -> bytes:
    """A 4-byte field (float, fixed32, sfixed32)."""
    return key(number, FIXED32) + payload


def fixed64(number: int, payload: bytes) -> bytes:
    """An 8-byte field (double, fixed64, sfixed64)."""
    return key(number, FIXED64) + payload


def nested_groups(depth: int, closed: bool = True) -> bytes:
    """An unknown group holding itself `depth` times: the parser must stop at its recursion limit."""
    opening = key(UNKNOWN_FIELD, START_GROUP) * depth
    return opening + key(UNKNOWN_FIELD, END_GROUP) * depth if closed else opening


@cache
def malformed() -> st.SearchStrategy[bytes]:
    """Byte strings that break the wire format in one specific way each (one strategy, built once: it holds
    a megabyte of nested groups)."""
    return st.sampled_from(
        (
            b"\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
            b"\x08\x80",  # a varint cut short
            b"\x0a\x05ab",  # a length past the end
            b"\x0a" + varint(1 << 62) + b"x",  # a length of 2^62
            b"\x0a" + varint((1 << 64) - 1),  # a length of 2^64 - 1
            key(0, VARINT) + b"\x01",  # field number 0
            key(MAX_FIELD_NUMBER, VARINT) + b"\x01",  # the largest field number
            b"\x0e\x01",  # wire type 6
            b"\x0f\x01",  # wire type 7
            key(UNKNOWN_FIELD, END_GROUP),  # a group that ends before it starts
            key(1, START_GROUP) + key(2, END_GROUP),  # a group closed by the wrong field
            nested_groups(99),
            nested_groups(100),
            nested_groups(101),
            nested_groups(10_000),
            nested_groups(200_000),
            nested_groups(1_000, closed=False),
            b"\x0d\x00\x00",  # a fixed32 cut short
            b"\x09\x00\x00\x00",  # a fixed64 cut short
        )
    )


@cache
def random_bytes() -> st.SearchStrategy[bytes]:
    """Bytes with no structure: short random strings, a random pattern repeated, or one of `malformed`."""
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=1, max_size=8).flatmap(
            lambda pattern: st.sampled_from((10, 1_000, 100_000)).map(lambda times: pattern * times)
        ),
        malformed(),
    )


@st.composite
def corrupted(draw: st.DrawFn, message: st.SearchStrategy[bytes]) -> bytes:
    """A message from `message` cut short, with one byte flipped, or with malformed bytes spliced in."""
    data = draw(message)
    if not data:
        return draw(malformed())
    position = draw(st.integers(0, len(data) - 1))
    damage = draw(st.sampled_from(("truncate", "flip", "splice")))
    if damage == "truncate":
        return data[:position]
    if damage == "flip":
        return data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
    return data[:position] + draw(malformed()) + data[position:]


FLOAT = struct.Struct("<f")
DOUBLE = struct.Struct("<d")
# NaN, infinities, signed zero, the smallest denormal, the largest finite value, a signalling NaN.
FLOAT_BITS = (
    FLOAT.pack(float("nan")),
    FLOAT.pack(float("inf")),
    FLOAT.pack(float("-inf")),
    FLOAT.pack(-0.0),
    FLOAT.pack(1.4e-45),
    FLOAT.pack(3.4028235e38),
    b"\x01\x00\x80\x7f",
    b"\xff\xff\xff\xff",
)
DOUBLE_BITS = (
    DOUBLE.pack(float("nan")),
    DOUBLE.pack(float("inf")),
    DOUBLE.pack(float("-inf")),
    DOUBLE.pack(-0.0),
    DOUBLE.pack(5e-324),
    DOUBLE.pack(1.7976931348623157e308),
    b"\x01\x00\x00\x00\x00\x00\xf0\x7f",
)
