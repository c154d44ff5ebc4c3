"""Requests of any message type, built from its descriptor: `message` written field by field in the wire
format, `plain` by protobuf itself.

A new field or message type is fuzzed as soon as it is in a descriptor. `message` takes its values from
`values` (ids the server knows, ids at every limit, invalid UTF-8, numbers at the edges of their type); a
repeated field has a few elements or one element repeated up to just past the 4 MiB message limit; a map
is a repeated message; unknown fields and fields of the wrong wire type turn up now and then. `plain`
messages are valid and ordinary (meaningful ids, small numbers, a few elements): the ones that get past
the checks to the answers.
"""

from __future__ import annotations

import struct
from functools import cache

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests.fuzzing import values, wire

F = FieldDescriptor
MIB = 1 << 20
# What one huge repeated field adds up to: well under the limit, just under 4 MiB, just over.
HUGE_FIELD_BYTES = (64 << 10, 1 * MIB, 4 * MIB - (8 << 10), 4 * MIB + (8 << 10))
MAX_DEPTH = 4

_VARINTS = {
    F.TYPE_INT32: values.INT32,
    F.TYPE_INT64: values.INT64,
    F.TYPE_UINT32: values.UINT32,
    F.TYPE_UINT64: values.UINT64,
    F.TYPE_BOOL: st.sampled_from((0, 1, 2, 2**64 - 1)),
}
_ZIGZAG = {F.TYPE_SINT32: values.INT32, F.TYPE_SINT64: values.INT64}
_FIXED = {
    F.TYPE_FIXED32: (values.UINT32, struct.Struct("<I"), 32),
    F.TYPE_SFIXED32: (values.INT32, struct.Struct("<I"), 32),
    F.TYPE_FIXED64: (values.UINT64, struct.Struct("<Q"), 64),
    F.TYPE_SFIXED64: (values.INT64, struct.Struct("<Q"), 64),
}


