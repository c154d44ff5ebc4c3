"""The serving pools' threads: their OS names, the priority they start at, how an event loop hands them work.

Python names its threads for itself only: outside the process every one is `python`. The batch and ANN
pools name theirs (`batch_0`, `ann_1`, ...) through `name_os_thread`, their initializer, so that `top -H`,
/proc and profilers tell them apart.

A thread inherits its creator's niceness, and an unprivileged process cannot lower a thread's niceness
again. A version's pools are built while it loads, on the model loader's thread, which runs at nice 10 so
that a background load yields to serving; a pool whose threads it created would serve at nice 10 too, and
lose every contended core to the front end's threads (under overload, to the very threads refusing the
excess). So `serving_pool` creates all of a pool's threads at once, on the thread `start_thread_starter`
started at the server's own priority.

The batcher's pool is a `LoopThreads`: `loop.run_in_executor` costs a concurrent future, a condition
variable and two callbacks per call, and its result reaches the loop through one more callback. A batch of
one pays for all of that twice, on the critical path (measured with a 1.5 ms task under uvloop: ~50 µs to
hand the task over and ~80 µs for the result to be back on the loop, against ~11 and ~47 µs here).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

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


class LoopThreads(Executor):
    """Threads that run calls for an event loop and answer it with a single wake-up.

    `run(loop, fn, *args)` returns an asyncio future that the thread completes through one
    `call_soon_threadsafe`. It also is a plain `Executor` (`submit`, `shutdown`) for callers off the loop.
    A future cancelled before a thread takes its call is skipped, as `ThreadPoolExecutor` skips it.
    """

    def __init__(self, workers: int, prefix: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], Callable[[], bool]] | None] = (
            queue.SimpleQueue()
        )
        self._shutdown = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{prefix}_{index}", daemon=True)
            for index in range(workers)
        ]
        if _starter is None:
            self._start_threads()
        else:
            _starter.submit(self._start_threads).result()

    def _start_threads(self) -> None:
        for thread in self._threads:
            thread.start()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on a thread; its result or exception reaches the returned future on `loop`."""
        future: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            try:
                result = fn(*args)
            except BaseException as error:  # noqa: BLE001 - delivered to the caller, as an executor does
                _answer(loop, future, None, error)
            else:
                _answer(loop, future, result, None)

        self._put(call, future.cancelled)
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """`Executor.submit`: run `fn` on a thread, the result in a concurrent future."""
        future: Future[T] = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():  # cancelled: tells `wait()` and `as_completed()`
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - delivered to the caller
                future.set_exception(error)

        self._put(call, _never)
        return future

    def _put(self, call: Callable[[], None], cancelled: Callable[[], bool]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run new calls after shutdown")
            self._calls.put((call, cancelled))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued, then end the threads (`cancel_futures` is not offered: queued calls run)."""
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                for _ in self._threads:
                    self._calls.put(None)
        if wait:
            for thread in self._threads:
                if thread.is_alive() and thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        name_os_thread()
        while (task := self._calls.get()) is not None:
            call, cancelled = task
            if not cancelled():
                call()


def _never() -> bool:
    return False


def _answer(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    """Complete `future` on its loop; nothing if it was cancelled meanwhile or the loop is gone."""

    def complete() -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    try:
        loop.call_soon_threadsafe(complete)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
