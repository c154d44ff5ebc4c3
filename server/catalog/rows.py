"""The rows of the live catalog: one embedding per row, appended, never rewritten.

Row 0 is padding (a zero embedding), rows 1..N the version's base catalog in the order of item_ids.txt (row
r is item index r of the models), and every upsert appends a row. A batch reads rows below the size it
started with, so a writer appending rows (into spare capacity, or into a larger copy) never changes what
a batch in flight sees; the only rewrite is a row dying (a delete, or a newer row for the same item), which
a batch may see early, never late.
"""

from __future__ import annotations

import numpy as np

INITIAL_SPARE_ROWS = 1024


class RowStore:
    """Embeddings, model item indices and liveness by row; the ids live in `ids` (row -> item id)."""

    def __init__(self, base_ids: list[str], base_embeddings: np.ndarray) -> None:
        count, dimension = base_embeddings.shape
        capacity = count + 1 + max(INITIAL_SPARE_ROWS, count // 4)
        self.embeddings = np.zeros((capacity, dimension), dtype=np.float32)
        self.embeddings[1 : count + 1] = base_embeddings
        self.model_indices = np.zeros(capacity, dtype=np.int32)
        self.model_indices[1 : count + 1] = np.arange(1, count + 1, dtype=np.int32)
        self.live = np.zeros(capacity, dtype=bool)
        self.live[1 : count + 1] = True
        self.ids: list[str] = ["", *base_ids]
        self.size = count + 1  # rows in use, padding included
        self.base_count = count

    @property
    def dimension(self) -> int:
        """Embedding size."""
        return int(self.embeddings.shape[1])

    def append(self, item_id: str, embedding: np.ndarray, model_index: int) -> int:
        """Add a live row; returns it. Grows by copying into twice the capacity when full."""
        if self.size == len(self.live):
            self._grow()
        row = self.size
        self.embeddings[row] = embedding
        self.model_indices[row] = model_index
        self.live[row] = True
        self.ids.append(item_id)
        self.size = row + 1
        return row

    def kill(self, row: int) -> None:
        """Mark a row dead: it is never returned again."""
        self.live[row] = False

    def _grow(self) -> None:
        capacity = 2 * len(self.live)
        self.embeddings = _grown(self.embeddings, capacity)
        self.model_indices = _grown(self.model_indices, capacity)
        self.live = _grown(self.live, capacity)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """A copy of `array` with `capacity` rows, the new ones zero."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
