"""The two-stage pipeline for one batch: ONE user-tower pass, the ANN lookups, ONE ranker pass.

Recommend and Score queries can share a batch: both need the user embedding and ranker probabilities;
only Recommend needs candidates from the index. Nothing here knows gRPC or asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from opentelemetry.trace import Tracer

from recserve.server.repository import LoadedModel
from recserve.server.settings import RetrievalSettings
from recserve.server.statistics import StageStatistics
from recserve.server.telemetry.tracing import stage_span

EMPTY_INDICES = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class UserQuery:
    """Who to score for: a user index (0 = unknown) and known context item indices, most recent last."""

    user_index: int
    context: np.ndarray

    @property
    def is_cold_start(self) -> bool:
        """Nothing personal to go on: unknown user and no known context item."""
        return self.user_index == 0 and self.context.size == 0


@dataclass(frozen=True)
class RecommendQuery:
    """Top-k items for a user, never any of `excluded` (item indices)."""

    user: UserQuery
    k: int
    excluded: np.ndarray = field(default_factory=lambda: EMPTY_INDICES)


@dataclass(frozen=True)
class ScoreQuery:
    """P(like) for each of `item_indices`, in order."""

    user: UserQuery
    item_indices: np.ndarray


@dataclass(frozen=True)
class RankedItems:
    """Item indices and their probabilities, best first."""

    item_indices: np.ndarray
    scores: np.ndarray


Query = RecommendQuery | ScoreQuery
QueryResult = RankedItems | np.ndarray
STAGES = ("user_tower", "ann", "ranker")


class BatchPipeline:
    """Runs batches of queries against one loaded model version."""

    def __init__(
        self, model: LoadedModel, retrieval: RetrievalSettings, tracer: Tracer | None = None
    ) -> None:
        self.model = model
        self.retrieval = retrieval
        self._tracer = tracer  # stage spans, children of the current (batch) span when it is sampled
        self._popular_indices = (np.argsort(-model.item_popularity, kind="stable") + 1).astype(np.int32)
        self.stages = {stage: StageStatistics() for stage in STAGES}
        # Annoy releases the GIL, so a batch's lookups can run on several cores at once.
        self._ann_pool = (
            ThreadPoolExecutor(retrieval.ann_threads, thread_name_prefix="ann")
            if retrieval.ann_threads > 1
            else None
        )

    def close(self) -> None:
        """Stop the lookup threads."""
        if self._ann_pool is not None:
            self._ann_pool.shutdown(wait=True)

    def run_batch(self, queries: Sequence[Query]) -> list[QueryResult]:
        """Answer every query; one result per query, in order."""
        started_ns = time.perf_counter_ns()
        with stage_span(self._tracer, "user_tower", len(queries)):
            user_embeddings = self.embed_users([query.user for query in queries])
        tower_done_ns = time.perf_counter_ns()
        self.stages["user_tower"].record(len(queries), tower_done_ns - started_ns)
        with stage_span(self._tracer, "ann", len(queries)):
            item_lists = self._all_items_to_rank(queries, user_embeddings)
        ann_done_ns = time.perf_counter_ns()
        self.stages["ann"].record(len(queries), ann_done_ns - tower_done_ns)
        counts = np.fromiter((items.size for items in item_lists), dtype=np.int64, count=len(item_lists))
        with stage_span(self._tracer, "ranker", int(counts.sum())):
            probabilities = self.rank(np.repeat(user_embeddings, counts, axis=0), np.concatenate(item_lists))
        self.stages["ranker"].record(int(counts.sum()), time.perf_counter_ns() - ann_done_ns)
        results: list[QueryResult] = []
        per_query = np.split(probabilities, np.cumsum(counts)[:-1])
        for query, items, scores in zip(queries, item_lists, per_query, strict=True):
            results.append(_top_k(items, scores, query.k) if isinstance(query, RecommendQuery) else scores)
        return results

    def embed_users(self, users: Sequence[UserQuery]) -> np.ndarray:
        """One user-tower pass for all users over their context items' stored embeddings.

        Contexts are left-padded with 0 (zero rows) so the latest is last.
        """
        width = max(1, max(user.context.size for user in users))
        contexts = np.zeros((len(users), width), dtype=np.int32)
        for row, user in enumerate(users):
            if user.context.size:
                contexts[row, width - user.context.size :] = user.context
        user_indices = np.fromiter((user.user_index for user in users), dtype=np.int32, count=len(users))
        recent = gather_item_embeddings(self.model.item_embeddings, contexts)
        outputs = self.model.user_tower(user_index=user_indices, recent_item_embeddings=recent)
        return outputs["embedding"]

    def rank(self, user_embeddings: np.ndarray, item_indices: np.ndarray) -> np.ndarray:
        """One ranker pass over (user embedding, item) pairs: P(like) per pair."""
        if item_indices.size == 0:
            return np.zeros(0, dtype=np.float32)
        outputs = self.model.ranker(
            user_embedding=user_embeddings,
            item_embedding=gather_item_embeddings(self.model.item_embeddings, item_indices),
            item_index=item_indices,
        )
        return outputs["probability"].reshape(-1)

    def candidates(self, query: RecommendQuery, user_embedding: np.ndarray) -> np.ndarray:
        """Item indices to rank: ANN neighbours of the user, or popular items for cold start."""
        if query.user.is_cold_start:
            wanted = max(self.retrieval.cold_start_candidates, query.k)
            pool = self._popular_indices[: wanted + query.excluded.size]
        else:
            wanted = max(self.retrieval.candidate_count, query.k)
            annoy_ids = self.model.index.nearest_ids_to_vector(user_embedding, wanted + query.excluded.size)
            pool = np.array(annoy_ids, dtype=np.int32) + 1
        if query.excluded.size:
            pool = pool[_not_in(pool, query.excluded)]
        return pool[:wanted]

    def _all_items_to_rank(self, queries: Sequence[Query], user_embeddings: np.ndarray) -> list[np.ndarray]:
        """Per query, the items the ranker scores; the lookups are spread over `ann_threads` threads."""
        rows = range(len(queries))
        if self._ann_pool is None or len(queries) < 2:
            return [self._items_to_rank(queries[row], user_embeddings[row]) for row in rows]
        chunks = [rows[start :: self.retrieval.ann_threads] for start in range(self.retrieval.ann_threads)]
        found: list[np.ndarray | None] = [None] * len(queries)

        def look_up(chunk: range) -> None:
            for row in chunk:
                found[row] = self._items_to_rank(queries[row], user_embeddings[row])

        list(self._ann_pool.map(look_up, chunks))
        return found  # type: ignore[return-value]  # every row was filled

    def _items_to_rank(self, query: Query, user_embedding: np.ndarray) -> np.ndarray:
        if isinstance(query, RecommendQuery):
            return self.candidates(query, user_embedding)
        return query.item_indices


def gather_item_embeddings(item_embeddings: np.ndarray, item_indices: np.ndarray) -> np.ndarray:
    """Rows of `item_embeddings` (row r = item index r + 1) for `item_indices` of any shape, in one gather.

    Index 0 (padding) gives a zero row, which is how the user tower tells padding apart.
    """
    rows = item_embeddings[np.maximum(item_indices, 1) - 1]
    rows[item_indices == 0] = 0.0
    return rows


def _not_in(values: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Mask of `values` not in `excluded`.

    For the usual handful of excluded items a broadcast compare costs a third of np.isin (which sorts);
    it runs once per query, holding the GIL.
    """
    if excluded.size > 32:
        return ~np.isin(values, excluded)
    return ~(values[:, None] == excluded[None, :]).any(axis=1)


