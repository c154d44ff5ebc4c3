"""The recommender as the servicers see it, without gRPC.

It validates requests, maps ids to catalog rows, sends queries through the dynamic batcher and maps the
answers back to ids. It owns the model version's live catalog and the background rebuilds of its index.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import Tracer

from recserve.server.batching import DynamicBatcher
from recserve.server.catalog.from_model import live_catalog
from recserve.server.catalog.live import LiveCatalog
from recserve.server.catalog.rebuild import IndexRebuilder, RebuildPolicy
from recserve.server.context import NO_ROWS, UserQuery
from recserve.server.exceptions import InvalidArgumentError, NotFoundError
from recserve.server.pipeline import (
    BatchPipeline,
    HistoryReader,
    Query,
    QueryResult,
    RankedItems,
    RecommendQuery,
    ScoreQuery,
    Scores,
)
from recserve.server.repository import LoadedModel
from recserve.server.settings import BatchingSettings, ModelConfig
from recserve.server.state.validation import check_id
from recserve.server.telemetry.tracing import BatchTracer
from recserve.server.threads import LoopThreads

MAX_IDS_IN_MESSAGE = 5
MAX_DIRECT_THREADS = 8


@dataclass(frozen=True)
class Recommendation:
    """Items with their scores, best first."""

    items: list[tuple[str, float]]
    model_version: str
    cold_start: bool = False
    unknown_item_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredItems:
    """P(like) per requested item, in request order."""

    scores: np.ndarray
    model_version: str
    cold_start: bool
    unknown_item_ids: list[str]


class RecommenderService:
    """Serves one loaded model version and its live catalog through one dynamic batcher."""

    def __init__(
        self,
        model: LoadedModel,
        config: ModelConfig,
        batching: BatchingSettings,
        history: HistoryReader | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`history` None: no stored history; `tracer` None: no spans at all (tracing off)."""
        self.model = model
        self.config = config
        self.catalog: LiveCatalog = live_catalog(model, config.retrieval.exact_search_max_items)
        self.pipeline = BatchPipeline(model, self.catalog, config.retrieval, config.limits, history, tracer)
        retrieval = config.retrieval
        self.rebuilder = IndexRebuilder(
            self.catalog,
            RebuildPolicy(
                retrieval.rebuild_delta_items,
                retrieval.rebuild_interval_seconds,
                model.index.n_trees,
                retrieval.search_k,
            ),
        )
        # One thread per batch in flight: TensorFlow and Annoy release the GIL, so batches overlap.
        self.executor = LoopThreads(batching.instance_count, "batch")
        # Calls that skip the batcher (SimilarItems, the KServe towers and ranker): off the event loop,
        # never behind a batch; a thread per core this process may use (they release the GIL), at most 8.
        self.direct = LoopThreads(min(len(os.sched_getaffinity(0)), MAX_DIRECT_THREADS), "direct")
        batch_tracer = (
            BatchTracer(tracer, {"recserve.model.name": model.name, "recserve.model.version": model.version})
            if tracer is not None
            else None
        )
        self.batcher: DynamicBatcher[Query, QueryResult] = DynamicBatcher(
            self.pipeline.run_batch,
            batching,
            self.executor,
            name=f"{model.name}:{model.version}",
            tracer=batch_tracer,
        )

    def start(self) -> None:
        """Start batching and index rebuilds (call from the event loop)."""
        self.batcher.start()
        self.rebuilder.start()

    async def close(self) -> None:
        """Finish queued work and stop."""
        await self.batcher.close()
        await self.rebuilder.close()
        self.executor.shutdown(wait=True)
        self.direct.shutdown(wait=True)
        self.pipeline.close()

    def catalog_changed(self) -> None:
        """Called after catalog changes were committed: a large delta starts an index rebuild."""
        self.rebuilder.changed()

    async def recommend(
        self,
        user_id: str,
        recent_item_ids: Sequence[str],
        k: int,
        exclude_item_ids: Sequence[str] = (),
        include_recent_items: bool = False,
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
    ) -> Recommendation:
        """Top-k items for the user, scored by P(like); see RecommendRequest in the API."""
        k = self._checked_k(k)
        user, unknown = self._user_query(user_id, recent_item_ids, ignore_history)
        never = set(exclude_item_ids) if include_recent_items else {*exclude_item_ids, *recent_item_ids}
        query = RecommendQuery(user, k, self._known_rows(never), exclude_seen=not include_recent_items)
        result = await self.batcher.submit(query, timeout_s, priority)
        assert isinstance(result, RankedItems)
        ids = self.catalog.view().ids
        items = [
            (ids[row], score) for row, score in zip(result.rows.tolist(), result.scores.tolist(), strict=True)
        ]
        return Recommendation(items, self.model.version, result.cold_start, unknown)

    async def score(
        self,
        user_id: str,
        recent_item_ids: Sequence[str],
        item_ids: Sequence[str],
        timeout_s: float | None = None,
        priority: int = 0,
        ignore_history: bool = False,
    ) -> ScoredItems:
        """P(like) for each item in order; see ScoreRequest in the API."""
        limit = self.config.limits.max_score_items
        if len(item_ids) > limit:
            raise InvalidArgumentError(f"item_ids has {len(item_ids)} entries; at most {limit} are allowed")
        rows = self._required_rows(item_ids)
        user, unknown = self._user_query(user_id, recent_item_ids, ignore_history)
        result = await self.batcher.submit(ScoreQuery(user, rows), timeout_s, priority)
        assert isinstance(result, Scores)
        return ScoredItems(result.scores, self.model.version, result.cold_start, unknown)

    async def similar_items(self, item_id: str, k: int) -> Recommendation:
        """The k items most similar (cosine) to `item_id`, excluding itself."""
        k = self._checked_k(k)
        row = int(self._required_rows([item_id])[0])
        view = self.catalog.view()
        rows, similarities = await self.direct.run(asyncio.get_running_loop(), view.similar, row, k)
        items = [(view.ids[r], s) for r, s in zip(rows.tolist(), similarities.tolist(), strict=True)]
        return Recommendation(items, self.model.version)

    async def embed_users(self, users: Sequence[tuple[str, Sequence[str]]]) -> np.ndarray:
        """User-tower embeddings [len(users), D] of (user_id, recent_item_ids) pairs, as Recommend has them.

        Stored history counts, unknown users are cold start and unknown context items are skipped, as in
        Recommend. One forward pass for all of them, off the event loop but outside the batcher: the caller
        already batched them.
        """
        queries = [self._user_query(user_id, recent, False)[0] for user_id, recent in users]
        view = self.catalog.view()

        def embed() -> np.ndarray:
            return self.pipeline.embed(self.pipeline.resolve_users(queries, view), view)

        return await self.direct.run(asyncio.get_running_loop(), embed)

    async def embed_items(self, item_ids: Sequence[str]) -> np.ndarray:
        """The item-tower embeddings [len(item_ids), D] the catalog holds and searches (the tower's outputs).

        Raises:
            NotFoundError: an unknown or deleted item id (named).
        """
        return self.catalog.view().embeddings[self._required_rows(item_ids)]

    async def rank(self, user_embeddings: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """P(like) [len(item_ids)] of each (user embedding, item) row, one ranker pass.

        Raises:
            NotFoundError: an unknown or deleted item id (named).
        """
        rows = self._required_rows(item_ids)
        view = self.catalog.view()
        return await self.direct.run(
            asyncio.get_running_loop(), self.pipeline.rank, user_embeddings, rows, view
        )

    def _checked_k(self, k: int) -> int:
        limits = self.config.limits
        if k == 0:
            return limits.default_k
        if k < 0 or k > limits.max_k:
            raise InvalidArgumentError(
                f"k must be between 1 and {limits.max_k} (0 means {limits.default_k}); got {k}"
            )
        return k

    def _user_query(
        self, user_id: str, recent_item_ids: Sequence[str], ignore_history: bool
    ) -> tuple[UserQuery, list[str]]:
        """The user as the request names them: index, known context rows (latest kept), unknown ids."""
        user_index = self.model.users.index_by_id.get(user_id, 0)
        if not user_index and user_id:
            check_id(user_id, "user_id")  # longer than any id can be: refused, not served as cold start
        if not recent_item_ids:
            return UserQuery(user_id, user_index, NO_ROWS, not ignore_history), []
        limit = self.config.limits.max_recent_items
        # Sliced only when too long: copying a protobuf repeated field costs more than reading it.
        recent = recent_item_ids if len(recent_item_ids) <= limit else list(recent_item_ids)[-limit:]
        # Plain lists: a request names a handful of ids, where numpy's per-call overhead dominates.
        found = [self.catalog.row_of(i) for i in recent]
        unknown = (
            [item_id for item_id, row in zip(recent, found, strict=True) if row == 0] if 0 in found else []
        )
        for item_id in filter(None, unknown):  # echoed back in unknown_item_ids: only what could be an id
            check_id(item_id, "an entry of recent_item_ids")
        rows = np.array([row for row in found if row], dtype=np.int32)
        return UserQuery(user_id, user_index, rows, not ignore_history), unknown

    def _known_rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the live ids among `item_ids` (unknown ones ignored), in no particular order."""
        if not item_ids:
            return NO_ROWS
        row_of = self.catalog.row_of
        return np.array([row for row in map(row_of, item_ids) if row], dtype=np.int32)

    def _required_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows in order. Raises NotFoundError naming the unknown or deleted ids."""
        rows = np.fromiter((self.catalog.row_of(i) for i in item_ids), dtype=np.int32, count=len(item_ids))
        if (rows == 0).any():
            missing = [item_id for item_id, row in zip(item_ids, rows, strict=True) if row == 0]
            shown = ", ".join(repr(m) for m in missing[:MAX_IDS_IN_MESSAGE])
            more = (
                f" and {len(missing) - MAX_IDS_IN_MESSAGE} more" if len(missing) > MAX_IDS_IN_MESSAGE else ""
            )
            raise NotFoundError(f"unknown item id {shown}{more}: not in the catalog")
        return rows
