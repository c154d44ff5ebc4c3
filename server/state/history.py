"""What a user's stored events mean to the recommender: their context and the items to keep out.

Derived from the events on demand and cached by the backends per user, so that a batch pays a dictionary
lookup per user, not a walk over their history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recserve.server.state.events import EventType, UserEvent

StoredEvent = tuple[str, int, int]
"""An event as the backends keep it: (item id, EventType value, time in ms). Plain tuples of str and int
are untracked by the garbage collector, so millions of stored events add nothing to a collection's work
(frozen dataclasses would be walked by every full collection)."""


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's history as context: `context` most recent last, `seen` and `disliked` never recommended.

    `seen` holds every item of a positive event that no later DISLIKE took back; `disliked` the items whose
    latest event is a DISLIKE. An item is in at most one of them.
    """

    context: tuple[str, ...]
    seen: frozenset[str]
    disliked: frozenset[str]


EMPTY_PROFILE = UserProfile((), frozenset(), frozenset())


def stored(event: UserEvent) -> StoredEvent:
    """How a backend keeps `event` (its user is the key it is kept under)."""
    return event.item_id, int(event.type), event.time_ms


def user_events(user_id: str, events: Iterable[StoredEvent]) -> list[UserEvent]:
    """The stored events of a user as the API's events, oldest first (ties in arrival order)."""
    return [
        UserEvent(user_id, item, EventType(kind), time_ms) for item, kind, time_ms in in_time_order(events)
    ]


def in_time_order(events: Iterable[StoredEvent]) -> list[StoredEvent]:
    """Oldest first; events with the same time keep the order they arrived in."""
    return sorted(events, key=lambda event: event[2])


def derive_profile(events: Sequence[StoredEvent], max_context: int) -> UserProfile:
    """The profile of `events` (in arrival order); the context keeps the latest `max_context` items.

    An item's latest event decides: positive puts it (once, at the time of that event) into the context and
    into `seen`, DISLIKE takes it out of both and into `disliked`.
    """
    if not events:
        return EMPTY_PROFILE
    latest_positive: dict[str, None] = {}  # insertion order = order of each item's latest positive event
    disliked: set[str] = set()
    for item, kind, _ in in_time_order(events):
        latest_positive.pop(item, None)
        if kind == EventType.DISLIKE:
            disliked.add(item)
        else:
            disliked.discard(item)
            latest_positive[item] = None
    context = tuple(latest_positive)[-max_context:] if max_context else ()
    return UserProfile(context, frozenset(latest_positive), frozenset(disliked))
