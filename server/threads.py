"""Thread names the operating system sees, so that `top -H`, /proc and profilers tell threads apart.

Python names its threads for itself only: outside the process every one is `python`. The batch and ANN
pools name theirs (`batch_0`, `ann_1`, ...) through `name_os_thread`, their initializer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_PR_SET_NAME = 15
_OS_NAME_LIMIT = 15  # bytes, without the terminating NUL
# Linux's prctl, or None where libc has none: a pool whose initializer raised would refuse every task.
_prctl = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "prctl", None)


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level (Linux prctl; nothing where there is none)."""
    if _prctl is not None:
        name = threading.current_thread().name.encode("ascii", "replace")[:_OS_NAME_LIMIT]
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
