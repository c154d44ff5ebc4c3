"""The recommender as the servicers see it, without gRPC.

It validates requests, maps ids to indices, sends queries through the dynamic batcher and maps the
answers back to ids.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import Tracer

from recserve.server.batching import DynamicBatcher
from recserve.server.exceptions import InvalidArgumentError, NotFoundError, UnavailableError
from recserve.server.pipeline import (
    EMPTY_INDICES,
    BatchPipeline,
    Query,
    QueryResult,
    RankedItems,
    RecommendQuery,
    ScoreQuery,
    UserQuery,
)
from recserve.server.repository import LoadedModel
from recserve.server.settings import BatchingSettings, ModelConfig
from recserve.server.telemetry.tracing import BatchTracer

MAX_IDS_IN_MESSAGE = 5


@dataclass(frozen=True)
class Recommendation:
    """Items with their scores, best first."""

    items: list[tuple[str, float]]
    model_version: str
    cold_start: bool = False
    unknown_item_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scores:
    """P(like) per requested item, in request order."""

    scores: np.ndarray
    model_version: str
    cold_start: bool
    unknown_item_ids: list[str]


class RecommenderService:
    """Serves one loaded model version through one dynamic batcher."""

    def __init__(
        self,
        model: LoadedModel,
        config: ModelConfig,
        batching: BatchingSettings,
        tracer: Tracer | None = None,
    ) -> None:
        """`tracer` None means no spans at all (tracing off)."""
        self.model = model
        self.config = config
        self.pipeline = BatchPipeline(model, config.retrieval, tracer)
        # One thread per batch in flight: TensorFlow and Annoy release the GIL, so batches overlap.
        self.executor = ThreadPoolExecutor(max_workers=batching.instance_count, thread_name_prefix="batch")
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
        """Start batching (call from the event loop)."""
        self.batcher.start()

    async def close(self) -> None:
        """Finish queued work and stop."""
        await self.batcher.close()
        self.executor.shutdown(wait=True)
        self.pipeline.close()

    async def recommend(
        self,
        user_id: str,
        recent_item_ids: Sequence[str],
        k: int,
        exclude_item_ids: Sequence[str] = (),
        include_recent_items: bool = False,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Recommendation:
        """Top-k items for the user, scored by P(like); see RecommendRequest in the API."""
        k = self._checked_k(k)
        user, unknown = self._user_query(user_id, recent_item_ids)
        never = set(exclude_item_ids) if include_recent_items else {*exclude_item_ids, *recent_item_ids}
        excluded = self._known_indices(never)
        result = await self.batcher.submit(RecommendQuery(user, k, excluded), timeout_s, priority)
        assert isinstance(result, RankedItems)
        item_ids = self.model.items.ids
        items = [
            (item_ids[i - 1], s)
            for i, s in zip(result.item_indices.tolist(), result.scores.tolist(), strict=True)
        ]
        return Recommendation(items, self.model.version, user.is_cold_start, unknown)

    async def score(
        self,
        user_id: str,
        recent_item_ids: Sequence[str],
        item_ids: Sequence[str],
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Scores:
        """P(like) for each item in order; see ScoreRequest in the API."""
        limit = self.config.limits.max_score_items
        if len(item_ids) > limit:
            raise InvalidArgumentError(f"item_ids has {len(item_ids)} entries; at most {limit} are allowed")
        item_indices = self._required_indices(item_ids)
        user, unknown = self._user_query(user_id, recent_item_ids)
        if item_indices.size == 0:
            return Scores(np.zeros(0, dtype=np.float32), self.model.version, user.is_cold_start, unknown)
        scores = await self.batcher.submit(ScoreQuery(user, item_indices), timeout_s, priority)
        assert isinstance(scores, np.ndarray)
        return Scores(scores, self.model.version, user.is_cold_start, unknown)

    async def similar_items(self, item_id: str, k: int) -> Recommendation:
        """The k items most similar (cosine) to `item_id`, excluding itself."""
        k = self._checked_k(k)
        item_index = self._required_indices([item_id])[0]
        loop = asyncio.get_running_loop()
        annoy_ids, similarities = await loop.run_in_executor(
            None, self.model.index.nearest_to_item, int(item_index) - 1, k + 1
        )
        items = [
            (self.model.items.ids[int(annoy_id)], float(similarity))
            for annoy_id, similarity in zip(annoy_ids, similarities, strict=True)
            if annoy_id != item_index - 1
        ]
        return Recommendation(items[:k], self.model.version)

    async def embed_users(self, users: Sequence[tuple[str, Sequence[str]]]) -> np.ndarray:
        """User-tower embeddings [len(users), D] of (user_id, recent_item_ids) pairs, as Recommend has them.

        Unknown users are cold start and unknown context items are skipped, as in Recommend. One forward
        pass for all of them, off the event loop but outside the batcher: the caller already batched them.
        """
        queries = [self._user_query(user_id, recent)[0] for user_id, recent in users]
        return await asyncio.get_running_loop().run_in_executor(None, self.pipeline.embed_users, queries)

    async def embed_items(self, item_ids: Sequence[str]) -> np.ndarray:
        """Item-tower embeddings [len(item_ids), D] from each item's index and tags, one forward pass.

        Raises:
            NotFoundError: an unknown item id (named).
            UnavailableError: the loaded version has no item tower.
        """
        indices = self._required_indices(item_ids)
        tower = self.model.item_tower
        if tower is None:
            raise UnavailableError(f"model version {self.model.version} was built without an item tower")
        tags = self.model.item_tags[indices - 1]
        outputs = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(tower, item_index=indices, item_tags=tags)
        )
        return outputs["embedding"]

    async def rank(self, user_embeddings: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """P(like) [len(item_ids)] of each (user embedding, item) row, one ranker pass.

        Raises:
            NotFoundError: an unknown item id (named).
        """
        indices = self._required_indices(item_ids)
        return await asyncio.get_running_loop().run_in_executor(
            None, self.pipeline.rank, user_embeddings, indices
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

    def _user_query(self, user_id: str, recent_item_ids: Sequence[str]) -> tuple[UserQuery, list[str]]:
        """The user's index and known context (latest max_recent_items), plus the unknown context ids."""
        user_index = self.model.users.index_by_id.get(user_id, 0)
        if not recent_item_ids:
            return UserQuery(user_index, EMPTY_INDICES), []
        recent = list(recent_item_ids)[-self.config.limits.max_recent_items :]
        index_by_id = self.model.items.index_by_id
        context = np.array([index_by_id[i] for i in recent if i in index_by_id], dtype=np.int32)
        unknown = (
            [item_id for item_id in recent if item_id not in index_by_id]
            if context.size < len(recent)
            else []
        )
        return UserQuery(user_index, context), unknown

    def _known_indices(self, item_ids: Iterable[str]) -> np.ndarray:
        """Indices of the known ids among `item_ids` (unknown ones ignored), in no particular order."""
        if not item_ids:
            return EMPTY_INDICES
        index_by_id = self.model.items.index_by_id
        return np.array([index_by_id[i] for i in item_ids if i in index_by_id], dtype=np.int32)

    def _required_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """Indices in order. Raises NotFoundError naming the unknown ids."""
        indices = np.fromiter(
            (self.model.items.index_of(i) for i in item_ids), dtype=np.int32, count=len(item_ids)
        )
        if (indices == 0).any():
            missing = [item_id for item_id, index in zip(item_ids, indices, strict=True) if index == 0]
            shown = ", ".join(repr(m) for m in missing[:MAX_IDS_IN_MESSAGE])
            more = (
                f" and {len(missing) - MAX_IDS_IN_MESSAGE} more" if len(missing) > MAX_IDS_IN_MESSAGE else ""
            )
            raise NotFoundError(f"unknown item id {shown}{more}: the model has no such item")
        return indices


MODEL_STATES = ("loading", "ready", "failed", "stopping")


class ServiceSlot:
    """Holds the service once the model is loaded; until then callers get UNAVAILABLE.

    `state` is the model's load state as operators see it: loading, ready, failed or stopping.
    """

    def __init__(self) -> None:
        self._service: RecommenderService | None = None
        self.state = "loading"

    @property
    def current(self) -> RecommenderService | None:
        """The live service, or None (for readers such as metrics, which must not raise)."""
        return self._service

    def set(self, service: RecommenderService | None) -> None:
        """Install (or remove) the live service."""
        self._service = service
        if service is not None:
            self.state = "ready"

    def get(self) -> RecommenderService:
        """The live service. Raises UnavailableError while the model is loading."""
        if self._service is None:
            raise UnavailableError("the model is still loading or failed to load; retry shortly")
        return self._service
