"""A duty cycle for background work that shares the GIL with serving: loading a version beside it.

Lowering the loading thread's CPU priority does not help when the cores are not what it competes for: a
SavedModel load and warm-up batches run Python and so hold the GIL, and every request's batch waits for it.
Measured (bench/model_swap.py, c=64, 2 cores): loading at full speed took 0.7 s and tripled the p99 of the
requests in flight (60 -> 200 ms). So the loading thread works in steps and, after each, sleeps in
proportion to how long the step took: at a share of 0.15 it holds the GIL at most 15% of the time, and
the swap takes ~6 times as long (4-6 s instead of 0.7).

Within a step the loading thread still competes for the GIL, and a serving thread that wants it waits up
to the interpreter's switch interval (5 ms) each time before the holder must let go. While a version loads
beside serving ones (its files; the warm-up batches are better off without it) the interval is cut to
0.5 ms, so requests get the GIL back sooner.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

LOADING_SWITCH_INTERVAL_S = 0.0005


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


@contextlib.contextmanager
def quick_gil_handoff(interval_s: float = LOADING_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Within the block every thread gives up the GIL after `interval_s` when another wants it.

    That is the interpreter's switch interval, restored after the block.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)
