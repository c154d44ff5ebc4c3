"""A user's stored events as the recommender reads them: context, seen items, the DISLIKE rule."""

from __future__ import annotations

import pytest

from recserve.server.exceptions import InvalidArgumentError
from recserve.server.state.events import EventType, UserEvent
from recserve.server.state.history import EMPTY_PROFILE, derive_profile, stored, user_events
from recserve.server.state.validation import (
    RawEvent,
    WriteLimits,
    checked_deletes,
    checked_events,
    checked_upserts,
)

LIMITS = WriteLimits(max_events_per_call=3, max_items_per_call=2, max_tags_per_item=2)


def event(item: str, kind: EventType = EventType.VIEW, time_ms: int = 0) -> tuple[str, int, int]:
    return stored(UserEvent("u", item, kind, time_ms))


def test_context_is_positive_items_most_recent_last_without_repeats() -> None:
    profile = derive_profile([event("a", time_ms=1), event("b", time_ms=2), event("a", time_ms=3)], 10)
    assert profile.context == ("b", "a")
    assert profile.seen == {"a", "b"} and not profile.disliked


def test_events_are_ordered_by_time_not_arrival() -> None:
    profile = derive_profile([event("late", time_ms=20), event("early", time_ms=10)], 10)
    assert profile.context == ("early", "late")


def test_context_keeps_the_latest_items() -> None:
    profile = derive_profile([event(f"i{n}", time_ms=n) for n in range(10)], 3)
    assert profile.context == ("i7", "i8", "i9")
    assert len(profile.seen) == 10


def test_dislike_removes_from_context_until_a_later_positive_event() -> None:
    disliked = derive_profile(
        [event("a", time_ms=1), event("a", EventType.DISLIKE, 2), event("b", time_ms=3)], 10
    )
    assert disliked.context == ("b",) and disliked.disliked == {"a"} and disliked.seen == {"b"}
    liked_again = derive_profile(
        [event("a", time_ms=1), event("a", EventType.DISLIKE, 2), event("a", EventType.PURCHASE, 3)], 10
    )
    assert liked_again.context == ("a",) and not liked_again.disliked


def test_no_events_is_the_empty_profile() -> None:
    assert derive_profile([], 10) is EMPTY_PROFILE


def test_checked_events_fill_in_the_time_and_convert_the_type() -> None:
    events = checked_events([RawEvent("u", "i", 2, None), RawEvent("u", "j", 6, 5)], LIMITS, now_ms=99)
    assert events == [UserEvent("u", "i", EventType.CLICK, 99), UserEvent("u", "j", EventType.DISLIKE, 5)]


@pytest.mark.parametrize(
    "raw, message",
    [
        ([RawEvent("", "i", 1, None)], "events[0].user_id is empty"),
        ([RawEvent("u", "i", 1, None), RawEvent("u", "x" * 257, 1, None)], "events[1].item_id is 257 bytes"),
        ([RawEvent("u", "i", 0, None)], "events[0].type is EVENT_TYPE_UNSPECIFIED"),
        ([RawEvent("u", "i", 42, None)], "events[0].type is 42"),
        (
            [RawEvent("u", "i", 1, 5), RawEvent("u", "i", 1, 1500, 1_500_000_000)],
            "events[1].time.nanos is 1500000000",
        ),
        ([RawEvent("u", "i", 1, -1, -1)], "events[0].time.nanos is -1"),
        ([RawEvent("u", "i", 1, None)] * 4, "events has 4 entries; at most 3"),
    ],
)
def test_invalid_events_name_the_field(raw: list[RawEvent], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        checked_events(raw, LIMITS, now_ms=0)


def test_an_id_of_256_bytes_of_utf8_is_allowed() -> None:
    item = "é" * 128  # 2 bytes each
    assert checked_events([RawEvent("u", item, 1, 1)], LIMITS, 0)[0].item_id == item


@pytest.mark.parametrize(
    "items, message",
    [
        ([("a", []), ("a", [])], r"items\[1\].item_id 'a' is also items\[0\].item_id"),
        ([("a", ["t1", "t2", "t3"])], r"items\[0\].tags has 3 entries; at most 2 are allowed per item"),
        ([("a", ["", "t"])], r"items\[0\].tags\[0\] is empty"),
        ([("a", []), ("b", []), ("c", [])], "items has 3 entries"),
    ],
)
def test_invalid_upserts_name_the_field(items: list[tuple[str, list[str]]], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        checked_upserts(items, LIMITS)


def test_upserts_drop_repeated_tags_and_deletes_repeated_ids() -> None:
    (upsert,) = checked_upserts([("a", ["t", "t"])], LIMITS)
    assert upsert.tags == ("t",)
    assert [d.item_id for d in checked_deletes(["a", "a"], LIMITS)] == ["a"]


def test_stored_events_read_back_as_the_api_has_them_oldest_first() -> None:
    events = [UserEvent("u", "b", EventType.LIKE, 20), UserEvent("u", "a", EventType.CLICK, 10)]
    assert user_events("u", [stored(e) for e in events]) == events[::-1]
