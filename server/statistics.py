"""Counters for batches and pipeline stages.

They are the one source that metrics, logs and the inference protocol's statistics read. Updates are
locked because batches run on several threads.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Upper bounds (µs) of the latency buckets: 100 µs to 10 s, about three per decade, as Prometheus expects.
LATENCY_BUCKETS_US: tuple[float, ...] = (
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
)  # fmt: skip


@dataclass
class Histogram:
    """Counts of observations per bucket (the last bucket is +Inf) and their sum. Not locked: its owner is."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_US
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        """Count one observation (in the bounds' unit)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, ending with (inf, count)."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def copy(self) -> Histogram:
        """A snapshot that later observations do not change."""
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass
class BatchStatistics:
    """What one batcher did: rows, batches, outcomes, time queued and computing, batch sizes."""

    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    failure_count: int = 0
    rejected_count: int = 0
    overloaded_count: int = 0
    expired_count: int = 0
    cancelled_count: int = 0
    queue_duration_ns: int = 0
    compute_duration_ns: int = 0
    batch_size_counts: collections.Counter[int] = field(default_factory=collections.Counter)
    queue_duration_us: Histogram = field(default_factory=Histogram)
    request_duration_us: Histogram = field(default_factory=Histogram)
    last_inference_ns: int = 0
    batch_compute_ns: collections.Counter[int] = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def mean_batch_size(self) -> float:
        """Rows per executed batch (0 before the first batch)."""
        return self.inference_count / self.execution_count if self.execution_count else 0.0

    def record_batch(self, size: int, queue_ns: int, compute_ns: int, succeeded: bool) -> None:
        """Count one executed batch of `size` requests."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += size
            self.batch_size_counts[size] += 1
            self.batch_compute_ns[size] += compute_ns
            self.queue_duration_ns += queue_ns
            self.compute_duration_ns += compute_ns
            if succeeded:
                self.success_count += size
            else:
                self.failure_count += size

    def record_requests(self, queue_us: Iterable[float], request_us: Iterable[float], done_ns: int) -> None:
        """Per request of a finished batch: time queued, and time from arrival to result."""
        with self._lock:
            for value in queue_us:
                self.queue_duration_us.observe(value)
            for value in request_us:
                self.request_duration_us.observe(value)
            self.last_inference_ns = done_ns

    def snapshot(self) -> BatchStatistics:
        """A consistent copy, safe to read from another thread (the metrics endpoint)."""
        with self._lock:
            return BatchStatistics(
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                success_count=self.success_count,
                failure_count=self.failure_count,
                rejected_count=self.rejected_count,
                overloaded_count=self.overloaded_count,
                expired_count=self.expired_count,
                cancelled_count=self.cancelled_count,
                queue_duration_ns=self.queue_duration_ns,
                compute_duration_ns=self.compute_duration_ns,
                batch_size_counts=collections.Counter(self.batch_size_counts),
                queue_duration_us=self.queue_duration_us.copy(),
                request_duration_us=self.request_duration_us.copy(),
                last_inference_ns=self.last_inference_ns,
                batch_compute_ns=collections.Counter(self.batch_compute_ns),
            )

    def record_dropped(
        self, *, rejected: int = 0, overloaded: int = 0, expired: int = 0, cancelled: int = 0
    ) -> None:
        """Count requests that never ran: queue full, refused as overload, deadline passed, caller gone."""
        with self._lock:
            self.rejected_count += rejected
            self.overloaded_count += overloaded
            self.expired_count += expired
            self.cancelled_count += cancelled


@dataclass
class StageStatistics:
    """What one pipeline stage did: calls, rows and time."""

    execution_count: int = 0
    inference_count: int = 0
    compute_duration_ns: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, rows: int, duration_ns: int) -> None:
        """Count one call over `rows` rows."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += rows
            self.compute_duration_ns += duration_ns


@dataclass
class RpcStatistics:
    """Per gRPC method: calls by final status code, and a latency histogram (µs)."""

    calls: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    durations_us: dict[str, Histogram] = field(default_factory=dict)
    # Counts kept elsewhere (calls the native front end answered itself), added to `calls` when read.
    sources: list[Callable[[], dict[tuple[str, str], int]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, method: str, code: str, duration_us: float) -> None:
        """Count one finished call of `method` (`service/Method`) with status `code` (e.g. "OK")."""
        with self._lock:
            self.calls[(method, code)] += 1
            histogram = self.durations_us.get(method)
            if histogram is None:
                histogram = self.durations_us[method] = Histogram()
            histogram.observe(duration_us)

    def add_source(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Add calls counted elsewhere, by (method, code), to every snapshot."""
        self.sources.append(counts)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, Histogram]]:
        """Consistent copies of (calls, durations_us), safe to read from another thread."""
        with self._lock:
            calls = collections.Counter(self.calls)
            durations = {method: h.copy() for method, h in self.durations_us.items()}
        for source in self.sources:
            calls.update(source())
        return dict(calls), durations
