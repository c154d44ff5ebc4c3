"""The clients' calls to live state (`recserve.v1.Events`, `recserve.v1.Catalog`) and their result types.

Mixed into `RecommenderClient` and `AsyncRecommenderClient`, so one client serves reads and writes over one
channel. Event types are the API's names ("VIEW", "CLICK", ... "DISLIKE"); times are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from recserve.v1 import catalog_pb2, catalog_pb2_grpc, events_pb2, events_pb2_grpc

EVENT_TYPES = tuple(name for name in events_pb2.EventType.keys() if name != "EVENT_TYPE_UNSPECIFIED")


@dataclass(frozen=True)
class Event:
    """What a user did to an item; `time_s` None means when the server receives it."""

    user_id: str
    item_id: str
    type: str = "VIEW"
    time_s: float | None = None

    def to_proto(self) -> events_pb2.UserEvent:
        """The API's message; an unknown type name raises ValueError before anything is sent."""
        message = events_pb2.UserEvent(
            user_id=self.user_id, item_id=self.item_id, type=events_pb2.EventType.Value(self.type)
        )
        if self.time_s is not None:
            message.time.FromNanoseconds(int(self.time_s * 1e9))
        return message

    @classmethod
    def from_proto(cls, message: events_pb2.UserEvent) -> Event:
        """Convert a stored event."""
        return cls(
            message.user_id,
            message.item_id,
            events_pb2.EventType.Name(message.type),
            message.time.ToNanoseconds() / 1e9,
        )


@dataclass(frozen=True)
class Item:
    """A catalog item and its content features."""

    item_id: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedEvents:
    """RecordEvents' answer: all events were stored; `unknown_item_ids` are not in the catalog (yet)."""

    accepted: int
    unknown_item_ids: list[str]


@dataclass(frozen=True)
class DeletedItems:
    """DeleteItems' answer."""

    deleted: int
    unknown_item_ids: list[str]


def _items(items: Iterable[Item | tuple[str, Iterable[str]]]) -> list[catalog_pb2.Item]:
    converted = []
    for item in items:
        item_id, tags = (item.item_id, item.tags) if isinstance(item, Item) else item
        converted.append(catalog_pb2.Item(item_id=item_id, tags=list(tags)))
    return converted


class LiveStateCalls:
    """Events and catalog calls of the blocking client (needs `_channel` and `_call_options`)."""

    _channel: Any
    _call_options: Any  # the client's: deadline and metadata of one call

    def record_events(self, events: Iterable[Event], timeout_s: float | None = None) -> RecordedEvents:
        """Store events; the next Recommend and Score for their users reflect them."""
        request = events_pb2.RecordEventsRequest(events=[event.to_proto() for event in events])
        response = events_pb2_grpc.EventsStub(self._channel).RecordEvents(
            request, **self._call_options(timeout_s)
        )
        return RecordedEvents(response.accepted, list(response.unknown_item_ids))

    def user_history(self, user_id: str, timeout_s: float | None = None) -> list[Event]:
        """The user's stored events, oldest first."""
        request = events_pb2.GetUserHistoryRequest(user_id=user_id)
        response = events_pb2_grpc.EventsStub(self._channel).GetUserHistory(
            request, **self._call_options(timeout_s)
        )
        return [Event.from_proto(event) for event in response.events]

    def delete_user_history(self, user_id: str, timeout_s: float | None = None) -> int:
        """Forget the user (on disk too); returns the events deleted."""
        request = events_pb2.DeleteUserHistoryRequest(user_id=user_id)
        stub = events_pb2_grpc.EventsStub(self._channel)
        return stub.DeleteUserHistory(request, **self._call_options(timeout_s)).deleted

    def upsert_items(
        self, items: Iterable[Item | tuple[str, Iterable[str]]], timeout_s: float | None = None
    ) -> int:
        """Add items or give them new tags; the next request can return them."""
        request = catalog_pb2.UpsertItemsRequest(items=_items(items))
        stub = catalog_pb2_grpc.CatalogStub(self._channel)
        return stub.UpsertItems(request, **self._call_options(timeout_s)).upserted

    def delete_items(self, item_ids: Iterable[str], timeout_s: float | None = None) -> DeletedItems:
        """Remove items; they are never returned again."""
        request = catalog_pb2.DeleteItemsRequest(item_ids=list(item_ids))
        response = catalog_pb2_grpc.CatalogStub(self._channel).DeleteItems(
            request, **self._call_options(timeout_s)
        )
        return DeletedItems(response.deleted, list(response.unknown_item_ids))

    def get_item(self, item_id: str, timeout_s: float | None = None) -> Item:
        """The item as the server has it; NOT_FOUND when unknown or deleted."""
        request = catalog_pb2.GetItemRequest(item_id=item_id)
        response = catalog_pb2_grpc.CatalogStub(self._channel).GetItem(
            request, **self._call_options(timeout_s)
        )
        return Item(response.item_id, tuple(response.tags))


class AsyncLiveStateCalls:
    """The same calls for the asyncio client, as coroutines."""

    _channel: Any
    _call_options: Any  # the client's: deadline and metadata of one call

    async def record_events(self, events: Iterable[Event], timeout_s: float | None = None) -> RecordedEvents:
        """Store events; the next Recommend and Score for their users reflect them."""
        request = events_pb2.RecordEventsRequest(events=[event.to_proto() for event in events])
        stub = events_pb2_grpc.EventsStub(self._channel)
        response = await stub.RecordEvents(request, **self._call_options(timeout_s))
        return RecordedEvents(response.accepted, list(response.unknown_item_ids))

    async def user_history(self, user_id: str, timeout_s: float | None = None) -> list[Event]:
        """The user's stored events, oldest first."""
        request = events_pb2.GetUserHistoryRequest(user_id=user_id)
        stub = events_pb2_grpc.EventsStub(self._channel)
        response = await stub.GetUserHistory(request, **self._call_options(timeout_s))
        return [Event.from_proto(event) for event in response.events]

    async def delete_user_history(self, user_id: str, timeout_s: float | None = None) -> int:
        """Forget the user (on disk too); returns the events deleted."""
        request = events_pb2.DeleteUserHistoryRequest(user_id=user_id)
        stub = events_pb2_grpc.EventsStub(self._channel)
        return (await stub.DeleteUserHistory(request, **self._call_options(timeout_s))).deleted

    async def upsert_items(
        self, items: Iterable[Item | tuple[str, Iterable[str]]], timeout_s: float | None = None
    ) -> int:
        """Add items or give them new tags; the next request can return them."""
        request = catalog_pb2.UpsertItemsRequest(items=_items(items))
        stub = catalog_pb2_grpc.CatalogStub(self._channel)
        return (await stub.UpsertItems(request, **self._call_options(timeout_s))).upserted

    async def delete_items(self, item_ids: Iterable[str], timeout_s: float | None = None) -> DeletedItems:
        """Remove items; they are never returned again."""
        request = catalog_pb2.DeleteItemsRequest(item_ids=list(item_ids))
        stub = catalog_pb2_grpc.CatalogStub(self._channel)
        response = await stub.DeleteItems(request, **self._call_options(timeout_s))
        return DeletedItems(response.deleted, list(response.unknown_item_ids))

    async def get_item(self, item_id: str, timeout_s: float | None = None) -> Item:
        """The item as the server has it; NOT_FOUND when unknown or deleted."""
        request = catalog_pb2.GetItemRequest(item_id=item_id)
        stub = catalog_pb2_grpc.CatalogStub(self._channel)
        response = await stub.GetItem(request, **self._call_options(timeout_s))
        return Item(response.item_id, tuple(response.tags))
