"""When a batch goes and how big it is: Triton's fixed rules, or an adaptive policy that needs no tuning.

The batcher asks a policy two things whenever it holds a free execution slot: how much longer to wait
given the queue length and the oldest request's age (`wait_s`), and how many requests to take
(`batch_size`). It reports arrivals and finished batches so the adaptive policy can learn.
"""

from __future__ import annotations

import bisect
import math
from typing import Protocol

from recserve.server.settings import BatchingSettings


class BatchPolicy(Protocol):
    """Decides batch formation; see the module docstring."""

    def wait_s(self, queued: int, oldest_age_ns: int, in_flight: int) -> float:
        """Seconds still to wait for more requests; <= 0 means dispatch now."""

    def batch_size(self, queued: int) -> int:
        """How many requests the next batch takes."""

    def is_complete(self, queued: int) -> bool:
        """Whether `queued` requests make a batch that cannot grow: full (or of a preferred size)."""

    def on_arrival(self, now_ns: int) -> None:
        """A request was queued."""

    def on_batch(self, size: int, compute_ns: int) -> None:
        """A batch of `size` finished after `compute_ns`."""


class FixedPolicy:
    """Triton's dynamic batcher: max size, preferred sizes, a fixed maximum queue delay."""

    def __init__(self, settings: BatchingSettings) -> None:
        self.max_batch_size = settings.max_batch_size
        self.preferred = sorted(
            size for size in settings.preferred_batch_sizes if size <= self.max_batch_size
        )
        self.max_delay_ns = settings.max_queue_delay_microseconds * 1000

    def wait_s(self, queued: int, oldest_age_ns: int, in_flight: int) -> float:
        """Wait only while neither a full nor a preferred batch can form, up to the queue delay."""
        if queued >= self.max_batch_size or (self.preferred and queued >= self.preferred[0]):
            return 0.0
        return (self.max_delay_ns - oldest_age_ns) / 1e9

    def is_complete(self, queued: int) -> bool:
        """Full, or at least the smallest preferred size."""
        return queued >= self.max_batch_size or bool(self.preferred and queued >= self.preferred[0])

    def batch_size(self, queued: int) -> int:
        """The largest preferred size that fits the queue, unless the queue fills a whole batch."""
        if queued >= self.max_batch_size or not self.preferred or queued < self.preferred[0]:
            return min(queued, self.max_batch_size)
        return self.preferred[bisect.bisect_right(self.preferred, queued) - 1]

    def on_arrival(self, now_ns: int) -> None:
        """Fixed rules learn nothing."""

    def on_batch(self, size: int, compute_ns: int) -> None:
        """Fixed rules learn nothing."""


class LinearCostModel:
    """Batch compute time as `fixed + per_row * size`, fitted by exponentially weighted least squares.

    The fit is solved once per observed batch, not per prediction: admission predicts for every request.
    """

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self._n = self._x = self._y = self._xx = self._xy = 0.0
        self._fixed = self._per_row = 0.0

    def observe(self, size: int, seconds: float) -> None:
        """Add one measured batch."""
        d = self.decay
        self._n = d * self._n + 1
        self._x = d * self._x + size
        self._y = d * self._y + seconds
        self._xx = d * self._xx + size * size
        self._xy = d * self._xy + size * seconds
        self._fixed, self._per_row = self._solve()

    @property
    def fitted(self) -> bool:
        """Whether at least one batch has been seen."""
        return self._n > 0

    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds, seconds per row), both >= 0; with one batch size seen, all cost is fixed."""
        return self._fixed, self._per_row

    def _solve(self) -> tuple[float, float]:
        mean_x, mean_y = self._x / self._n, self._y / self._n
        variance = self._xx / self._n - mean_x * mean_x
        slope = (self._xy / self._n - mean_x * mean_y) / variance if variance > 1e-9 else 0.0
        slope = max(slope, 0.0)
        return max(mean_y - slope * mean_x, 0.0), slope

    def predict(self, size: int) -> float:
        """Expected seconds for a batch of `size`."""
        return self._fixed + self._per_row * size


class ArrivalRate:
    """Requests per second, an exponentially weighted mean of inter-arrival gaps."""

    def __init__(self, weight: float = 0.05) -> None:
        self.weight = weight
        self._last_ns: int | None = None
        self._mean_gap_s = math.inf

    def observe(self, now_ns: int) -> None:
        """Count one arrival."""
        if self._last_ns is not None:
            gap = (now_ns - self._last_ns) / 1e9
            self._mean_gap_s = (
                gap
                if math.isinf(self._mean_gap_s)
                else self._mean_gap_s + self.weight * (gap - self._mean_gap_s)
            )
        self._last_ns = now_ns

    @property
    def mean_gap_s(self) -> float:
        """Mean seconds between arrivals (inf before two arrivals)."""
        return self._mean_gap_s


class AdaptivePolicy:
    """Picks the queue delay from the measured cost model and arrival rate; no knob but a latency target.

    - Idle (no batch executing): go at once, so light load pays no delay.
    - Busy (another batch executing, a slot free): wait for the requests expected to arrive during one
      batch's compute (`predicted compute / mean arrival gap`), re-deciding at every arrival, but never
      past the latency target for the oldest request.
    - Everything queued goes, up to max_batch_size: under load a larger batch is cheaper per request, so
      the batch size is never capped below what is waiting.
    """

    def __init__(self, settings: BatchingSettings) -> None:
        self.max_batch_size = settings.max_batch_size
        self.target_s = settings.adaptive.latency_target_us / 1e6
        self.cost = LinearCostModel()
        self.arrivals = ArrivalRate()

    def expected_batch(self, queued: int) -> float:
        """Requests expected to arrive while a batch of `queued` computes."""
        gap = self.arrivals.mean_gap_s
        return self.cost.predict(queued) / gap if gap > 0 else math.inf

    def wait_s(self, queued: int, oldest_age_ns: int, in_flight: int) -> float:
        """Dispatch at once when idle, full or already at the expected batch; else wait within budget."""
        if in_flight == 0 or queued >= self.max_batch_size or not self.cost.fitted:
            return 0.0
        if queued >= min(self.expected_batch(queued), self.max_batch_size):
            return 0.0
        budget = self.target_s - oldest_age_ns / 1e9 - self.cost.predict(queued + 1)
        return min(budget, self.arrivals.mean_gap_s)

    def is_complete(self, queued: int) -> bool:
        """Full."""
        return queued >= self.max_batch_size

    def batch_size(self, queued: int) -> int:
        """Everything queued, up to max_batch_size."""
        return min(queued, self.max_batch_size)

    def on_arrival(self, now_ns: int) -> None:
        """Track the arrival rate."""
        self.arrivals.observe(now_ns)

    def on_batch(self, size: int, compute_ns: int) -> None:
        """Refit the cost model."""
        self.cost.observe(size, compute_ns / 1e9)


def make_policy(settings: BatchingSettings) -> BatchPolicy:
    """The policy the settings ask for."""
    return AdaptivePolicy(settings) if settings.adaptive.enabled else FixedPolicy(settings)
