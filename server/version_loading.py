"""Turning a model version directory into a serving RecommenderService: pick, check, warm up.

The newest version serves unless it is damaged: each candidate must load, hang together
(`repository.check_consistent`) and run every batch size once before it takes traffic; one that fails is
logged and listed in `ServiceSlot.rejected`, and the next older one is tried.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import numpy as np
from opentelemetry.trace import Tracer

from recserve.server.context import UserQuery
from recserve.server.pipeline import BatchPipeline, RecommendQuery, ScoreQuery
from recserve.server.recommender import RecommenderService, ServiceSlot
from recserve.server.repository import VersionRejectedError, load_checked
from recserve.server.settings import BatchingSettings, ModelConfig
from recserve.server.state.writes import StateBackend

logger = logging.getLogger(__name__)


async def first_good_version(
    candidates: list[Path],
    config: ModelConfig,
    slot: ServiceSlot,
    backend: StateBackend,
    tracer: Tracer | None,
    warmup_rounds: int,
) -> RecommenderService:
    """The service of the first candidate version that loads, hangs together and runs a smoke batch.

    A damaged newest version (a truncated SavedModel, an index of another dimension) must not take the
    server down while an older one is fine: it is logged, listed in `slot.rejected` (and metrics), and the
    next older version serves. A pinned version has no fallback.

    Raises:
        VersionRejectedError: no candidate works; the message says why each failed.
    """
    loop = asyncio.get_running_loop()
    reasons = []
    for version_dir in candidates:
        service = None
        try:
            model = await loop.run_in_executor(None, load_checked, version_dir, config.retrieval.search_k)
            service = RecommenderService(model, config, config.batching, backend, tracer)
            await loop.run_in_executor(
                service.executor,
                warm_up,
                service.pipeline,
                config.batching.max_batch_size,
                max(warmup_rounds, 1),
            )
            return service
        except Exception as error:  # noqa: BLE001 - a version's damage shows in many ways
            reason = (
                str(error) if isinstance(error, VersionRejectedError) else f"{type(error).__name__}: {error}"
            )
            slot.rejected[version_dir.name] = reason
            reasons.append(f"version {version_dir.name}: {reason}")
            logger.error("model version %s rejected: %s", version_dir, reason)
            if service is not None:
                await service.close()
    raise VersionRejectedError("no version of the model could be served: " + "; ".join(reasons))


def freeze_long_lived_objects() -> None:
    """Put everything alive now out of the garbage collector's reach (gc.freeze).

    The loaded model is ~330k Python objects (TensorFlow graphs, vocabularies); every full collection
    walked them all: measured 150-280 ms on 2 cores, a stall of every request in flight. Objects created
    later (requests, batches) are collected as usual.
    """
    gc.collect()
    gc.freeze()
    logger.debug("gc: %d long-lived objects frozen", gc.get_freeze_count())


def describe_batching(batching: BatchingSettings) -> str:
    """One log-friendly line of the batching settings in force."""
    adaptive = batching.adaptive
    mode = f"adaptive (latency target {adaptive.latency_target_us} us)" if adaptive.enabled else "fixed"
    return (
        f"{mode} max_batch_size={batching.max_batch_size} "
        f"max_queue_delay_us={batching.max_queue_delay_microseconds} "
        f"preferred={batching.preferred_batch_sizes} instance_count={batching.instance_count} "
        f"overlap_only_full_batches={batching.overlap_only_full_batches} "
        f"max_queue_size={batching.max_queue_size} priority_levels={batching.priority_levels}"
    )


def warm_up(pipeline: BatchPipeline, max_batch_size: int, rounds: int) -> None:
    """Run every power-of-two batch size up to max_batch_size so no request pays first-call costs."""
    users = pipeline.model.users
    context = np.arange(1, min(len(pipeline.model.items), 5) + 1, dtype=np.int32)
    user = UserQuery(users.ids[0] if len(users) else "", 1 if len(users) else 0, context)
    size = 1
    while rounds:
        queries = [RecommendQuery(user, 10) if i % 2 == 0 else ScoreQuery(user, context) for i in range(size)]
        for _ in range(rounds):
            pipeline.run_batch(queries)
        if size >= max_batch_size:
            break
        size = min(size * 2, max_batch_size)
