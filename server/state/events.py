"""What the live state is made of: user events and catalog changes, as plain values (no protobuf, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventType(enum.IntEnum):
    """What a user did to an item; the numbers are the API's `recserve.v1.EventType`."""

    VIEW = 1
    CLICK = 2
    ADD_TO_CART = 3
    PURCHASE = 4
    LIKE = 5
    DISLIKE = 6

    @property
    def is_positive(self) -> bool:
        """Whether the event says the user wanted the item (every type but DISLIKE)."""
        return self is not EventType.DISLIKE


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One event as stored: the item, what happened and when (milliseconds since the Unix epoch)."""

    user_id: str
    item_id: str
    type: EventType
    time_ms: int


@dataclass(frozen=True, slots=True)
class ItemUpsert:
    """An item added, or given new features."""

    item_id: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ItemDelete:
    """An item removed from the catalog."""

    item_id: str


CatalogChange = ItemUpsert | ItemDelete
