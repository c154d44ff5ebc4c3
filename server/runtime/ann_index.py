"""An Annoy approximate-nearest-neighbour index over item embeddings (angular metric = cosine order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex


def cosine_from_angular(distances: np.ndarray) -> np.ndarray:
    """Annoy's angular distance is sqrt(2 - 2 cos) between unit vectors; invert it."""
    return 1.0 - np.square(distances) / 2.0


class AnnIndex:
    """A memory-mapped, read-only Annoy index. Queries release the GIL, so threads can overlap them."""

    def __init__(self, path: Path, dimension: int, search_k: int = -1, metric: str = "angular") -> None:
        self.path = path
        self.dimension = dimension
        self.metric = metric
        self.search_k = search_k
        self._index = AnnoyIndex(dimension, metric)
        self._index.load(str(path), prefault=False)  # mmap: pages are shared and loaded on demand

    def __len__(self) -> int:
        return self._index.get_n_items()

    @property
    def n_trees(self) -> int:
        """Trees in the index (fixed when it was built)."""
        return self._index.get_n_trees()

    def nearest_ids_to_vector(self, vector: np.ndarray, count: int) -> list[int]:
        """The annoy ids of the `count` items closest to `vector`, closest first (no distances: cheaper)."""
        return self._index.get_nns_by_vector(vector, count, self.search_k)

    def nearest_to_item(self, annoy_id: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` items closest to item `annoy_id` (itself included): (ids, cosine similarities)."""
        ids, distances = self._index.get_nns_by_item(annoy_id, count, self.search_k, include_distances=True)
        return np.asarray(ids, dtype=np.int64), cosine_from_angular(np.asarray(distances, dtype=np.float32))

    def unload(self) -> None:
        """Release the memory map."""
        self._index.unload()


def build_index(path: Path, embeddings: np.ndarray, n_trees: int, seed: int) -> None:
    """Write an angular Annoy index of `embeddings` to `path`: Annoy id r is row r.

    One build job, so the same seed gives the same trees.
    """
    index = AnnoyIndex(embeddings.shape[1], "angular")
    index.set_seed(seed)
    for row, vector in enumerate(embeddings):
        index.add_item(row, vector)
    index.build(n_trees, n_jobs=1)
    index.save(str(path))
    index.unload()
