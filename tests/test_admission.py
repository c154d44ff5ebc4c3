"""Admission under overload, in pure asyncio: the batcher refuses at once what it cannot serve in time."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from recserve.server.admission import QueueWaitEstimator
from recserve.server.batching import DynamicBatcher
from recserve.server.exceptions import OverloadedError, QueueFullError
from recserve.server.settings import BatchingSettings

HUGE_DELAY_US = 60_000_000


class SlowStage:
    """Takes `per_item_s` per item of a batch, like a model whose cost grows with the batch."""

    def __init__(self, per_item_s: float) -> None:
        self.per_item_s = per_item_s
        self.items = 0

    def __call__(self, items: list[int]) -> list[int]:
        time.sleep(self.per_item_s * len(items))
        self.items += len(items)
        return items


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_the_estimate_counts_full_batches_ahead_at_their_measured_cost() -> None:
    estimator = QueueWaitEstimator(BatchingSettings(max_batch_size=8, instance_count=2))
    assert estimator.wait_ns(100, 0, 0) == 0.0, "nothing measured yet: nothing is refused"
    for _ in range(20):
        estimator.on_batch(1, 2_000_000)  # 1 ms fixed + 1 ms per request
        estimator.on_batch(8, 9_000_000)
    assert estimator.batch_ns(7) == pytest.approx(9e6, rel=0.01)
    # 100 queued: 12 full batches ahead, 9 ms each, over 2 instances.
    assert estimator.wait_ns(100, 0, 0) == pytest.approx(12 * 9e6 / 2, rel=0.01)
    # Both instances busy, one started 4 ms ago on a batch of 8: ~5 ms more before a slot frees.
    estimator.on_batch_start(8, 0)
    assert estimator.wait_ns(0, 2, 4_000_000) == pytest.approx(5e6, rel=0.01)


def test_a_batch_of_one_does_not_make_a_burst_look_expensive() -> None:
    estimator = QueueWaitEstimator(BatchingSettings(max_batch_size=64))
    estimator.on_batch(1, 4_000_000)  # one size seen: all of it counts as fixed
    assert estimator.wait_ns(63, 0, 0) == 0.0
    assert estimator.batch_ns(63) == pytest.approx(4e6)


async def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=0)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))  # learn: ~2 ms per request
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]  # ~80 ms of work
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(OverloadedError, match=r"after its deadline \(20 ms left\)") as refused:
        await batcher.submit(99, timeout_s=0.020)
    assert time.perf_counter() - started < 0.005, "refused without waiting"
    assert isinstance(refused.value, QueueFullError)  # RESOURCE_EXHAUSTED, like a full queue
    assert await batcher.submit(100, timeout_s=10) == 100, "a deadline that fits is queued"
    assert len(await asyncio.gather(*queued)) == 40
    assert batcher.statistics.overloaded_count == 1
    await batcher.close()


async def test_the_queue_is_bounded_by_time_for_requests_without_a_deadline(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=30_000)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError, match=r"more than the 30 ms this server queues a request"):
        await batcher.submit(99)
    await asyncio.gather(*queued, return_exceptions=True)
    assert await batcher.submit(100) == 100, "once the queue drained, requests are admitted again"
    await batcher.close()


async def test_deadline_admission_can_be_turned_off(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=0, deadline_admission=False)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]
    late = asyncio.ensure_future(batcher.submit(99, timeout_s=0.020))
    results = await asyncio.gather(*queued, late, return_exceptions=True)
    assert type(results[-1]).__name__ == "DeadlineExceededError", "queued, then expired: the old way"
    await batcher.close()
