"""The serving pools' threads: their names at the OS level, and the priority they are created at.

Python names its threads for itself only: outside the process every one is `python`. The batch and ANN
pools name theirs (`batch_0`, `ann_1`, ...) through `name_os_thread`, their initializer, so that `top -H`,
/proc and profilers tell them apart.

A thread inherits its creator's niceness, and an unprivileged process cannot lower a thread's niceness
again. A version's pools are built while it loads, on the model loader's thread, which runs at nice 10 so
that a background load yields to serving; a pool whose threads it created would serve at nice 10 too, and
lose every contended core to the front end's threads (under overload, to the very threads refusing the
excess). So `serving_pool` creates all of a pool's threads at once, on the thread `start_thread_starter`
started at the server's own priority.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import ThreadPoolExecutor

_PR_SET_NAME = 15
_OS_NAME_LIMIT = 15  # bytes, without the terminating NUL
# Linux's prctl, or None where libc has none: a pool whose initializer raised would refuse every task.
_prctl = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "prctl", None)
_START_TIMEOUT_S = 30.0  # creating a thread takes microseconds; this only keeps a broken start from hanging

_starter: ThreadPoolExecutor | None = None
_starter_lock = threading.Lock()


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level (Linux prctl; nothing where there is none)."""
    if _prctl is not None:
        name = threading.current_thread().name.encode("ascii", "replace")[:_OS_NAME_LIMIT]
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def start_thread_starter() -> None:
    """From now on, serving pools get their threads from a thread created here, at this thread's priority.

    The server's start calls it before any version loads. The first call in a process wins: a second
    server in the same process (tests) shares the first one's starter.
    """
    global _starter
    with _starter_lock:
        if _starter is None:
            starter = ThreadPoolExecutor(1, thread_name_prefix="thread-start", initializer=name_os_thread)
            starter.submit(name_os_thread).result()  # its thread exists from here on, created by this one
            _starter = starter


def serving_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    """A pool of `workers` threads named `prefix_N`, every one already running, at the serving priority.

    Without a starter (offline use: benchmarks, evaluation) the calling thread creates them.
    """
    pool = ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=name_os_thread)
    if _starter is None:
        _start_every_thread(pool, workers)
    else:
        _starter.submit(_start_every_thread, pool, workers).result()
    return pool


def _start_every_thread(pool: ThreadPoolExecutor, workers: int) -> None:
    """Make `pool` create all its threads now, from the calling thread.

    A pool creates a thread per task while none of its threads is idle, up to its size: tasks that wait
    for each other keep every thread busy until the last one exists.
    """
    everyone = threading.Barrier(workers, timeout=_START_TIMEOUT_S)
    for started in [pool.submit(everyone.wait) for _ in range(workers)]:
        started.result()
