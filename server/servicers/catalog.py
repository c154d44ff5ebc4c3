"""`recserve.v1.Catalog`: converts messages to the write path's calls and back."""

from __future__ import annotations

import grpc

from recserve.server.state.writes import StateWrites
from recserve.v1 import catalog_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Catalog"]


class CatalogServicer:
    """Implements the Catalog service over the state's write path."""

    def __init__(self, writes: StateWrites) -> None:
        self._writes = writes

    async def UpsertItems(  # noqa: N802
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        """Add items or give them new features."""
        upserted = await self._writes.upsert_items(
            [(item.item_id, list(item.tags)) for item in request.items]
        )
        return pb.UpsertItemsResponse(upserted=upserted)

    async def DeleteItems(  # noqa: N802
        self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteItemsResponse:
        """Remove items."""
        deleted, unknown = await self._writes.delete_items(list(request.item_ids))
        return pb.DeleteItemsResponse(deleted=deleted, unknown_item_ids=unknown)

    async def GetItem(self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext) -> pb.Item:  # noqa: N802
        """One item as the server has it."""
        return pb.Item(item_id=request.item_id, tags=self._writes.item_tags(request.item_id))
