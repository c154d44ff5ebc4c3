"""A loaded model version's live catalog: its items as the base, its item tower for what is upserted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recserve.server.catalog.live import BaseCatalog, EmbedItems, LiveCatalog
from recserve.server.exceptions import UnavailableError
from recserve.server.repository import LoadedModel, Vocabulary


class TagNames(Sequence[tuple[str, ...]]):
    """The tag names of each base item, decoded from `item_tags.npy` when asked for (GetItem)."""

    def __init__(self, item_tags: np.ndarray, tags: Vocabulary) -> None:
        self._item_tags = item_tags
        self._names = tags.ids

    def __len__(self) -> int:
        return len(self._item_tags)

    def __getitem__(self, row: int) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._names[index - 1] for index in self._item_tags[row] if index > 0)


def item_embedder(model: LoadedModel) -> EmbedItems:
    """Embeds items with the version's item tower: their model index (0 = unknown) and their known tags.

    Tags the model was not trained on have no index and are left out.
    """
    tower = model.item_tower
    index_of = model.tags.index_by_id

    def embed(model_indices: np.ndarray, tags: Sequence[tuple[str, ...]]) -> np.ndarray:
        if tower is None:
            raise UnavailableError(
                f"model version {model.version} was built without an item tower: no upserts"
            )
        known = [[index_of[tag] for tag in item_tags if tag in index_of] for item_tags in tags]
        matrix = np.zeros((len(known), max(1, max(map(len, known), default=0))), dtype=np.int32)
        for row, indices in enumerate(known):
            matrix[row, : len(indices)] = indices
        return tower(item_index=model_indices, item_tags=matrix)["embedding"]

    return embed


def live_catalog(model: LoadedModel, exact_search_max_items: int = 0) -> LiveCatalog:
    """The catalog of `model` as built, ready for changes; exact search up to `exact_search_max_items`."""
    base = BaseCatalog(
        ids=list(model.items.ids),
        embeddings=model.item_embeddings,
        tags=TagNames(model.item_tags, model.tags),
        popularity=model.item_popularity,
        index=model.index,
    )
    return LiveCatalog(base, item_embedder(model), exact_search_max_items)