def _top_k(items: np.ndarray, scores: np.ndarray, k: int) -> RankedItems:
    order = np.argsort(-scores, kind="stable")[:k]
    return RankedItems(items[order], scores[order])


RecommendFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def offline_recommender(version_dir: Path, batch_size: int = 64) -> RecommendFn:
    """A batch recommend function over a built version, for offline evaluation through this pipeline.

    The returned `recommend(user_indices [B], contexts [B, L], k) -> item indices [B, k]` treats 0 in
    contexts as padding, excludes context items (as the server does by default) and pads short rows with 0.
    """
    from recserve.server.repository import load_model
    from recserve.server.settings import load_model_config

    config = load_model_config(version_dir.parent)
    pipeline = BatchPipeline(load_model(version_dir, config.retrieval.search_k), config.retrieval)

    def recommend(user_indices: np.ndarray, contexts: np.ndarray, k: int) -> np.ndarray:
        out = np.zeros((len(user_indices), k), dtype=np.int32)
        for start in range(0, len(user_indices), batch_size):
            queries = []
            for user_index, context in zip(
                user_indices[start : start + batch_size], contexts[start : start + batch_size], strict=True
            ):
                known = context[context > 0].astype(np.int32)
                queries.append(RecommendQuery(UserQuery(int(user_index), known), k, np.unique(known)))
            for row, result in enumerate(pipeline.run_batch(queries), start=start):
                out[row, : result.item_indices.size] = result.item_indices
        return out

    return recommend
