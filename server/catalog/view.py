"""What one batch sees of the live catalog, and retrieval over it: the Annoy index plus the exact delta.

Rows the index covers are searched through Annoy (approximately), the rows appended since it was built (the
delta) exactly, with one matrix product for the whole batch. A catalog small enough that one product over
every row costs less than the Annoy lookups is searched exactly throughout (`exact`). Dead rows (deleted
items, or items whose features changed) and each query's excluded rows are dropped from both, fetching more
from the index when too few are left, so a query still gets `wanted` candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from recserve.server.runtime.ann_index import AnnIndex

MAX_REFETCHES = 3
SCORE_BUDGET = 4 * 1024 * 1024
"""Most cosines an exact search holds at once (16 MiB of float32): 64 queries over 65,536 items."""
NO_ROWS = np.zeros(0, dtype=np.int32)

Mapper = Callable[[Callable[[Sequence[int]], list[np.ndarray]], int], list[np.ndarray]]
"""Runs a function over chunks of the positions range(count) (perhaps a chunk per thread); the function
answers its chunk's positions in their order, the mapper every position in order."""


def spread_over(pool: Executor | None, threads: int) -> Mapper:
    """A Mapper running `threads` strided chunks of the positions on `pool`, else one on the caller's thread.

    A chunk's lookups hold no GIL, so one batch's chunks overlap on the pool's threads.
    """

    def mapper(function: Callable[[Sequence[int]], list[np.ndarray]], count: int) -> list[np.ndarray]:
        if pool is None or threads < 2 or count < 2:
            return function(range(count))
        chunks = [range(start, count, threads) for start in range(min(threads, count))]
        results: list[np.ndarray] = [NO_ROWS] * count
        for chunk, answers in zip(chunks, pool.map(function, chunks), strict=True):
            for position, rows in zip(chunk, answers, strict=True):
                results[position] = rows
        return results

    return mapper


def on_this_thread(function: Callable[[Sequence[int]], list[np.ndarray]], count: int) -> list[np.ndarray]:
    """The Mapper that runs every position as one chunk on the caller's thread."""
    return function(range(count))


@dataclass(frozen=True)
class Retrieval:
    """One query's retrieval: its user embedding's row in the batch, how many rows, which never."""

    position: int
    wanted: int
    excluded: np.ndarray = field(default_factory=lambda: NO_ROWS)
    """Rows never to return, sorted and unique."""


