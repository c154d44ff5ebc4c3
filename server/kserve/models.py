"""The recommender as the inference protocol's models: `recommender`, `user_tower`, `item_tower`, `ranker`.

Each model declares its tensors and turns decoded input arrays into output arrays through the live
RecommenderService, so every answer is the one the recserve API gives. `recommender` sends each row through
the same dynamic batcher as Recommend; the other three are a whole batch already (the client batched them)
and run as one forward pass in an executor, outside the batcher, whose pipeline knows only Recommend and
Score queries.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, TypeVar

import numpy as np

from recserve.server.exceptions import InvalidArgumentError, ModelExecutionError, NotFoundError, RecserveError
from recserve.server.kserve.tensors import TensorSpec, from_strings, to_strings
from recserve.server.recommender import RecommenderService
from recserve.server.settings import BatchingSettings
from recserve.server.statistics import BatchStatistics

PLATFORM = "recserve"
T = TypeVar("T")


@dataclass(frozen=True)
class InferOptions:
    """Scheduling options of one request: its remaining time and its batching priority (0 = default)."""

    timeout_s: float | None = None
    priority: int = 0


class InferenceModel(ABC):
    """One model of the protocol over one loaded RecommenderService."""

    name: ClassVar[str]

    def __init__(self, service: RecommenderService) -> None:
        self.service = service

    @property
    @abstractmethod
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs, batch dimension first."""

    @property
    @abstractmethod
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs, batch dimension first."""

    @property
    def version(self) -> str:
        """The loaded version (all four models share it)."""
        return self.service.model.version

    @property
    def max_batch_size(self) -> int:
        """Most rows in one request: the batcher's max_batch_size, for every model."""
        return self.service.config.batching.max_batch_size

    @property
    def dynamic_batching(self) -> BatchingSettings | None:
        """The batcher's settings if requests go through it, else None."""
        return None

    @property
    def instance_count(self) -> int:
        """How many executions may run at once."""
        return self.service.config.batching.instance_count

    @property
    @abstractmethod
    def statistics(self) -> BatchStatistics:
        """Executions of this model."""

    def parameters(self) -> dict[str, str]:
        """Configuration without a field of its own in the protocol's ModelConfig."""
        return {}

    @abstractmethod
    async def infer(self, inputs: dict[str, np.ndarray], options: InferOptions) -> dict[str, np.ndarray]:
        """Output arrays by name from validated input arrays (optional inputs may be absent).

        Raises:
            RecserveError: as the RecommenderService call does, with messages naming the tensor.
        """


class RecommenderModel(InferenceModel):
    """Top-k recommendations, exactly Recommend's, through the same dynamic batcher."""

    name = "recommender"

    @cached_property  # built once per loaded model, read several times per request
    def inputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (
            TensorSpec("user_id", "BYTES", (-1, 1)),
            TensorSpec("recent_item_ids", "BYTES", (-1, -1), optional=True),
            TensorSpec("k", "INT32", (-1, 1), optional=True),
        )

    @cached_property  # built once per loaded model, read several times per request
    def outputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (TensorSpec("item_ids", "BYTES", (-1, -1)), TensorSpec("scores", "FP32", (-1, -1)))

    @property
    def dynamic_batching(self) -> BatchingSettings | None:  # noqa: D102
        return self.service.config.batching

    @property
    def statistics(self) -> BatchStatistics:
        """The batcher's: every request it ran, whichever API sent it."""
        return self.service.batcher.statistics

    def parameters(self) -> dict[str, str]:  # noqa: D102
        config = self.service.config
        return {
            "adaptive_batching": str(config.batching.adaptive.enabled).lower(),
            "adaptive_latency_target_us": str(config.batching.adaptive.latency_target_us),
            "candidate_count": str(config.retrieval.candidate_count),
            "search_k": str(self.service.model.index.search_k),
            "exact_search_max_items": str(config.retrieval.exact_search_max_items),
            "default_k": str(config.limits.default_k),
            "max_k": str(config.limits.max_k),
            "max_recent_items": str(config.limits.max_recent_items),
        }

    async def infer(self, inputs: dict[str, np.ndarray], options: InferOptions) -> dict[str, np.ndarray]:
        """One Recommend per row, all submitted at once so they join batches with other traffic.

        Rows may ask for different k: the outputs are as wide as the largest, and shorter rows (or rows
        with fewer items than asked) are padded with empty ids and 0 scores.
        """
        user_ids = to_strings("user_id", inputs["user_id"])
        contexts = recent_items(inputs.get("recent_item_ids"), len(user_ids))
        ks = self._ks(inputs.get("k"), len(user_ids))
        results = await gather_all(
            [
                self.service.recommend(
                    user_id, context, k, timeout_s=options.timeout_s, priority=options.priority
                )
                for user_id, context, k in zip(user_ids, contexts, ks, strict=True)
            ]
        )
        width = max(k or self.service.config.limits.default_k for k in ks)
        scores = np.zeros((len(results), width), dtype=np.float32)
        for row, result in enumerate(results):
            scores[row, : len(result.items)] = [score for _, score in result.items]
        item_ids = from_strings([[item_id for item_id, _ in result.items] for result in results], width)
        return {"item_ids": item_ids, "scores": scores}

    def _ks(self, k: np.ndarray | None, rows: int) -> list[int]:
        if k is None:
            return [0] * rows
        limits = self.service.config.limits
        values = k.reshape(-1).tolist()
        for row, value in enumerate(values):
            if not 0 <= value <= limits.max_k:
                raise InvalidArgumentError(
                    f"input 'k': row {row} asks for {value}; k must be between 1 and {limits.max_k} "
                    f"(0 means the default, {limits.default_k})"
                )
        return values


