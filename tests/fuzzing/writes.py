"""RecordEvents and UpsertItems requests shaped like real writes, wrong in one way at a time.

Events carry times at and past the ends of protobuf's Timestamp range (years 1 and 9999) and nanos outside
0..999,999,999; types include EVENT_TYPE_UNSPECIFIED and numbers no type has; calls hold up to one past
the per-call limits. Only the fuzzing users and items of `values` are written, so the state stays bounded.
"""

from __future__ import annotations

from hypothesis import strategies as st

from recserve.v1 import catalog_pb2, events_pb2
from tests.fuzzing import values

# Seconds: now, the epoch, the first and last valid second of Timestamp and one past each, int64's ends.
SECONDS = (1_700_000_000, 0, -1, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800)
SECONDS_EXTREME = (2**63 - 1, -(2**63))
NANOS = (0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31))
EVENT_TYPES = (*range(7), 7, 99, -1, 2**31 - 1)
EVENT_COUNTS = (0, 1, 2, 3, 1000, 1001)  # state.max_events_per_call: 1000
ITEM_COUNTS = (0, 1, 2, 3, 1000, 1001)  # state.max_items_per_call: 1000
TAG_COUNTS = (0, 1, 2, 32, 33)  # state.max_tags_per_item: 32
USERS = values.BASE_USERS + values.FUZZ_USERS
LIMIT_TEXT = values.EXTREME_TEXT[:6]  # up to 257 bytes: a thousand of them still fit a message


def _times() -> st.SearchStrategy[tuple[int, int] | None]:
    seconds = st.one_of(st.sampled_from(SECONDS), st.sampled_from(SECONDS_EXTREME))
    return st.one_of(st.none(), st.tuples(seconds, st.sampled_from(NANOS)))


@st.composite
def _event(draw: st.DrawFn) -> events_pb2.UserEvent:
    user_id = draw(st.one_of(st.sampled_from(USERS), st.sampled_from(USERS), st.sampled_from(LIMIT_TEXT)))
    item_id = draw(
        st.one_of(st.sampled_from(values.BASE_ITEMS + values.FUZZ_ITEMS), st.sampled_from(LIMIT_TEXT))
    )
    event = events_pb2.UserEvent(user_id=user_id, item_id=item_id, type=draw(st.sampled_from(EVENT_TYPES)))
    time = draw(_times())
    if time is not None:
        event.time.seconds, event.time.nanos = time
    return event


def _repeat(draw: st.DrawFn, element: st.SearchStrategy, counts: tuple[int, ...]) -> list:
    """As many elements as a count from `counts`: up to three drawn ones, cycled."""
    count = draw(st.sampled_from(counts))
    drawn = draw(st.lists(element, min_size=min(count, 3), max_size=min(count, 3)))
    return [drawn[i % len(drawn)] for i in range(count)] if drawn else []


@st.composite
def record_events(draw: st.DrawFn) -> bytes:
    """A serialized RecordEventsRequest."""
    return events_pb2.RecordEventsRequest(events=_repeat(draw, _event(), EVENT_COUNTS)).SerializeToString()


@st.composite
def _item(draw: st.DrawFn) -> catalog_pb2.Item:
    item_id = draw(st.one_of(st.sampled_from(values.FUZZ_ITEMS), st.sampled_from(LIMIT_TEXT)))
    tags = _repeat(draw, st.one_of(st.sampled_from(values.TAGS), st.sampled_from(LIMIT_TEXT)), TAG_COUNTS)
    return catalog_pb2.Item(item_id=item_id, tags=tags)


@st.composite
def upsert_items(draw: st.DrawFn) -> bytes:
    """A serialized UpsertItemsRequest (items given twice in one call are INVALID_ARGUMENT: kept)."""
    return catalog_pb2.UpsertItemsRequest(items=_repeat(draw, _item(), ITEM_COUNTS)).SerializeToString()
