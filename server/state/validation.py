"""Checks on writes before anything is stored: a rejected call changes nothing.

Messages name the API's fields (`events[3].item_id`), since they are shown to the caller as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recserve.server.exceptions import InvalidArgumentError
from recserve.server.state.events import EventType, ItemDelete, ItemUpsert, UserEvent

MAX_ID_BYTES = 256
MAX_TAG_BYTES = 256
# protobuf's Timestamp range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, in ms: a stored time outside
# it could never be read back (GetUserHistory failed on it for good).
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class WriteLimits:
    """How much one write call may carry."""

    max_events_per_call: int
    max_items_per_call: int
    max_tags_per_item: int


NANOS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event as the caller sent it: the type as a number, the time in ms or None for "now"."""

    user_id: str
    item_id: str
    type: int
    time_ms: int | None
    time_nanos: int = 0
    """The nanos of the caller's Timestamp (0 to 999,999,999; `time_ms` holds them to the millisecond)."""


def check_id(value: str, field: str) -> str:
    """`value` if it is a usable id: not empty, at most 256 bytes of UTF-8.

    Raises:
        InvalidArgumentError: naming `field`.
    """
    if not value:
        raise InvalidArgumentError(f"{field} is empty")
    if len(value) <= MAX_ID_BYTES // 4:  # 4 bytes per character at most: no need to encode
        return value
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise InvalidArgumentError(f"{field} is {size} bytes long; ids are at most {MAX_ID_BYTES} bytes")
    return value


def checked_events(events: Sequence[RawEvent], limits: WriteLimits, now_ms: int) -> list[UserEvent]:
    """The events to store, every one valid, unset times set to `now_ms`.

    Raises:
        InvalidArgumentError: too many events, or one is invalid (named by its position).
    """
    _check_count(len(events), limits.max_events_per_call, "events")
    checked = []
    for position, event in enumerate(events):
        field = f"events[{position}]"
        check_id(event.user_id, f"{field}.user_id")
        check_id(event.item_id, f"{field}.item_id")
        if not 0 <= event.time_nanos < NANOS_PER_SECOND:
            raise InvalidArgumentError(
                f"{field}.time.nanos is {event.time_nanos}; a Timestamp's nanos are 0 to 999,999,999"
            )
        time_ms = now_ms if event.time_ms is None else _check_time(event.time_ms, f"{field}.time")
        checked.append(
            UserEvent(event.user_id, event.item_id, _event_type(event.type, f"{field}.type"), time_ms)
        )
    return checked


def _check_time(time_ms: int, field: str) -> int:
    if not MIN_TIME_MS <= time_ms <= MAX_TIME_MS:
        raise InvalidArgumentError(
            f"{field} is out of range ({time_ms} ms since the epoch); times are from year 1 to 9999 UTC"
        )
    return time_ms


_EVENT_TYPES = {int(member): member for member in EventType}  # a dict lookup, not an enum call per event


def _event_type(value: int, field: str) -> EventType:
    kind = _EVENT_TYPES.get(value)
    if kind is not None:
        return kind
    if value == 0:
        raise InvalidArgumentError(f"{field} is EVENT_TYPE_UNSPECIFIED; say what happened (VIEW, CLICK, ...)")
    names = ", ".join(member.name for member in EventType)
    raise InvalidArgumentError(f"{field} is {value}, not an event type ({names})")


def checked_upserts(items: Sequence[tuple[str, Sequence[str]]], limits: WriteLimits) -> list[ItemUpsert]:
    """(item_id, tags) pairs as upserts; tags keep their order, repeats dropped.

    Raises:
        InvalidArgumentError: too many items or tags, an invalid id or tag, or an item given twice.
    """
    _check_count(len(items), limits.max_items_per_call, "items")
    upserts = []
    for position, (item_id, tags) in enumerate(items):
        field = f"items[{position}]"
        check_id(item_id, f"{field}.item_id")
        _check_count(len(tags), limits.max_tags_per_item, f"{field}.tags", per="item")
        for tag_position, tag in enumerate(tags):
            _check_tag(tag, f"{field}.tags[{tag_position}]")
        upserts.append(ItemUpsert(item_id, tuple(dict.fromkeys(tags))))
    _check_unique([upsert.item_id for upsert in upserts], "items", "item_id")
    return upserts


def checked_deletes(item_ids: Sequence[str], limits: WriteLimits) -> list[ItemDelete]:
    """The deletes of `item_ids`, each id checked; a repeated id counts once.

    Raises:
        InvalidArgumentError: too many ids, or an invalid one.
    """
    _check_count(len(item_ids), limits.max_items_per_call, "item_ids")
    for position, item_id in enumerate(item_ids):
        check_id(item_id, f"item_ids[{position}]")
    return [ItemDelete(item_id) for item_id in dict.fromkeys(item_ids)]


def _check_tag(tag: str, field: str) -> None:
    if not tag:
        raise InvalidArgumentError(f"{field} is empty")
    size = len(tag.encode("utf-8", "surrogatepass"))
    if size > MAX_TAG_BYTES:
        raise InvalidArgumentError(f"{field} is {size} bytes long; tags are at most {MAX_TAG_BYTES} bytes")


def _check_count(count: int, limit: int, field: str, per: str = "call") -> None:
    if count > limit:
        raise InvalidArgumentError(f"{field} has {count} entries; at most {limit} are allowed per {per}")


def _check_unique(values: Sequence[str], field: str, key: str) -> None:
    seen: dict[str, int] = {}
    for position, value in enumerate(values):
        if value in seen:
            raise InvalidArgumentError(
                f"{field}[{position}].{key} {value!r} is also {field}[{seen[value]}].{key}; give each once"
            )
        seen[value] = position