class DirectModel(InferenceModel):
    """A model that runs each request as one forward pass, outside the batcher, and counts its executions."""

    def __init__(self, service: RecommenderService) -> None:
        super().__init__(service)
        self._statistics = BatchStatistics()

    @property
    def statistics(self) -> BatchStatistics:
        """This model's executions (one per request)."""
        return self._statistics

    async def _execute(self, rows: int, call: Awaitable[T]) -> T:
        """Await the forward pass and count it; request errors (unknown ids) are not executions."""
        started_ns = time.perf_counter_ns()
        try:
            result = await call
        except RecserveError:
            raise
        except Exception as error:
            self._record(rows, started_ns, succeeded=False)
            raise ModelExecutionError(f"{self.name} failed: {type(error).__name__}: {error}") from error
        self._record(rows, started_ns, succeeded=True)
        return result

    def _record(self, rows: int, started_ns: int, succeeded: bool) -> None:
        compute_ns = time.perf_counter_ns() - started_ns
        self._statistics.record_batch(rows, 0, compute_ns, succeeded)
        self._statistics.record_requests([0.0] * rows, [compute_ns / 1000] * rows, time.time_ns())

    def _embedding_spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, "FP32", (-1, self.service.model.embedding_dim))


class UserTowerModel(DirectModel):
    """The user tower: a user and their recent items to the embedding Recommend searches with."""

    name = "user_tower"

    @cached_property  # built once per loaded model, read several times per request
    def inputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (
            TensorSpec("user_id", "BYTES", (-1, 1)),
            TensorSpec("recent_item_ids", "BYTES", (-1, -1), optional=True),
        )

    @cached_property  # built once per loaded model, read several times per request
    def outputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (self._embedding_spec("embedding"),)

    async def infer(self, inputs: dict[str, np.ndarray], options: InferOptions) -> dict[str, np.ndarray]:
        """Unknown users are cold start and unknown recent items are skipped, as in Recommend."""
        user_ids = to_strings("user_id", inputs["user_id"])
        contexts = recent_items(inputs.get("recent_item_ids"), len(user_ids))
        users = list(zip(user_ids, contexts, strict=True))
        return {"embedding": await self._execute(len(users), self.service.embed_users(users))}


class ItemTowerModel(DirectModel):
    """The item tower: items to the embeddings the ANN index holds."""

    name = "item_tower"

    @cached_property  # built once per loaded model, read several times per request
    def inputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (TensorSpec("item_id", "BYTES", (-1, 1)),)

    @cached_property  # built once per loaded model, read several times per request
    def outputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (self._embedding_spec("embedding"),)

    async def infer(self, inputs: dict[str, np.ndarray], options: InferOptions) -> dict[str, np.ndarray]:
        """Unknown item ids are NOT_FOUND."""
        item_ids = to_strings("item_id", inputs["item_id"])
        call = self._execute(len(item_ids), self.service.embed_items(item_ids))
        return {"embedding": await _naming("item_id", call)}


class RankerModel(DirectModel):
    """The ranker: P(like) of (user embedding, item) pairs; the embedding is a user_tower output."""

    name = "ranker"

    @cached_property  # built once per loaded model, read several times per request
    def inputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (self._embedding_spec("user_embedding"), TensorSpec("item_id", "BYTES", (-1, 1)))

    @cached_property  # built once per loaded model, read several times per request
    def outputs(self) -> tuple[TensorSpec, ...]:  # noqa: D102
        return (TensorSpec("probability", "FP32", (-1, 1)),)

    async def infer(self, inputs: dict[str, np.ndarray], options: InferOptions) -> dict[str, np.ndarray]:
        """Unknown item ids are NOT_FOUND; a NaN, infinite or overflowing embedding is INVALID_ARGUMENT."""
        item_ids = to_strings("item_id", inputs["item_id"])
        embeddings = np.ascontiguousarray(inputs["user_embedding"], dtype=np.float32)
        finite = np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InvalidArgumentError(
                f"input 'user_embedding': row {row} holds NaN or infinity; every value must be a finite "
                "number (a user_tower output is)"
            )
        probabilities = await _naming(
            "item_id", self._execute(len(item_ids), self.service.rank(embeddings, item_ids))
        )
        defined = np.isfinite(probabilities)
        if not defined.all():  # finite values so large that the ranker's sums overflow
            row = int(np.flatnonzero(~defined)[0])
            raise InvalidArgumentError(
                f"input 'user_embedding': row {row} is too large for the ranker (its probability is not a "
                "number); a user_tower output has unit length"
            )
        return {"probability": probabilities.reshape(-1, 1)}


MODELS: tuple[type[InferenceModel], ...] = (RecommenderModel, UserTowerModel, ItemTowerModel, RankerModel)
MODEL_NAMES = tuple(model.name for model in MODELS)


def build_models(service: RecommenderService) -> dict[str, InferenceModel]:
    """The protocol's models over one loaded service, by name."""
    return {model.name: model(service) for model in MODELS}


def recent_items(recent_item_ids: np.ndarray | None, rows: int) -> list[list[str]]:
    """Per row, the recent item ids in order, empty strings (padding) dropped."""
    if recent_item_ids is None:
        return [[] for _ in range(rows)]
    width = recent_item_ids.shape[1] if recent_item_ids.ndim > 1 else 1
    flat = to_strings("recent_item_ids", recent_item_ids)
    return [[item for item in flat[row * width : (row + 1) * width] if item] for row in range(rows)]


async def gather_all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await every call concurrently; on the first failure cancel the rest and raise it."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _naming(tensor: str, call: Awaitable[T]) -> T:
    """Await `call`, prefixing a NotFoundError's message with the tensor that named the unknown id."""
    try:
        return await call
    except NotFoundError as error:
        raise NotFoundError(f"input {tensor!r}: {error}") from error