@dataclass(frozen=True)
class CatalogView:
    """The catalog as of one moment. Rows below `size` never change, except for dying."""

    embeddings: np.ndarray
    model_indices: np.ndarray
    live: np.ndarray
    ids: list[str]
    size: int
    version: int
    """Counts the catalog's commits and index swaps: rows mean the same in two views of one version."""
    index: AnnIndex
    index_rows: np.ndarray
    """Row of each Annoy id."""
    delta_start: int
    """Rows from here on are not in the index: the delta, searched exactly."""
    popular_rows: np.ndarray
    """Base rows, most popular first."""
    row_by_id: dict[str, int]
    """The catalog's current row of each live item (shared: it changes after the view was taken)."""
    exact: bool = False
    """Every row is searched exactly, the index not at all."""

    def row_of(self, item_id: str) -> int:
        """The item's row in this view, 0 when unknown, deleted, or added after the view was taken."""
        row = self.row_by_id.get(item_id, 0)
        return row if row < self.size else 0

    @property
    def delta_size(self) -> int:
        """Rows searched exactly (dead ones included)."""
        return self.size - self.delta_start

    def retrieve(
        self, user_embeddings: np.ndarray, queries: Sequence[Retrieval], mapper: Mapper
    ) -> list[np.ndarray]:
        """Per query, up to `wanted` live rows closest to its user embedding by cosine, none excluded.

        The Annoy lookups run through `mapper`; the delta (in an `exact` view every row) is searched for
        all queries at once.
        """
        if self.exact:
            return self._exactly(self._vectors(user_embeddings, queries), queries, 1)[0]
        from_index = mapper(
            lambda chunk: self._from_index(user_embeddings, [queries[q] for q in chunk]), len(queries)
        )
        if self.delta_size == 0:
            return from_index
        vectors = self._vectors(user_embeddings, queries)
        delta_rows, delta_scores = self._exactly(vectors, queries, self.delta_start)
        return [
            _best(rows, self._cosines(rows, vector), extra, extra_scores, query.wanted)
            for rows, vector, extra, extra_scores, query in zip(
                from_index, vectors, delta_rows, delta_scores, queries, strict=True
            )
        ]

    def popular(self, query: Retrieval) -> np.ndarray:
        """The `wanted` most popular live rows not excluded (for users with nothing to go on)."""
        count = query.wanted + query.excluded.size
        while True:
            pool = self.popular_rows[:count]
            kept = pool[self._usable(pool, query.excluded)]
            if kept.size >= query.wanted or count >= self.popular_rows.size:
                return kept[: query.wanted]
            count *= 2

    def similar(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` live rows closest to `row` (itself excluded), with their cosine, closest first."""
        query = Retrieval(0, count, np.array([row], dtype=np.int32))
        vector = self.embeddings[row][None, :]
        (rows,) = self.retrieve(vector, [query], on_this_thread)
        scores = self._cosines(rows, vector[0])
        order = np.argsort(-scores, kind="stable")
        return rows[order], scores[order]

    def _from_index(self, user_embeddings: np.ndarray, queries: Sequence[Retrieval]) -> list[np.ndarray]:
        """Per query, its live, not excluded rows from Annoy, nearest first: one lookup call for all."""
        vectors = self._vectors(user_embeddings, queries)
        counts = np.fromiter(
            (query.wanted + query.excluded.size for query in queries), dtype=np.int32, count=len(queries)
        )
        found = self.index.nearest_ids(vectors, counts)
        return [
            self._live_rows(vector, query, ids, int(count))
            for vector, query, ids, count in zip(vectors, queries, found, counts, strict=True)
        ]

    def _live_rows(self, vector: np.ndarray, query: Retrieval, found: np.ndarray, count: int) -> np.ndarray:
        """The live, not excluded rows of `found` (the index's `count` nearest to `vector`), nearest first.

        Asks the index for more while dead or excluded rows leave too few.
        """
        for refetch in range(MAX_REFETCHES + 1):
            rows = self.index_rows[found] if found.size else NO_ROWS
            kept = rows[self._usable(rows, query.excluded)]
            if kept.size >= query.wanted or found.size < count or refetch == MAX_REFETCHES:
                break
            count *= 2
            found = self.index.nearest_ids_to_vector(vector, count)
        return kept[: query.wanted]

    @staticmethod
    def _vectors(user_embeddings: np.ndarray, queries: Sequence[Retrieval]) -> np.ndarray:
        """Each query's user embedding, in query order."""
        positions = np.fromiter((query.position for query in queries), dtype=np.int64, count=len(queries))
        return user_embeddings[positions]

    def _exactly(
        self, vectors: np.ndarray, queries: Sequence[Retrieval], start: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query, its best `wanted` live rows from `start` on (exact cosine) and their cosines.

        Queries go in chunks whose score matrix stays within SCORE_BUDGET floats, so a large catalog
        searched exactly costs time, not a matrix of batch size x catalog size at once.
        """
        items = self.embeddings[start : self.size].T
        dead = np.flatnonzero(~self.live[start : self.size])
        chunk = max(1, SCORE_BUDGET // max(1, self.size - start))
        rows_out: list[np.ndarray] = []
        scores_out: list[np.ndarray] = []
        for first in range(0, len(queries), chunk):
            part = queries[first : first + chunk]
            scores = vectors[first : first + chunk] @ items
            if dead.size:
                scores[:, dead] = -np.inf
            for row, query in enumerate(part):
                if query.excluded.size and query.excluded[-1] >= start:
                    scores[row, query.excluded[query.excluded >= start] - start] = -np.inf
            for row, best in enumerate(_top_columns(scores, [query.wanted for query in part])):
                best = best[np.isfinite(scores[row, best])]
                rows_out.append((best + start).astype(np.int32))
                scores_out.append(scores[row, best])
        return rows_out, scores_out

    def _usable(self, rows: np.ndarray, excluded: np.ndarray) -> np.ndarray:
        """Mask of `rows` that are live and not in `excluded`."""
        mask = self.live[rows]
        if excluded.size:
            mask &= _not_in(rows, excluded)
        return mask

    def _cosines(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return self.embeddings[rows] @ vector


SAMPLE_STEP = 8


def _top_columns(scores: np.ndarray, wanted: Sequence[int]) -> list[np.ndarray]:
    """Per row of `scores`, the columns of its `wanted[row]` highest values (unordered), exactly.

    A full partition of every row is most of an exact search's cost. A threshold from every 8th column
    (its 2 * wanted / 8 + 2 highest) leaves about 2 * wanted columns at or above it, which hold the row's top
    `wanted` whenever at least `wanted` of them do; a row where they do not is partitioned in full.
    """
    count = scores.shape[1]
    if count <= 4 * SAMPLE_STEP * max(wanted):
        return [
            np.argpartition(-row, min(w, count) - 1)[: min(w, count)]
            for row, w in zip(scores, wanted, strict=True)
        ]
    sample = scores[:, ::SAMPLE_STEP]
    positions = sample.shape[1] - np.array([2 * w // SAMPLE_STEP + 2 for w in wanted])
    partitioned = np.partition(sample, np.unique(positions), axis=1)  # each position holds its own rank
    thresholds = np.take_along_axis(partitioned, positions[:, None], axis=1)
    above = scores >= thresholds
    found = []
    for row, w in enumerate(wanted):
        columns = np.flatnonzero(above[row])
        if columns.size < w:
            columns = np.arange(count)
        found.append(columns[np.argpartition(-scores[row, columns], w - 1)[:w]])
    return found


def _best(
    rows: np.ndarray, scores: np.ndarray, more: np.ndarray, more_scores: np.ndarray, wanted: int
) -> np.ndarray:
    """The `wanted` rows of highest score among both sets (they never share a row)."""
    if more.size == 0:
        return rows
    every, every_score = np.concatenate([rows, more]), np.concatenate([scores, more_scores])
    if every.size > wanted:
        every = every[np.argpartition(-every_score, wanted - 1)[:wanted]]
    return every


def _not_in(values: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Mask of `values` not in `excluded` (sorted).

    It runs once per query, holding the GIL: a broadcast compare for the usual handful of excluded items,
    a binary search for a history's worth (np.isin would sort both arrays again every time).
    """
    if excluded.size <= 32:
        return ~(values[:, None] == excluded[None, :]).any(axis=1)
    positions = np.minimum(np.searchsorted(excluded, values), excluded.size - 1)
    return excluded[positions] != values
