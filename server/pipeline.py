"""The two-stage pipeline for one batch: the history read, ONE user-tower pass, retrieval, ONE ranker pass.

Recommend and Score queries can share a batch: both need the user embedding and ranker probabilities;
only Recommend needs candidates. A batch takes one view of the live catalog and reads every user's stored
history in one call to the state backend, so it sees every write acknowledged before it started. Items are
catalog rows throughout (row 0 is padding: a zero embedding). Nothing here knows gRPC or asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from opentelemetry.trace import Tracer

from recserve.server.catalog.live import LiveCatalog
from recserve.server.catalog.view import CatalogView, Retrieval, spread_over
from recserve.server.context import NO_ROWS, ContextResolver, ResolvedUser, UserQuery
from recserve.server.repository import LoadedModel
from recserve.server.settings import LimitSettings, RetrievalSettings
from recserve.server.state.history import EMPTY_PROFILE, UserProfile
from recserve.server.statistics import StageStatistics
from recserve.server.telemetry.tracing import stage_span
from recserve.server.threads import serving_pool

STAGES = ("history", "user_tower", "ann", "ranker")


class HistoryReader(Protocol):
    """The state backend's read side: each user's profile, for a whole batch at once (any thread)."""

    def profiles(self, user_ids: Sequence[str]) -> list[UserProfile]: ...  # noqa: D102


@dataclass(frozen=True)
class RecommendQuery:
    """Top-k items for a user, never any of `excluded` (rows); the history's seen items too unless told."""

    user: UserQuery
    k: int
    excluded: np.ndarray = field(default_factory=lambda: NO_ROWS)
    exclude_seen: bool = True


@dataclass(frozen=True)
class ScoreQuery:
    """P(like) for each of `item_rows`, in order."""

    user: UserQuery
    item_rows: np.ndarray


@dataclass(frozen=True)
class RankedItems:
    """Recommend's answer: catalog rows and their probabilities, best first."""

    rows: np.ndarray
    scores: np.ndarray
    cold_start: bool


@dataclass(frozen=True)
class Scores:
    """Score's answer: a probability per requested row, in order."""

    scores: np.ndarray
    cold_start: bool


Query = RecommendQuery | ScoreQuery
QueryResult = RankedItems | Scores


