"""A duty cycle for background work that shares the GIL with serving: loading a version beside it.

Lowering the loading thread's CPU priority does not help when the cores are not what it competes for: a
SavedModel load and warm-up batches run Python and so hold the GIL, and every request's batch waits for it.
Measured (bench/model_swap.py, c=64, 2 cores): loading at full speed took 0.7 s and tripled the p99 of the
requests in flight (60 -> 200 ms). So the loading thread works in short stretches and, after each, sleeps
in proportion to how long it worked: at a share of 0.3 it holds the GIL at most 30% of the time.

Stretches must be short, not only rare: one SavedModel is 50-100 ms of Python (function deserialization),
a stretch in which every request in flight runs at half speed. Pausing only between files (each
vocabulary, SavedModel, array) kept p99 at 1.6x steady state at the median of 12 swaps, 2.16x at the
worst. `DutyCycle.sliced` cuts every step from inside: a profile hook on the loading thread pauses it
whenever it has worked SLICE_S since its last pause, so no stretch is longer than a few milliseconds,
however the library it calls is structured. Side by side: 1.42x at the median of 10 swaps, 1.55x at the
worst, at the same swap duration (5-7 s; a share of 0.2 took 7-9 s for 1.32x / 1.59x).

Within a stretch the loading thread still competes for the GIL, and a serving thread that wants it waits
up to the interpreter's switch interval (5 ms) each time before the holder must let go. While a version
loads beside serving ones (its files; the warm-up batches are better off without it) the interval is cut
to 0.5 ms, so requests get the GIL back sooner.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

LOADING_SWITCH_INTERVAL_S = 0.0005
SLICE_S = 0.002
EVENTS_PER_CHECK = 32  # profile events between clock reads: the hook costs little per event


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

    def sliced(self, function: Callable[..., T], *args: Any, slice_s: float = SLICE_S) -> T:  # noqa: ANN401
        """`function(*args)` on this thread, pausing whenever it has worked `slice_s` since the last pause.

        A profile hook (sys.setprofile: this thread only) looks at the clock every EVENTS_PER_CHECK calls
        and returns; C code that runs long without calling back into Python is not cut.
        """
        countdown = EVENTS_PER_CHECK

        def pause_when_due(frame: FrameType, event: str, arg: object) -> None:
            nonlocal countdown
            countdown -= 1
            if countdown:
                return
            countdown = EVENTS_PER_CHECK
            if time.perf_counter() - self._resumed >= slice_s:
                self.pause()

        previous = sys.getprofile()
        sys.setprofile(pause_when_due)
        try:
            return function(*args)
        finally:
            sys.setprofile(previous)


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
