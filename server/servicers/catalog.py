"""`recserve.v1.Catalog`: converts messages to the write path's calls and back."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from recserve.server.servicers.converted import Converted
from recserve.server.state.writes import StateWrites
from recserve.v1 import catalog_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Catalog"]


def _id_and_tags(item: pb.Item) -> tuple[str, Sequence[str]]:
    return item.item_id, item.tags  # the tags as they are: their count is checked before they are read


class CatalogServicer:
    """Implements the Catalog service over the state's write path."""

    def __init__(self, writes: StateWrites) -> None:
        self._writes = writes

    async def UpsertItems(  # noqa: N802
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        """Add items or give them new features."""
        upserted = await self._writes.upsert_items(Converted(request.items, _id_and_tags))
        return pb.UpsertItemsResponse(upserted=upserted)

    async def DeleteItems(  # noqa: N802
        self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteItemsResponse:
        """Remove items."""
        deleted, unknown = await self._writes.delete_items(request.item_ids)
        return pb.DeleteItemsResponse(deleted=deleted, unknown_item_ids=unknown)

    async def GetItem(self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext) -> pb.Item:  # noqa: N802
        """One item as the server has it."""
        return pb.Item(item_id=request.item_id, tags=self._writes.item_tags(request.item_id))
