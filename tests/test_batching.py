"""Pure asyncio tests of the dynamic batcher, with a gated fake stage that records its batches."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from recserve.server.batching import DynamicBatcher
from recserve.server.exceptions import (
    DeadlineExceededError,
    InvalidArgumentError,
    ModelExecutionError,
    QueueFullError,
    UnavailableError,
)
from recserve.server.settings import BatchingSettings
from recserve.server.threads import LoopThreads

HUGE_DELAY_US = 60_000_000  # so that only the size trigger can release a batch


class GatedStage:
    """Doubles its inputs; blocks until the gate opens; records every batch it ran."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [2 * item for item in items]


@pytest.fixture
def executor():
    """The server's kind of executor; the tests of several instances run on a `ThreadPoolExecutor`."""
    threads = LoopThreads(1, "test-batch")
    yield threads
    threads.shutdown()


def make(stage: GatedStage, executor, **settings) -> DynamicBatcher[int, int]:
    batcher = DynamicBatcher(stage, BatchingSettings(**settings), executor, name="test")
    batcher.start()
    return batcher


async def test_size_trigger_releases_a_full_batch(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=4, max_queue_delay_microseconds=HUGE_DELAY_US)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 5)
    assert results == [0, 2, 4, 6]
    assert stage.batches == [[0, 1, 2, 3]]
    await batcher.close()


async def test_delay_trigger_releases_a_partial_batch(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=64, max_queue_delay_microseconds=20_000)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), 5)
    assert results == [0, 2, 4]
    assert stage.batches == [[0, 1, 2]]
    await batcher.close()


async def test_zero_delay_takes_what_is_queued_while_the_previous_batch_runs(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=64, max_queue_delay_microseconds=0)
    stage.gate.clear()
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # the first batch [0] is now blocked in the stage
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.05)
    stage.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert stage.batches == [[0], [1, 2, 3, 4, 5]]
    await batcher.close()


async def test_batches_never_exceed_max_batch_size(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=3, max_queue_delay_microseconds=0)
    stage.gate.clear()
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
    await asyncio.sleep(0.05)
    stage.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [2 * i for i in range(10)]
    assert all(len(batch) <= 3 for batch in stage.batches)
    assert [item for batch in stage.batches for item in batch] == list(range(10))
    await batcher.close()


async def test_full_queue_is_rejected_at_once(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=1, max_queue_delay_microseconds=0, max_queue_size=2)
    stage.gate.clear()
    running = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # 0 is executing; the queue is empty
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="queue is full"):
        await batcher.submit(3)
    stage.gate.set()
    assert await asyncio.wait_for(asyncio.gather(running, *queued), 5) == [0, 2, 4]
    await batcher.close()


async def test_request_whose_deadline_passed_in_the_queue_is_not_executed(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=1, max_queue_delay_microseconds=0)
    stage.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(batcher.submit(1, timeout_s=0.01))
    await asyncio.sleep(0.1)
    stage.gate.set()
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(late, 5)
    await blocker
    assert stage.batches == [[0]]
    await batcher.close()


async def test_cancelled_request_is_dropped_before_its_batch_runs(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=8, max_queue_delay_microseconds=0)
    stage.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    cancelled = asyncio.ensure_future(batcher.submit(1))
    kept = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    cancelled.cancel()
    stage.gate.set()
    assert await asyncio.wait_for(kept, 5) == 4
    await blocker
    assert stage.batches == [[0], [2]]
    await batcher.close()


async def test_batch_whose_callers_all_left_is_not_executed(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=8, max_queue_delay_microseconds=0)
    stage.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    gone = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    for task in gone:
        task.cancel()
    stage.gate.set()
    await blocker
    assert await asyncio.wait_for(batcher.submit(3), 5) == 6
    assert stage.batches == [[0], [3]]
    await batcher.close()


async def test_stage_error_fails_only_its_batch(executor):
    stage = GatedStage(fail_on=1)
    batcher = make(stage, executor, max_batch_size=2, max_queue_delay_microseconds=HUGE_DELAY_US)
    failed = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
    assert all(isinstance(error, ModelExecutionError) for error in failed)
    assert "boom" in str(failed[0])
    assert await asyncio.gather(batcher.submit(2), batcher.submit(3)) == [4, 6]
    assert batcher.statistics.failure_count == 2
    assert batcher.statistics.success_count == 2
    await batcher.close()


async def test_wrong_result_count_fails_the_batch(executor):
    batcher = DynamicBatcher(lambda items: items[:-1], BatchingSettings(max_batch_size=1), executor)
    batcher.start()
    with pytest.raises(ModelExecutionError, match="0 results for 1"):
        await batcher.submit(5)
    await batcher.close()


async def test_statistics_count_rows_batches_and_sizes(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=4, max_queue_delay_microseconds=HUGE_DELAY_US)
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    stats = batcher.statistics
    assert (stats.inference_count, stats.execution_count, stats.success_count) == (8, 2, 8)
    assert stats.batch_size_counts == {4: 2}
    assert stats.mean_batch_size == 4
    assert stats.queue_duration_ns > 0 and stats.compute_duration_ns > 0
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new(executor):
    stage = GatedStage()
    batcher = make(stage, executor, max_batch_size=64, max_queue_delay_microseconds=HUGE_DELAY_US)
    pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), 5)
    assert [task.result() for task in pending] == [0, 2, 4]
    with pytest.raises(UnavailableError):
        await batcher.submit(9)


