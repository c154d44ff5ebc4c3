"""Why a request did not decode: the field that holds invalid UTF-8, found by walking the wire format.

protobuf refuses a message whose string field is not UTF-8 without saying which field; a caller needs the
field to fix their request (`events[3].item_id is not valid UTF-8`). Only the error path pays for this walk,
and never more than MAX_FIELDS_WALKED fields: the request is whatever a caller sent.
"""

from __future__ import annotations

from collections import Counter

from google.protobuf.descriptor import Descriptor, FieldDescriptor

FIXED_SIZES = {1: 8, 5: 4}  # wire types 64-bit and 32-bit
MAX_VARINT_BYTES = 10  # a longer one is garbage: read on, 4 MiB of 0xff made a big integer bit by bit (hours)
MAX_FIELDS_WALKED = 10_000  # past this, no name: a 4 MiB request of tiny fields took ~1 s of the event loop


def invalid_utf8_field(
    descriptor: Descriptor, data: bytes, prefix: str = "", budget: list[int] | None = None
) -> str | None:
    """The path (`events[3].item_id`) of the first string field in `data` that is not UTF-8, if any.

    None too when the data is not a message or holds more than MAX_FIELDS_WALKED fields before that one
    (`budget` is what is left of them, shared with the nested messages' walks).
    """
    position, seen = 0, Counter[int]()
    budget = [MAX_FIELDS_WALKED] if budget is None else budget
    try:
        while position < len(data):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type in FIXED_SIZES:
                position += FIXED_SIZES[wire_type]
            elif wire_type == 2:
                length, position = _varint(data, position)
                chunk, position = data[position : position + length], position + length
                found = _check(descriptor.fields_by_number.get(number), chunk, prefix, seen[number], budget)
                seen[number] += 1
                if found:
                    return found
            else:
                return None  # groups or garbage: nothing more to learn
    except (IndexError, ValueError):
        return None
    return None


def _check(
    field: FieldDescriptor | None, chunk: bytes, prefix: str, occurrence: int, budget: list[int]
) -> str | None:
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
        return invalid_utf8_field(field.message_type, chunk, f"{name}.", budget)
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it. Raises ValueError past MAX_VARINT_BYTES."""
    value = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise ValueError("varint longer than 10 bytes")
