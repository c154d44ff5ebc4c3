"""A duty cycle for background work that shares the GIL with serving: loading a version beside it.

Lowering the loading thread's CPU priority does not help when the cores are not what it competes for: a
SavedModel load and warm-up batches run Python and so hold the GIL, and every request's batch waits for it.
Measured (bench/model_swap.py, c=64, 2 cores): loading at full speed took 0.7 s and tripled the p99 of the
requests in flight (60 -> 200 ms). So the loading thread works in steps and, after each, sleeps in
proportion to how long the step took: at a share of 1/4 it holds the GIL at most a quarter of the time,
and the swap takes ~4 times as long.
"""

from __future__ import annotations

import time


class DutyCycle:
    """`pause()` between steps keeps the work to `share` of the wall time since the last pause."""

    def __init__(self, share: float, longest_pause_s: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.longest_pause_s = longest_pause_s
        self.paused_s = 0.0
        self._resumed = time.perf_counter()

    def pause(self) -> None:
        """Sleep (releasing the GIL) as long as the step since the last pause needs to stay at `share`."""
        worked = time.perf_counter() - self._resumed
        rest = min(worked * (1 - self.share) / self.share, self.longest_pause_s)
        if rest > 0:
            time.sleep(rest)
            self.paused_s += rest
        self._resumed = time.perf_counter()
