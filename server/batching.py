"""A dynamic batcher: concurrent requests wait in a bounded queue and run together as one batch.

It knows nothing of TensorFlow, Annoy or gRPC: it calls a synchronous `execute(items) -> results` in an
executor, off the event loop, and scatters the results back to the callers' futures.

Batch formation: a batch goes as soon as `max_batch_size` requests are queued; otherwise it waits while
the oldest request has waited less than `max_queue_delay_microseconds` (0: take whatever is queued). The
next batch forms while the previous one executes, so under load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.exceptions import DeadlineExceededError, ModelExecutionError, QueueFullError, UnavailableError
from server.settings import BatchingSettings

Item = TypeVar("Item")
Result = TypeVar("Result")

logger = logging.getLogger(__name__)


@dataclass
class BatchStatistics:
    """Counters for one batcher: the one source the metrics and the inference protocol read."""

    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    failure_count: int = 0
    queue_duration_ns: int = 0
    compute_duration_ns: int = 0
    batch_size_counts: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def mean_batch_size(self) -> float:
        """Rows per executed batch (0 before the first batch)."""
        return self.inference_count / self.execution_count if self.execution_count else 0.0


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    enqueued_ns: int
    deadline: float | None  # event-loop time


class DynamicBatcher(Generic[Item, Result]):
    """Groups `submit()` calls into batches for `execute`.

    `execute` must return one result per item, in order. If it raises, every request of that batch fails
    with `ModelExecutionError` (domain errors pass through) and later batches run as usual.
    """

    def __init__(
        self,
        execute: Callable[[list[Item]], Sequence[Result]],
        settings: BatchingSettings,
        executor: Executor | None = None,
        name: str = "batcher",
    ) -> None:
        self._execute = execute
        self._settings = settings
        self._executor = executor
        self.name = name
        self.statistics = BatchStatistics()
        self._queue: collections.deque[_Pending[Item, Result]] = collections.deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def settings(self) -> BatchingSettings:
        """The batching settings in force."""
        return self._settings

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start forming batches (call from the event loop)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-loop")

    async def close(self) -> None:
        """Finish the batch in flight and everything queued, then stop. Later submits are UNAVAILABLE."""
        self._closed = True
        self._arrived.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None

    async def submit(self, item: Item, timeout_s: float | None = None) -> Result:
        """Queue one request and wait for its result.

        Raises:
            QueueFullError: `max_queue_size` requests are already waiting.
            DeadlineExceededError: `timeout_s` passed before the request's batch started.
            UnavailableError: the batcher is closed.
        """
        if self._closed:
            raise UnavailableError(f"{self.name} is shutting down; retry on another replica")
        if len(self._queue) >= self._settings.max_queue_size:
            raise QueueFullError(
                f"{self.name} queue is full ({self._settings.max_queue_size} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else None
        pending = _Pending(item, loop.create_future(), time.perf_counter_ns(), deadline)
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    async def _run(self) -> None:
        while not (self._closed and not self._queue):
            await self._wait_for_batch()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _wait_for_batch(self) -> None:
        """Return once a batch should go: full, delay expired, or closing."""
        while not self._queue:
            if self._closed:
                return
            self._arrived.clear()
            await self._arrived.wait()
        delay_s = self._settings.max_queue_delay_microseconds / 1e6
        while not self._closed and len(self._queue) < self._settings.max_batch_size:
            waited_s = (time.perf_counter_ns() - self._queue[0].enqueued_ns) / 1e9
            remaining_s = delay_s - waited_s
            if remaining_s <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining_s)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Pending[Item, Result]]:
        """Pop up to max_batch_size live requests; cancelled ones are dropped, expired ones failed."""
        now = asyncio.get_running_loop().time()
        batch: list[_Pending[Item, Result]] = []
        while self._queue and len(batch) < self._settings.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExceededError("deadline passed while queued; the request was not executed")
                )
                continue
            batch.append(pending)
        return batch

    async def _run_batch(self, batch: list[_Pending[Item, Result]]) -> None:
        started_ns = time.perf_counter_ns()
        stats = self.statistics
        stats.queue_duration_ns += sum(started_ns - p.enqueued_ns for p in batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._execute, [p.item for p in batch]
            )
            if len(results) != len(batch):
                raise ModelExecutionError(
                    f"{self.name} returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as error:  # noqa: BLE001 - any failure fails this batch only
            self._fail(batch, error)
            return
        finally:
            stats.compute_duration_ns += time.perf_counter_ns() - started_ns
            stats.execution_count += 1
            stats.inference_count += len(batch)
            stats.batch_size_counts[len(batch)] += 1
        stats.success_count += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _fail(self, batch: list[_Pending[Item, Result]], error: Exception) -> None:
        self.statistics.failure_count += len(batch)
        if not isinstance(error, ModelExecutionError):
            logger.exception("%s: batch of %d failed", self.name, len(batch), exc_info=error)
            error = ModelExecutionError(f"model execution failed: {type(error).__name__}: {error}")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
