"""What a loaded version goes through before it serves: warm-up, and the process-level steps around it.

Used by model_control.manager; also freezes long-lived objects and writes the batching line of the log.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import numpy as np

from recserve.server.context import UserQuery
from recserve.server.pipeline import BatchPipeline, RecommendQuery, ScoreQuery
from recserve.server.settings import BatchingSettings

logger = logging.getLogger(__name__)


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


def warm_up(
    pipeline: BatchPipeline, max_batch_size: int, rounds: int, between: Callable[[], None] = lambda: None
) -> None:
    """Run every power-of-two batch size up to max_batch_size so no request pays first-call costs.

    `between` runs after each batch (a version warming up beside serving pauses there).
    """
    users = pipeline.model.users
    context = np.arange(1, min(len(pipeline.model.items), 5) + 1, dtype=np.int32)
    user = UserQuery(users.ids[0] if len(users) else "", 1 if len(users) else 0, context)
    size = 1
    while rounds:
        queries = [RecommendQuery(user, 10) if i % 2 == 0 else ScoreQuery(user, context) for i in range(size)]
        for _ in range(rounds):
            pipeline.run_batch(queries)
            between()
        if size >= max_batch_size:
            break
        size = min(size * 2, max_batch_size)