async def test_preferred_batch_size_goes_at_once():
    stage = GatedStage()
    with ThreadPoolExecutor(max_workers=1) as pool:
        batcher = make(
            stage,
            pool,
            max_batch_size=16,
            preferred_batch_sizes=[4, 8],
            max_queue_delay_microseconds=HUGE_DELAY_US,
        )
        stage.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit(100))  # waits: below every preferred size
        await asyncio.sleep(0.05)
        assert stage.batches == [] and batcher.queue_depth == 1
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
        stage.gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *rest[:7]), 5)
        assert [len(batch) for batch in stage.batches] == [
            8
        ]  # 11 queued: the largest preferred size that fits
        for task in rest[7:]:
            task.cancel()
        await batcher.close()


async def test_delay_still_releases_a_batch_below_every_preferred_size(executor):
    stage = GatedStage()
    batcher = make(
        stage, executor, max_batch_size=16, preferred_batch_sizes=[8], max_queue_delay_microseconds=20_000
    )
    assert await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), 5) == [0, 2, 4]
    assert stage.batches == [[0, 1, 2]]
    await batcher.close()


async def test_higher_priority_is_batched_first_fifo_within_a_level(executor):
    stage = GatedStage()
    batcher = make(
        stage,
        executor,
        max_batch_size=3,
        max_queue_delay_microseconds=0,
        priority_levels=3,
        default_priority_level=2,
    )
    stage.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    order = [(10, 3), (11, 0), (12, 1), (13, 3), (14, 1), (15, 2)]  # (item, priority); 0 = default (2)
    tasks = [asyncio.ensure_future(batcher.submit(item, priority=p)) for item, p in order]
    await asyncio.sleep(0.01)
    stage.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *tasks), 5)
    assert stage.batches == [[0], [12, 14, 11], [15, 10, 13]]
    await batcher.close()


async def test_priority_out_of_range_is_invalid(executor):
    batcher = make(GatedStage(), executor, priority_levels=2)
    with pytest.raises(InvalidArgumentError, match="priority must be between 1"):
        await batcher.submit(1, priority=3)
    await batcher.close()


async def test_several_batches_execute_at_once_with_instance_count():
    stage = GatedStage()
    started = threading.Barrier(2, timeout=5)

    def execute(items):
        started.wait()  # both batches must be inside execute at the same time to pass
        return stage(items)

    with ThreadPoolExecutor(max_workers=2) as pool:
        batcher = DynamicBatcher(
            execute,
            BatchingSettings(max_batch_size=2, max_queue_delay_microseconds=0, instance_count=2),
            pool,
        )
        batcher.start()
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 5)
        assert results == [0, 2, 4, 6]
        assert len(stage.batches) >= 2
        await batcher.close()


async def test_default_timeout_caps_the_queue_wait(executor):
    stage = GatedStage()
    batcher = make(
        stage, executor, max_batch_size=1, max_queue_delay_microseconds=0, default_timeout_microseconds=10_000
    )
    stage.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(batcher.submit(1, timeout_s=60))
    await asyncio.sleep(0.05)
    stage.gate.set()
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(late, 5)
    await blocker
    assert batcher.statistics.expired_count == 1
    await batcher.close()


async def test_adaptive_mode_dispatches_at_once_when_idle(executor):
    stage = GatedStage()
    batcher = make(
        stage,
        executor,
        max_batch_size=64,
        max_queue_delay_microseconds=HUGE_DELAY_US,
        adaptive={"enabled": True, "latency_target_us": 50_000},
    )
    for i in range(3):  # one at a time, spaced out: each goes alone, with no delay
        assert await asyncio.wait_for(batcher.submit(i), 1) == 2 * i
        await asyncio.sleep(0.02)
    assert stage.batches == [[0], [1], [2]]
    await batcher.close()


async def test_adaptive_mode_grows_batches_under_load(executor):
    stage = GatedStage()
    batcher = make(
        stage, executor, max_batch_size=64, adaptive={"enabled": True, "latency_target_us": 50_000}
    )
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(40))), 5)
    assert results == [2 * i for i in range(40)]
    assert batcher.statistics.execution_count < 40
    await batcher.close()


class ConcurrencyProbe:
    """Wraps a stage; records the most batches that were inside it at once."""

    def __init__(self, stage: GatedStage) -> None:
        self.stage = stage
        self.inside = 0
        self.most_inside = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            return self.stage(items)
        finally:
            with self._lock:
                self.inside -= 1


@pytest.mark.parametrize(
    ("only_full", "after_two", "after_six", "batches"),
    [
        (True, (1, 2), (2, 2), [[0], [1, 2, 3, 4], [5, 6]]),  # [1, 2] waits to grow; full [1..4] overlaps
        (False, (2, 0), (2, 4), [[0], [1, 2], [3, 4, 5, 6]]),  # Triton's rule: the free instance takes [1, 2]
    ],
    ids=["only full batches overlap", "any batch overlaps"],
)
async def test_a_second_instance_takes_a_batch_per_the_overlap_rule(only_full, after_two, after_six, batches):
    stage = GatedStage()
    probe = ConcurrencyProbe(stage)
    settings = BatchingSettings(
        max_batch_size=4,
        max_queue_delay_microseconds=0,
        instance_count=2,
        overlap_only_full_batches=only_full,
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        batcher = DynamicBatcher(probe, settings, pool)
        batcher.start()
        stage.gate.clear()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        assert (batcher.batches_in_flight, batcher.queue_depth) == after_two
        filling = [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        assert (batcher.batches_in_flight, batcher.queue_depth) == after_six
        stage.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *waiting, *filling), 5)
        assert results == [2 * i for i in range(7)]
        assert sorted(stage.batches) == batches
        assert probe.most_inside == 2
        await batcher.close()
