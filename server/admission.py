"""Admission under overload: refuse at once what the queue cannot serve in time, instead of letting it expire.

A queue deeper than capacity × deadline makes every request wait until it is too late: measured on 2 cores,
3,000 callers with 500 ms deadlines against ~1,600 Recommend/s of capacity got 190 OK/s, the rest
DEADLINE_EXCEEDED after waiting in vain. So the queue is bounded by time, not only by count:

- the expected wait of a request arriving now is the work queued ahead of it (the full batches ahead of
  its own, each at the measured cost of a full batch, spread over the instances) plus the rest of the batch
  executing;
- a request whose deadline would pass before its batch is done is refused at once (deadline-aware
  admission), and so is any request that would wait longer than `max_queue_wait_microseconds` (whether or not
  it has a deadline), with RESOURCE_EXHAUSTED and the expected wait in the message: clients back off or try
  another replica, and the server spends its cores on requests that can still succeed.

The estimate learns from every finished batch, so it follows the machine (CPU contention, batch sizes).
Nothing here knows gRPC: the batcher asks `refusal(...)` before queueing, and the native front end asks the
same before it even creates the call's task.
"""

from __future__ import annotations

import copy
import time

from recserve.server.batching_policy import LinearCostModel
from recserve.server.exceptions import DeadlineExceededError, OverloadedError
from recserve.server.settings import BatchingSettings


class QueueWaitEstimator:
    """Expected queue wait and batch time, from a cost model of the batches executed so far.

    Batch time is `fixed + per_request * size` (fitted by weighted least squares, as the adaptive batching
    policy does): a batch of one mostly costs its fixed part, so dividing its time by its size would make a
    burst of 64 look 64 times as expensive as it is. While only one batch size has been seen, all of the cost
    counts as fixed: the estimate errs on the optimistic side, and refuses only real overload.
    """

    def __init__(self, settings: BatchingSettings) -> None:
        self._instances = settings.instance_count
        self._max_batch = settings.max_batch_size
        self._overlap_only_full = settings.overlap_only_full_batches
        self.cost = LinearCostModel()
        self._running_started_ns = 0
        self._running_size = 0

    @property
    def measured(self) -> bool:
        """Whether any batch has been measured (nothing is refused before)."""
        return self.cost.fitted

    def start_from(self, previous: QueueWaitEstimator) -> None:
        """Begin with what `previous` (the version this one replaces) has measured, instead of nothing.

        A version's first batches are its least typical (the old version drains and is freed beside them),
        and with one batch size seen all of its cost counts as fixed: the time of one slow first batch
        would stand for every batch and could refuse requests at c=64, far below capacity, as a swap ends.
        """
        self.cost = copy.deepcopy(previous.cost)

    def on_batch_start(self, size: int, now_ns: int) -> None:
        """A batch of `size` went to the executor."""
        self._running_started_ns, self._running_size = now_ns, size

    def on_batch(self, size: int, compute_ns: int) -> None:
        """A batch of `size` requests took `compute_ns`."""
        self.cost.observe(size, compute_ns / 1e9)

    def wait_ns(self, queued: int, running: int, now_ns: int) -> float:
        """How long a request queued now waits before its batch starts."""
        if not self.cost.fitted:
            return 0.0
        full_batches_ahead = queued // self._max_batch
        wait_s = full_batches_ahead * self.cost.predict(self._max_batch) / self._instances
        if running and self._waits_for_running(queued, running):
            elapsed_s = (now_ns - self._running_started_ns) / 1e9  # the batch started last: the best guess
            wait_s += max(0.0, self.cost.predict(self._running_size) - elapsed_s)
        return wait_s * 1e9

    def _waits_for_running(self, queued: int, running: int) -> bool:
        """Whether the newcomer's batch starts only when a running one ends.

        So it does when no instance is free, or when one is but (`overlap_only_full_batches`) a batch that
        is not full does not start beside another.
        """
        partial = queued % self._max_batch + 1 < self._max_batch
        return running >= self._instances or (self._overlap_only_full and partial)

    def drain_ns(self) -> float:
        """Queue drain time per request when batches are full and every instance busy."""
        return self.cost.predict(self._max_batch) * 1e9 / (self._max_batch * self._instances)

    @property
    def parallel_rows(self) -> int:
        """Requests that can execute at once (full batches on every instance)."""
        return self._max_batch * self._instances

    def batch_ns(self, queued: int) -> float:
        """How long the batch a request queued now joins takes to execute."""
        return self.cost.predict(queued % self._max_batch + 1) * 1e9


class Admission:
    """Decides, for a request arriving now, whether the queue can serve it in time."""

    def __init__(self, settings: BatchingSettings) -> None:
        self.estimator = QueueWaitEstimator(settings)
        self._max_wait_ns = settings.max_queue_wait_microseconds * 1000
        self._deadline_aware = settings.deadline_admission

    def refusal(
        self, queued: int, running: int, timeout_s: float | None
    ) -> OverloadedError | DeadlineExceededError | None:
        """Why a request with `timeout_s` left must be refused now, or None to queue it.

        OverloadedError (RESOURCE_EXHAUSTED: back off, or try another replica) when the queue is the cause;
        DeadlineExceededError when the deadline is shorter than one batch takes on an idle server.
        """
        estimator = self.estimator
        if not estimator.measured:
            return None
        now_ns = time.perf_counter_ns()
        wait_ns = estimator.wait_ns(queued, running, now_ns)
        if self._max_wait_ns and wait_ns > self._max_wait_ns:
            return OverloadedError(
                f"overloaded: a request queued now would wait ~{wait_ns / 1e6:.0f} ms, more than the "
                f"{self._max_wait_ns / 1e6:.0f} ms this server queues a request "
                "(batching.max_queue_wait_microseconds); back off and retry, or use another replica"
            )
        if not self._deadline_aware or timeout_s is None:
            return None
        batch_ns, left_ms = estimator.batch_ns(queued), max(timeout_s, 0.0) * 1e3
        if batch_ns > timeout_s * 1e9:
            return DeadlineExceededError(
                f"the deadline ({left_ms:.0f} ms left) is shorter than a batch takes (~{batch_ns / 1e6:.0f} "
                "ms); the request was not executed"
            )
        if wait_ns + batch_ns > timeout_s * 1e9:
            return OverloadedError(
                f"overloaded: a request queued now would be answered in ~{(wait_ns + batch_ns) / 1e6:.0f} "
                f"ms, after its deadline ({left_ms:.0f} ms left); back off and retry, or use another replica"
            )
        return None
