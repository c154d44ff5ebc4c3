"""`recserve.v1.Events`: converts messages to the write path's calls and back."""

from __future__ import annotations

import grpc

from recserve.server.servicers.converted import Converted
from recserve.server.state.events import UserEvent
from recserve.server.state.validation import RawEvent
from recserve.server.state.writes import StateWrites
from recserve.v1 import events_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Events"]


def _time_ms(event: pb.UserEvent) -> int | None:
    """The event's time in ms, None when unset (the server's receive time then)."""
    if not event.HasField("time"):
        return None
    return event.time.seconds * 1000 + event.time.nanos // 1_000_000


def _raw_event(event: pb.UserEvent) -> RawEvent:
    return RawEvent(event.user_id, event.item_id, event.type, _time_ms(event), event.time.nanos)


def _message(event: UserEvent) -> pb.UserEvent:
    message = pb.UserEvent(user_id=event.user_id, item_id=event.item_id, type=int(event.type))
    message.time.FromMilliseconds(event.time_ms)
    return message


class EventsServicer:
    """Implements the Events service over the state's write path."""

    def __init__(self, writes: StateWrites) -> None:
        self._writes = writes

    async def RecordEvents(  # noqa: N802
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        """Store events."""
        recorded = await self._writes.record_events(Converted(request.events, _raw_event))
        return pb.RecordEventsResponse(accepted=recorded.accepted, unknown_item_ids=recorded.unknown_item_ids)

    async def GetUserHistory(  # noqa: N802
        self, request: pb.GetUserHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUserHistoryResponse:
        """What is stored about a user, oldest first."""
        events = await self._writes.user_history(request.user_id)
        return pb.GetUserHistoryResponse(events=[_message(event) for event in events])

    async def DeleteUserHistory(  # noqa: N802
        self, request: pb.DeleteUserHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserHistoryResponse:
        """Forget a user."""
        return pb.DeleteUserHistoryResponse(deleted=await self._writes.forget_user(request.user_id))