class BatchPipeline:
    """Runs batches of queries against one loaded model version and its live catalog."""

    def __init__(
        self,
        model: LoadedModel,
        catalog: LiveCatalog,
        retrieval: RetrievalSettings,
        limits: LimitSettings,
        history: HistoryReader | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`history` None: no stored history (offline evaluation); `tracer` None: no spans."""
        self.model = model
        self.catalog = catalog
        self.retrieval = retrieval
        self._resolver = ContextResolver(limits.max_recent_items)
        self._history = history
        self._tracer = tracer  # stage spans, children of the current (batch) span when it is sampled
        self.stages = {stage: StageStatistics() for stage in STAGES}
        # Annoy releases the GIL, so a batch's lookups can run on several cores at once.
        self._ann_pool = serving_pool(retrieval.ann_threads, "ann") if retrieval.ann_threads > 1 else None
        self._map = spread_over(self._ann_pool, retrieval.ann_threads)

    def close(self) -> None:
        """Stop the lookup threads."""
        if self._ann_pool is not None:
            self._ann_pool.shutdown(wait=True)

    def run_batch(self, queries: Sequence[Query]) -> list[QueryResult]:
        """Answer every query; one result per query, in order."""
        view = self.catalog.view()
        users = self.resolve_users([query.user for query in queries], view)
        started_ns = time.perf_counter_ns()
        with stage_span(self._tracer, "user_tower", len(queries)):
            user_embeddings = self.embed(users, view)
        tower_done_ns = time.perf_counter_ns()
        self.stages["user_tower"].record(len(queries), tower_done_ns - started_ns)
        with stage_span(self._tracer, "ann", len(queries)):
            item_lists = self._items_to_rank(queries, users, user_embeddings, view)
        ann_done_ns = time.perf_counter_ns()
        self.stages["ann"].record(len(queries), ann_done_ns - tower_done_ns)
        counts = np.fromiter((items.size for items in item_lists), dtype=np.int64, count=len(item_lists))
        with stage_span(self._tracer, "ranker", int(counts.sum())):
            probabilities = self.rank(
                np.repeat(user_embeddings, counts, axis=0), np.concatenate(item_lists), view
            )
        self.stages["ranker"].record(int(counts.sum()), time.perf_counter_ns() - ann_done_ns)
        per_query = np.split(probabilities, np.cumsum(counts)[:-1])
        return [
            _top_k(items, scores, query.k, user.is_cold_start)
            if isinstance(query, RecommendQuery)
            else Scores(scores, user.is_cold_start)
            for query, user, items, scores in zip(queries, users, item_lists, per_query, strict=True)
        ]

    def resolve_users(self, users: Sequence[UserQuery], view: CatalogView) -> list[ResolvedUser]:
        """Each user's context and exclusions: their stored history (one read for all) plus the request."""
        profiles = self._profiles(users)
        resolve = self._resolver.resolve
        return [resolve(user, profile, view) for user, profile in zip(users, profiles, strict=True)]

    def embed(self, users: Sequence[ResolvedUser], view: CatalogView) -> np.ndarray:
        """One user-tower pass over the users' contexts, left-padded with row 0 so the latest is last."""
        width = max(1, max(user.context.size for user in users))
        contexts = np.zeros((len(users), width), dtype=np.int32)
        for row, user in enumerate(users):
            if user.context.size:
                contexts[row, width - user.context.size :] = user.context
        user_indices = np.fromiter((user.user_index for user in users), dtype=np.int32, count=len(users))
        outputs = self.model.user_tower(
            user_index=user_indices, recent_item_embeddings=view.embeddings[contexts]
        )
        return outputs["embedding"]

    def rank(self, user_embeddings: np.ndarray, rows: np.ndarray, view: CatalogView) -> np.ndarray:
        """One ranker pass over (user embedding, catalog row) pairs: P(like) per pair."""
        if rows.size == 0:
            return np.zeros(0, dtype=np.float32)
        outputs = self.model.ranker(
            user_embedding=user_embeddings,
            item_embedding=view.embeddings[rows],
            item_index=view.model_indices[rows],
        )
        return outputs["probability"].reshape(-1)

    def _profiles(self, users: Sequence[UserQuery]) -> list[UserProfile]:
        """The stored profiles of the users whose requests use history (one backend call), else empty."""
        wanted = [row for row, user in enumerate(users) if user.use_history]
        if self._history is None or not wanted:
            return [EMPTY_PROFILE] * len(users)
        started_ns = time.perf_counter_ns()
        with stage_span(self._tracer, "history", len(wanted)):
            found = self._history.profiles([users[row].user_id for row in wanted])
        self.stages["history"].record(len(wanted), time.perf_counter_ns() - started_ns)
        profiles = [EMPTY_PROFILE] * len(users)
        for row, profile in zip(wanted, found, strict=True):
            profiles[row] = profile
        return profiles

    def _items_to_rank(
        self,
        queries: Sequence[Query],
        users: Sequence[ResolvedUser],
        user_embeddings: np.ndarray,
        view: CatalogView,
    ) -> list[np.ndarray]:
        """Per query, the rows the ranker scores: its items (Score), or candidates (Recommend)."""
        found: list[np.ndarray] = [
            query.item_rows if isinstance(query, ScoreQuery) else NO_ROWS for query in queries
        ]
        searched: list[int] = []
        retrievals: list[Retrieval] = []
        for position, (query, user) in enumerate(zip(queries, users, strict=True)):
            if not isinstance(query, RecommendQuery):
                continue
            excluded = _exclusions(query, user)
            if user.is_cold_start:
                wanted = max(self.retrieval.cold_start_candidates, query.k)
                found[position] = view.popular(Retrieval(position, wanted, excluded))
            else:
                searched.append(position)
                retrievals.append(Retrieval(position, max(self.retrieval.candidate_count, query.k), excluded))
        if retrievals:
            for position, rows in zip(
                searched, view.retrieve(user_embeddings, retrievals, self._map), strict=True
            ):
                found[position] = rows
        return found


def _exclusions(query: RecommendQuery, user: ResolvedUser) -> np.ndarray:
    """Rows a recommendation leaves out, sorted: the request's, the disliked, seen ones unless included."""
    history = user.seen_or_disliked if query.exclude_seen else user.disliked
    if not query.excluded.size:
        return history
    return np.union1d(query.excluded, history) if history.size else query.excluded


def _top_k(rows: np.ndarray, scores: np.ndarray, k: int, cold_start: bool) -> RankedItems:
    order = np.argsort(-scores, kind="stable")[:k]
    return RankedItems(rows[order], scores[order], cold_start)


RecommendFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def offline_recommender(version_dir: Path, batch_size: int = 64) -> RecommendFn:
    """A batch recommend function over a built version, for offline evaluation through this pipeline.

    The returned `recommend(user_indices [B], contexts [B, L], k) -> item indices [B, k]` treats 0 in
    contexts as padding, excludes context items (as the server does by default) and pads short rows with 0.
    Item indices are base catalog rows: the catalog has no changes here.
    """
    from recserve.server.catalog.from_model import live_catalog
    from recserve.server.repository import load_model
    from recserve.server.settings import load_model_config

    config = load_model_config(version_dir.parent)
    model = load_model(version_dir, config.retrieval.search_k)
    pipeline = BatchPipeline(
        model, live_catalog(model, config.retrieval.exact_search_max_items), config.retrieval, config.limits
    )

    def recommend(user_indices: np.ndarray, contexts: np.ndarray, k: int) -> np.ndarray:
        out = np.zeros((len(user_indices), k), dtype=np.int32)
        for start in range(0, len(user_indices), batch_size):
            queries = []
            for user_index, context in zip(
                user_indices[start : start + batch_size], contexts[start : start + batch_size], strict=True
            ):
                known = context[context > 0].astype(np.int32)
                user = UserQuery("", int(user_index), known, use_history=False)
                queries.append(RecommendQuery(user, k, np.unique(known)))
            for row, result in enumerate(pipeline.run_batch(queries), start=start):
                out[row, : result.rows.size] = result.rows
        return out

    return recommend
