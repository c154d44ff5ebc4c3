"""Counters for batches and pipeline stages.

They are the one source that metrics, logs and the inference protocol's statistics read. Updates are
locked because batches run on several threads.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field


@dataclass
class BatchStatistics:
    """What one batcher did: rows, batches, outcomes, time queued and computing, batch sizes."""

    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    failure_count: int = 0
    rejected_count: int = 0
    expired_count: int = 0
    cancelled_count: int = 0
    queue_duration_ns: int = 0
    compute_duration_ns: int = 0
    batch_size_counts: collections.Counter[int] = field(default_factory=collections.Counter)
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
            self.queue_duration_ns += queue_ns
            self.compute_duration_ns += compute_ns
            if succeeded:
                self.success_count += size
            else:
                self.failure_count += size

    def record_dropped(self, *, rejected: int = 0, expired: int = 0, cancelled: int = 0) -> None:
        """Count requests that never ran: queue full, deadline passed in the queue, caller gone."""
        with self._lock:
            self.rejected_count += rejected
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
