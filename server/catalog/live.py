"""The live catalog of one model version: its base items plus every change since, searchable at once.

Changes arrive as catalog changes (`recserve.server.state.events`) from the write path, from replay at
start-up and from other replicas; applying them is two steps, so that the slow one runs off the event loop:
`prepare` embeds upserted items with the item tower (any thread), `commit` makes the changes visible (the
event loop, which owns the id maps). A change carrying a version is applied only when newer than the one the
item has (last write wins across replicas).

The index is rebuilt over the live rows in the background (`install_index`) when the delta grows; a batch
keeps the view, and so the index, it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recserve.server.catalog.rows import RowStore
from recserve.server.catalog.view import CatalogView
from recserve.server.runtime.ann_index import AnnIndex
from recserve.server.state.events import CatalogChange, ItemDelete, ItemUpsert

Version = tuple[int, int]
EMBED_CHUNK = 8192  # items per item-tower pass: a replay of a million upserts stays in bounded memory
EmbedItems = Callable[[np.ndarray, Sequence[tuple[str, ...]]], np.ndarray]
"""(model item indices [n] (0 = not in the training vocabulary), tags per item) -> unit embeddings [n, D]."""


@dataclass(frozen=True)
class BaseCatalog:
    """The catalog a model version was built with (row r + 1 is item_ids.txt's line r)."""

    ids: list[str]
    embeddings: np.ndarray
    tags: Sequence[tuple[str, ...]]
    popularity: np.ndarray
    index: AnnIndex


@dataclass(frozen=True)
class PreparedChanges:
    """Changes with the embeddings of their upserts, ready to commit."""

    changes: list[tuple[CatalogChange, Version | None]]
    embeddings: np.ndarray
    """Row i: the embedding of the i-th upsert among `changes`."""

    def versioned(self, version: Version | None) -> PreparedChanges:
        """The same changes, every one at `version` (the version their write was stored at)."""
        return PreparedChanges([(change, version) for change, _ in self.changes], self.embeddings)


class LiveCatalog:
    """Base catalog + changes. Commit on one thread (the event loop); views may be read on any."""

    def __init__(self, base: BaseCatalog, embed_items: EmbedItems, exact_search_max_items: int = 0) -> None:
        """While the catalog has at most `exact_search_max_items` live items, it is searched exactly."""
        self._exact_search_max_items = exact_search_max_items
        self._rows = RowStore(base.ids, base.embeddings)
        self._embed_items = embed_items
        self._base_index_by_id = {item_id: row for row, item_id in enumerate(base.ids, start=1)}
        self._row_by_id = dict(self._base_index_by_id)
        self._base_tags = base.tags
        self._tags_by_row: dict[int, tuple[str, ...]] = {}
        self._versions: dict[str, Version] = {}
        order = np.argsort(-np.asarray(base.popularity), kind="stable")
        self._popular_rows = (order + 1).astype(np.int32)
        self._index = base.index
        self._index_rows = np.arange(1, len(base.ids) + 1, dtype=np.int32)
        self._delta_start = len(base.ids) + 1
        self.index_generation = 0
        """How many times the index was rebuilt since the version was loaded."""
        self._version = 0
        self._view = self._new_view()

    def view(self) -> CatalogView:
        """The catalog as of now; cheap, take one per batch."""
        return self._view

    def row_of(self, item_id: str) -> int:
        """The item's live row, 0 when unknown or deleted."""
        return self._row_by_id.get(item_id, 0)

    def tags_of(self, item_id: str) -> tuple[str, ...] | None:
        """The item's tags, None when unknown or deleted."""
        row = self._row_by_id.get(item_id, 0)
        if row == 0:
            return None
        if row in self._tags_by_row:
            return self._tags_by_row[row]
        return tuple(self._base_tags[row - 1])

    def __len__(self) -> int:
        return len(self._row_by_id)

    @property
    def delta_size(self) -> int:
        """Rows searched exactly beside the index."""
        return self._rows.size - self._delta_start

    @property
    def dead_in_index(self) -> int:
        """Index entries whose rows died (they cost lookups; a rebuild drops them)."""
        return int(self._index_rows.size - np.count_nonzero(self._rows.live[self._index_rows]))

    def changes(self) -> list[tuple[CatalogChange, Version | None]]:
        """Every change since the base catalog: one per item, in its state now, with its version.

        What another version of the model applies to catch up with this one.
        """
        deleted = [
            (ItemDelete(item_id), self._versions.get(item_id))
            for item_id in self._base_index_by_id
            if item_id not in self._row_by_id
        ]
        upserted = [
            (ItemUpsert(self._rows.ids[row], tags), self._versions.get(self._rows.ids[row]))
            for row, tags in self._tags_by_row.items()
        ]
        return deleted + upserted

    def prepare(self, changes: Sequence[tuple[CatalogChange, Version | None]]) -> PreparedChanges:
        """Embed the upserts among `changes` (the item tower; safe on any thread)."""
        upserts = [change for change, _ in changes if isinstance(change, ItemUpsert)]
        if not upserts:
            return PreparedChanges(list(changes), np.zeros((0, self._rows.dimension), dtype=np.float32))
        model_indices = np.fromiter(
            (self._base_index_by_id.get(change.item_id, 0) for change in upserts),
            dtype=np.int32,
            count=len(upserts),
        )
        tags = [change.tags for change in upserts]
        embeddings = np.concatenate(
            [
                np.asarray(
                    self._embed_items(
                        model_indices[start : start + EMBED_CHUNK], tags[start : start + EMBED_CHUNK]
                    )
                )
                for start in range(0, len(upserts), EMBED_CHUNK)
            ]
        )
        return PreparedChanges(list(changes), embeddings.astype(np.float32, copy=False))

    def commit(self, prepared: PreparedChanges) -> int:
        """Make prepared changes visible to the next view; returns how many changed something."""
        applied, upsert_row = 0, 0
        for change, version in prepared.changes:
            is_upsert = isinstance(change, ItemUpsert)
            embedding = prepared.embeddings[upsert_row] if is_upsert else None
            upsert_row += is_upsert
            if version is not None:
                if version <= self._versions.get(change.item_id, (-1, -1)):
                    continue
                self._versions[change.item_id] = version
            applied += self._apply(change, embedding)
        self._view = self._new_view()
        return applied

    def _apply(self, change: CatalogChange, embedding: np.ndarray | None) -> bool:
        old_row = self._row_by_id.get(change.item_id, 0)
        if isinstance(change, ItemDelete):
            if old_row == 0:
                return False
            self._rows.kill(old_row)
            del self._row_by_id[change.item_id]
            self._tags_by_row.pop(old_row, None)
            return True
        if old_row and self.tags_of(change.item_id) == change.tags:
            return False  # the same item again (a replayed or echoed write): nothing to do
        model_index = self._base_index_by_id.get(change.item_id, 0)
        row = self._rows.append(change.item_id, embedding, model_index)
        self._row_by_id[change.item_id] = row
        self._tags_by_row[row] = change.tags
        if old_row:
            self._rows.kill(old_row)
            self._tags_by_row.pop(old_row, None)
        return True

    def index_snapshot(self) -> tuple[np.ndarray, np.ndarray, int]:
        """What a rebuild indexes: the live rows now, their embeddings (a copy), and the size they end at."""
        size = self._rows.size
        rows = (np.flatnonzero(self._rows.live[:size])).astype(np.int32)
        return rows, self._rows.embeddings[rows].copy(), size

    def install_index(self, index: AnnIndex, rows: np.ndarray, covered_size: int) -> None:
        """Search `index` (Annoy id i is row `rows[i]`) from now on; rows from `covered_size` on are delta."""
        self._index, self._index_rows, self._delta_start = index, rows, covered_size
        self.index_generation += 1
        self._view = self._new_view()

    def _new_view(self) -> CatalogView:
        rows = self._rows
        self._version += 1
        return CatalogView(
            embeddings=rows.embeddings,
            model_indices=rows.model_indices,
            live=rows.live,
            ids=rows.ids,
            size=rows.size,
            version=self._version,
            index=self._index,
            index_rows=self._index_rows,
            delta_start=self._delta_start,
            popular_rows=self._popular_rows,
            row_by_id=self._row_by_id,
            exact=self._exact_search_max_items > 0 and len(self._row_by_id) <= self._exact_search_max_items,
        )
