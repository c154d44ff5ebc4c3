"""An Annoy approximate-nearest-neighbour index over item embeddings (angular metric = cosine order).

Annoy builds and writes the index. Lookups go through `recserve.native._annoy_search`, which memory-maps the
file and runs Annoy's search for a whole chunk of queries in one call without the GIL (Annoy's own API
takes the GIL twice per query, and the lookup threads would queue for it behind the event loop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from recserve.native import load_extension

_annoy_search = load_extension("annoy_search")


class AnnIndex:
    """A memory-mapped, read-only Annoy index. Queries release the GIL, so threads can overlap them."""

    metric = "angular"

    def __init__(self, path: Path, dimension: int, search_k: int = -1) -> None:
        """Map the index file at `path`; `search_k` is Annoy's (nodes inspected per query, -1: its default).

        Raises:
            OSError: the file cannot be read.
            RuntimeError: it is not an angular Annoy index of `dimension`.
        """
        self.path = path
        self.dimension = dimension
        self.search_k = search_k
        # mmap: pages are shared (between workers too) and read on demand
        self._forest = _annoy_search.AnnoyForest(str(path), dimension)

    def __len__(self) -> int:
        return self._forest.n_items

    @property
    def n_trees(self) -> int:
        """Trees in the index (fixed when it was built)."""
        return self._forest.n_trees

    def nearest_ids_to_vector(self, vector: np.ndarray, count: int) -> np.ndarray:
        """The annoy ids of the `count` items closest to `vector`, closest first (no distances: cheaper)."""
        (ids,) = self.nearest_ids(vector[None, :], np.array([count], dtype=np.int32))
        return ids

    def nearest_ids(self, vectors: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Per row of `vectors`, the annoy ids (int32) of its `counts[row]` closest items, closest first.

        One call for every row, and none of it holds the GIL: the same results as Annoy's
        `get_nns_by_vector` row by row.
        """
        ids, lengths = self._forest.search(vectors, counts, self.search_k)
        return [ids[row, :length] for row, length in enumerate(lengths.tolist())]

    def unload(self) -> None:
        """Release the memory map (waits for lookups under way)."""
        self._forest.close()


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
