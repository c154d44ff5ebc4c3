"""Why a request did not decode: the field that holds invalid UTF-8, found by walking the wire format.

protobuf refuses a message whose string field is not UTF-8 without saying which field; a caller needs the
field to fix their request (`events[3].item_id is not valid UTF-8`). Only the error path pays for this walk.
"""

from __future__ import annotations

from collections import Counter

from google.protobuf.descriptor import Descriptor, FieldDescriptor

FIXED_SIZES = {1: 8, 5: 4}  # wire types 64-bit and 32-bit


def invalid_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The path (`events[3].item_id`) of the first string field in `data` that is not UTF-8, if any."""
    position, seen = 0, Counter[int]()
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type in FIXED_SIZES:
                position += FIXED_SIZES[wire_type]
            elif wire_type == 2:
                length, position = _varint(data, position)
                chunk, position = data[position : position + length], position + length
                found = _check(descriptor.fields_by_number.get(number), chunk, prefix, seen[number])
                seen[number] += 1
                if found:
                    return found
            else:
                return None  # groups or garbage: nothing more to learn
    except IndexError:
        return None
    return None


def _check(field: FieldDescriptor | None, chunk: bytes, prefix: str, occurrence: int) -> str | None:
    if field is None:
        return None
    name = f"{prefix}{field.name}" + (f"[{occurrence}]" if field.is_repeated else "")
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return name
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return invalid_utf8_field(field.message_type, chunk, f"{name}.")
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
