"""A dynamic batcher: concurrent requests wait in a bounded priority queue and run together as one batch.

It knows nothing of TensorFlow, Annoy or gRPC: it calls a synchronous `execute(items) -> results` in an
executor, off the event loop, and scatters the results back to the callers' futures. With a `LoopThreads`
executor a batch costs one wake-up each way (`recserve.server.threads`); any other `Executor` goes through
`loop.run_in_executor`.

Batch formation, as in Triton: a batch goes at once when `max_batch_size` requests are queued, or when a
preferred batch size can be formed; otherwise it waits while the oldest request has waited less than the
queue delay (0: take whatever is queued). Up to `instance_count` batches execute at once, and the next
batch forms while they run, so under load batches grow by themselves. With `overlap_only_full_batches`
(the default) a batch starts beside one already executing only when it is complete (full, or of a
preferred size): a free instance does not take the few requests that would otherwise join a full batch
moments later, so overlap happens only under real overload and batches stay large. Higher priority levels
(1 is the highest) are always taken first, FIFO within a level.

With a `BatchTracer`, sampled requests get a `queue` span and each batch a span linked to them, which is
the current span while `execute` runs (so the stages' spans become its children).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import trace

from recserve.server.admission import Admission
from recserve.server.batching_policy import BatchPolicy, make_policy
from recserve.server.exceptions import (
    DeadlineExceededError,
    InvalidArgumentError,
    ModelExecutionError,
    OverloadedError,
    QueueFullError,
    UnavailableError,
)
from recserve.server.settings import BatchingSettings
from recserve.server.statistics import BatchStatistics
from recserve.server.telemetry.tracing import BatchTracer, RequestTrace
from recserve.server.threads import LoopThreads

Item = TypeVar("Item")
Result = TypeVar("Result")

logger = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    enqueued_ns: int
    deadline_ns: int | None
    trace: RequestTrace | None = None


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
        tracer: BatchTracer | None = None,
    ) -> None:
        self._execute = execute
        self._settings = settings
        self._executor = executor
        self.name = name
        self._tracer = tracer
        self.statistics = BatchStatistics()
        self.policy: BatchPolicy = make_policy(settings)
        self.admission = Admission(settings)
        # Told the cost model at every batch boundary (drain ns per request, batch-of-one ns, rows that
        # execute at once): the front end's check.
        self.on_estimate: Callable[[int, int, int], None] | None = None
        self._levels: list[collections.deque[_Pending[Item, Result]]] = [
            collections.deque() for _ in range(settings.priority_levels)
        ]
        self._queued = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.instance_count)
        self._running = 0  # batches handed to the executor and not back yet
        self._executing: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self.restarts = 0
        """Times the batch loop ended unexpectedly and was started again."""

    @property
    def settings(self) -> BatchingSettings:
        """The batching settings in force."""
        return self._settings

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (cancelled ones until they are swept)."""
        return self._queued

    @property
    def expected_wait_s(self) -> float:
        """How long a request queued now would wait for its batch to start (the admission estimate)."""
        return self.admission.estimator.wait_ns(self._queued, self._running, time.perf_counter_ns()) / 1e9

    def _admit(self, timeout_s: float | None) -> None:
        """Refuse a request with `timeout_s` left (capped already) that the queue cannot serve in time.

        Raises:
            OverloadedError: the queue is the cause (counted as overloaded).
            DeadlineExceededError: the deadline is shorter than one batch (counted as expired).
        """
        refusal = self.admission.refusal(self._queued, self._running, timeout_s)
        if refusal is None:
            return
        if isinstance(refusal, OverloadedError):
            self.statistics.record_dropped(overloaded=1)
        else:
            self.statistics.record_dropped(expired=1)
        raise refusal

    @property
    def batches_in_flight(self) -> int:
        """Batches executing now."""
        return len(self._executing)

    def start(self) -> None:
        """Start forming batches (call from the event loop)."""
        if self._loop_task is None:
            self._start_loop()

    def _start_loop(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-loop")
        self._loop_task.add_done_callback(self._on_loop_end)

    def _on_loop_end(self, task: asyncio.Task[None]) -> None:
        """The batch loop ends only when closed; if anything else ends it, it starts again at once.

        Queued requests stay queued meanwhile (a request is only taken out of the queue into a batch that
        starts), so a bug in batch formation costs a log line and a restart, not a server that stops
        answering.
        """
        if self._closed and (task.cancelled() or task.exception() is None):
            return  # closed: it finished everything queued, or the server is going away
        cause = "cancelled" if task.cancelled() else repr(task.exception())
        self.restarts += 1
        logger.error(
            "%s: the batch loop ended (%s); restarting it (restart %d)", self.name, cause, self.restarts
        )
        self._slots = asyncio.Semaphore(self._settings.instance_count - self._running)
        self._start_loop()

    async def close(self) -> None:
        """Finish everything queued and in flight, then stop. Later submits are UNAVAILABLE."""
        self._closed = True
        self._arrived.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None

    async def submit(self, item: Item, timeout_s: float | None = None, priority: int = 0) -> Result:
        """Queue one request and wait for its result.

        Args:
            item: what `execute` receives.
            timeout_s: the caller's remaining deadline; `default_timeout_microseconds` caps it.
            priority: 1 (highest) to `priority_levels`; 0 means `default_priority_level`.

        Raises:
            QueueFullError: `max_queue_size` requests are already waiting.
            OverloadedError: the queue cannot serve the request in time (see `recserve.server.admission`).
            DeadlineExceededError: the timeout passed before the request's batch started.
            InvalidArgumentError: the priority is out of range.
            UnavailableError: the batcher is closed.
        """
        if self._closed:
            raise UnavailableError(f"{self.name} is shutting down; retry on another replica")
        level = self._level(priority)
        if self._queued >= self._settings.max_queue_size:
            self.statistics.record_dropped(rejected=1)
            raise QueueFullError(
                f"{self.name} queue is full ({self._settings.max_queue_size} requests waiting); retry later"
            )
        timeout_s = self._timeout_s(timeout_s)
        self._admit(timeout_s)
        now_ns = time.perf_counter_ns()
        pending = _Pending(
            item,
            asyncio.get_running_loop().create_future(),
            now_ns,
            None if timeout_s is None else now_ns + int(timeout_s * 1e9),
        )
        if self._tracer is not None:
            pending.trace = self._tracer.request_waits()
        self._levels[level].append(pending)
        self._queued += 1
        self.policy.on_arrival(now_ns)
        self._arrived.set()
        return await pending.future

    def _level(self, priority: int) -> int:
        levels = self._settings.priority_levels
        if priority == 0:
            return self._settings.default_priority_level - 1
        if not 1 <= priority <= levels:
            raise InvalidArgumentError(
                f"priority must be between 1 (highest) and {levels}, or 0 for the default"
            )
        return priority - 1

    def _timeout_s(self, timeout_s: float | None) -> float | None:
        """The caller's remaining deadline, capped by `default_timeout_microseconds`."""
        default_us = self._settings.default_timeout_microseconds
        if not default_us:
            return timeout_s
        return default_us / 1e6 if timeout_s is None else min(timeout_s, default_us / 1e6)

    async def _run(self) -> None:
        while not (self._closed and self._queued == 0):
            await self._slots.acquire()
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            self._start_batch(batch)
        if self._executing:
            await asyncio.gather(*self._executing)

    def _start_batch(self, batch: list[_Pending[Item, Result]]) -> None:
        """Hand the batch to the executor now, not when a new task first runs.

        Under load the event loop has a batch's worth of responses and new requests queued ahead of any
        new task.
        """
        loop = asyncio.get_running_loop()
        started_ns = time.perf_counter_ns()
        self.admission.estimator.on_batch_start(len(batch), started_ns)
        queue_us = [(started_ns - p.enqueued_ns) / 1000 for p in batch]
        span = self._start_batch_span(batch, queue_us)
        items = [p.item for p in batch]
        if isinstance(self._executor, LoopThreads):
            execution = self._executor.run(loop, self._execute_in_span, span, items)
        else:
            execution = loop.run_in_executor(self._executor, self._execute_in_span, span, items)
        self._running += 1
        self._publish_estimate(started_ns)
        task = loop.create_task(self._complete_batch(batch, execution, started_ns, queue_us, span))
        self._executing.add(task)
        task.add_done_callback(self._executing.discard)

    def _publish_estimate(self, now_ns: int) -> None:
        if self.on_estimate is not None and self.admission.estimator.measured:
            estimator = self.admission.estimator
            self.on_estimate(int(estimator.drain_ns()), int(estimator.batch_ns(0)), estimator.parallel_rows)

    async def _wait_for_batch(self) -> None:
        """Return once a batch should go: full, preferred size reached, delay over, or closing."""
        while self._queued == 0:
            if self._closed:
                return
            self._arrived.clear()
            await self._arrived.wait()
        while not self._closed:
            if self._waits_for_complete_batch():
                self._arrived.clear()
                await self._arrived.wait()  # an arrival, or a batch finished
                continue
            age_ns = time.perf_counter_ns() - self._oldest_enqueued_ns()
            wait_s = self.policy.wait_s(self._queued, age_ns, self._running)
            if wait_s <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except asyncio.TimeoutError:
                return

    def _waits_for_complete_batch(self) -> bool:
        """While a batch executes, another starts only complete (`overlap_only_full_batches`)."""
        return (
            self._settings.overlap_only_full_batches
            and self._running > 0
            and not self.policy.is_complete(self._queued)
        )

    def _oldest_enqueued_ns(self) -> int:
        return min(level[0].enqueued_ns for level in self._levels if level)

    def _take_batch(self) -> list[_Pending[Item, Result]]:
        """Pop the next batch, highest priority first; cancelled requests are dropped, expired ones failed."""
        size = self.policy.batch_size(self._queued)
        now_ns = time.perf_counter_ns()
        batch: list[_Pending[Item, Result]] = []
        for level in self._levels:
            while level and len(batch) < size:
                pending = level.popleft()
                self._queued -= 1
                if self._is_live(pending, now_ns):
                    batch.append(pending)
        return batch

    def _is_live(self, pending: _Pending[Item, Result], now_ns: int) -> bool:
        if pending.future.done():
            self.statistics.record_dropped(cancelled=1)
            if pending.trace is not None:
                BatchTracer.request_dropped(pending.trace, "cancelled")
            return False
        if pending.deadline_ns is not None and now_ns >= pending.deadline_ns:
            self.statistics.record_dropped(expired=1)
            if pending.trace is not None:
                BatchTracer.request_dropped(pending.trace, "deadline exceeded")
            pending.future.set_exception(
                DeadlineExceededError("deadline passed while queued; the request was not executed")
            )
            return False
        return True

    async def _complete_batch(
        self,
        batch: list[_Pending[Item, Result]],
        execution: asyncio.Future[Sequence[Result]],
        started_ns: int,
        queue_us: list[float],
        span: trace.Span | None,
    ) -> None:
        try:
            try:
                results = await execution
            finally:
                # Free the slot before answering: the batcher's loop is then woken ahead of this batch's
                # callers, so the next batch starts executing while their responses are built.
                self._slots.release()
                self._running -= 1
                self._arrived.set()
                self._publish_estimate(time.perf_counter_ns())
            if len(results) != len(batch):
                raise ModelExecutionError(
                    f"{self.name} returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as error:  # noqa: BLE001 - any failure fails this batch only
            self._finish(batch, started_ns, queue_us, span, error)
            self._fail(batch, error)
            return
        self._finish(batch, started_ns, queue_us, span, None)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _start_batch_span(
        self, batch: list[_Pending[Item, Result]], queue_us: list[float]
    ) -> trace.Span | None:
        if self._tracer is None:
            return None
        traces = [p.trace for p in batch if p.trace is not None]
        return self._tracer.start_batch(traces, len(batch), queue_us)

    def _execute_in_span(self, span: trace.Span | None, items: list[Item]) -> Sequence[Result]:
        """Runs on the executor; the batch span is current there so stage spans become its children."""
        if span is None:
            return self._execute(items)
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            return self._execute(items)

    def _finish(
        self,
        batch: list[_Pending[Item, Result]],
        started_ns: int,
        queue_us: list[float],
        span: trace.Span | None,
        error: Exception | None,
    ) -> None:
        done_ns = time.perf_counter_ns()
        compute_ns = done_ns - started_ns
        self.statistics.record_batch(len(batch), int(sum(queue_us) * 1000), compute_ns, error is None)
        self.statistics.record_requests(
            queue_us, [(done_ns - p.enqueued_ns) / 1000 for p in batch], time.time_ns()
        )
        self.policy.on_batch(len(batch), compute_ns)
        self.admission.estimator.on_batch(len(batch), compute_ns)
        if span is not None:
            BatchTracer.end_batch(span, error)

    def _fail(self, batch: list[_Pending[Item, Result]], error: Exception) -> None:
        if not isinstance(error, ModelExecutionError):
            logger.exception("%s: batch of %d failed", self.name, len(batch), exc_info=error)
            error = ModelExecutionError(f"model execution failed: {type(error).__name__}: {error}")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