def message(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A serialized message of `descriptor`'s type (possibly one protobuf itself would refuse)."""
    return _message(descriptor, MAX_DEPTH)


@cache
def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[bytes]:
    fields = [st.one_of(st.just(b""), *[_field(field, depth)] * 2) for field in descriptor.fields]
    extras = st.one_of(st.just(b""), st.just(b""), st.just(b""), _stray(descriptor))
    # The order by indices: a permutation of the drawn bytes themselves would hold them in its repr.
    order = st.permutations(range(len(fields) + 1))
    return st.tuples(st.tuples(*fields, extras), order).map(
        lambda drawn: b"".join(drawn[0][i] for i in drawn[1])
    )


def _stray(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """An unknown field, or a known field sent with the wrong wire type."""
    numbers = [field.number for field in descriptor.fields] or [1]
    return st.one_of(
        st.sampled_from(numbers).map(lambda number: wire.key(number, wire.VARINT) + b"\x01"),
        st.sampled_from(numbers).map(lambda number: wire.delimited(number, b"\xff\xff")),
        st.just(wire.delimited(wire.UNKNOWN_FIELD, b"unknown")),
        st.just(wire.fixed64(wire.UNKNOWN_FIELD, b"\x00" * 8)),
    )


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[bytes]:
    """Every occurrence of one field, encoded."""
    element = _element(field, depth)
    if not field.is_repeated:
        return element.map(lambda payload: _occurrence(field, payload))
    few = st.lists(element, min_size=1, max_size=3)
    if field.type in _PACKABLE:
        packed = few.map(lambda payloads: wire.delimited(field.number, b"".join(payloads)))
        unpacked = few.map(lambda payloads: b"".join(_occurrence(field, p) for p in payloads))
        huge = st.tuples(element, st.sampled_from(HUGE_FIELD_BYTES)).map(
            lambda drawn: wire.delimited(field.number, drawn[0] * max(1, drawn[1] // len(drawn[0])))
        )
        return st.one_of(packed, unpacked, packed, unpacked, huge)
    listed = few.map(lambda payloads: b"".join(_occurrence(field, p) for p in payloads))
    huge = st.tuples(element, st.sampled_from(HUGE_FIELD_BYTES)).map(lambda drawn: _repeated(field, *drawn))
    return st.one_of(listed, listed, listed, listed, huge)


def _repeated(field: FieldDescriptor, payload: bytes, total_bytes: int) -> bytes:
    one = _occurrence(field, payload)
    return one * max(1, total_bytes // len(one))


def _occurrence(field: FieldDescriptor, payload: bytes) -> bytes:
    """One occurrence of the field holding `payload` (a packed scalar's bytes, or a delimited body)."""
    if field.type in _VARINTS or field.type in _ZIGZAG or field.type == F.TYPE_ENUM:
        return wire.key(field.number, wire.VARINT) + payload
    if field.type in (F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return wire.fixed32(field.number, payload)
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return wire.fixed64(field.number, payload)
    return wire.delimited(field.number, payload)


def _fixed(strategy: st.SearchStrategy[int], packer: struct.Struct, bits: int) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda value: packer.pack(value & ((1 << bits) - 1)))


# Payload strategies of the numeric types: varint bytes, or the 4 or 8 bytes of a fixed field.
_NUMERIC: dict[int, st.SearchStrategy[bytes]] = {
    **{kind: strategy.map(wire.varint) for kind, strategy in _VARINTS.items()},
    **{
        kind: strategy.map(lambda value: wire.varint(wire.zigzag(value)))
        for kind, strategy in _ZIGZAG.items()
    },
    **{kind: _fixed(*fixed) for kind, fixed in _FIXED.items()},
    F.TYPE_FLOAT: st.one_of(st.sampled_from(wire.FLOAT_BITS), values.FINITE_FLOATS.map(wire.FLOAT.pack)),
    F.TYPE_DOUBLE: st.one_of(st.sampled_from(wire.DOUBLE_BITS), st.floats().map(wire.DOUBLE.pack)),
}


def _element(field: FieldDescriptor, depth: int) -> st.SearchStrategy[bytes]:
    """One value of the field as its payload: varint bytes, fixed bytes, or a delimited body."""
    kind = field.type
    if kind in _NUMERIC:
        return _NUMERIC[kind]
    if kind == F.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.sampled_from([*numbers, max(numbers) + 1, 99, -1, 2**31 - 1]).map(wire.varint)
    if kind == F.TYPE_STRING:
        return values.text_bytes(field.full_name, field.name)
    if kind == F.TYPE_BYTES:
        return values.binary(field.full_name, field.name)
    if kind == F.TYPE_MESSAGE and depth > 0:
        return _message(field.message_type, depth - 1)
    return st.just(b"")  # a message past MAX_DEPTH is empty; proto3 has no groups


_PACKABLE = {*_NUMERIC, F.TYPE_ENUM}


def plain(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A valid, ordinary serialized message of `descriptor`'s type."""
    return _plain(descriptor, MAX_DEPTH).map(lambda message: message.SerializeToString())


_SMALL_NUMBERS = st.sampled_from((0, 1, 2, 5, 10))


@cache
def _plain(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    message_class = message_factory.GetMessageClass(descriptor)
    fields = {
        field.name: st.one_of(st.none(), *[_plain_field(field, depth)] * 2) for field in descriptor.fields
    }
    return st.fixed_dictionaries(fields).map(
        lambda drawn: message_class(**{name: value for name, value in drawn.items() if value is not None})
    )


def _plain_field(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return st.dictionaries(_plain_value(key, depth), _plain_value(value, depth), max_size=2)
    if field.is_repeated:
        return st.lists(_plain_value(field, depth), max_size=3)
    return _plain_value(field, depth)


def _plain_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    kind = field.type
    if kind == F.TYPE_MESSAGE:
        if depth <= 0:
            return st.builds(message_factory.GetMessageClass(field.message_type))
        return _plain(field.message_type, depth - 1)
    if kind == F.TYPE_STRING:
        meaningful = values.pool(field.full_name, field.name)
        return st.sampled_from(meaningful) if meaningful else values.SHORT_TEXT
    if kind == F.TYPE_BYTES:
        return values.ID_BYTES
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    if kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.sampled_from((0.0, 0.5, 1.0))
    return _SMALL_NUMBERS
