"""The pools' threads: their names at the OS level (what `top -H`, /proc and profilers show), the priority
they are created at, and `LoopThreads`, which runs the batches for the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recserve.server.threads import LoopThreads, name_os_thread, serving_pool, start_thread_starter


def _os_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_pool_thread_shows_its_python_name_to_the_os() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="ann", initializer=name_os_thread) as pool:
        assert pool.submit(_os_name).result() == "ann_0"


def test_a_long_name_is_cut_to_what_the_os_keeps() -> None:
    with ThreadPoolExecutor(
        1, thread_name_prefix="a-very-long-pool-name", initializer=name_os_thread
    ) as pool:
        assert pool.submit(_os_name).result() == "a-very-long-poo"


def _niceness(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def _os_names() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue  # the thread ended meanwhile
    return names


def test_a_serving_pool_has_every_thread_running_before_its_first_task() -> None:
    pool = serving_pool(3, "prestart")
    try:
        assert sorted(name for name in _os_names() if name.startswith("prestart_")) == [
            "prestart_0",
            "prestart_1",
            "prestart_2",
        ]
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    "build",
    [lambda prefix: serving_pool(2, prefix), lambda prefix: LoopThreads(2, prefix)],
    ids=["serving_pool", "LoopThreads"],
)
def test_a_pool_built_on_a_lowered_thread_serves_at_the_starters_priority(build) -> None:
    start_thread_starter()  # here, on the test's main thread, at the process's own niceness
    serving = _niceness(threading.get_native_id())
    lowered = min(serving + 5, 19)
    assert lowered > serving, "the test process already runs at the lowest priority"
    found: dict[str, int] = {}

    def build_like_the_loader() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), lowered)
        found["builder"] = _niceness(threading.get_native_id())
        pool = build("lowered")
        ids = {pool.submit(threading.get_native_id).result() for _ in range(8)}
        found["pool"] = max(_niceness(native_id) for native_id in ids)
        pool.shutdown()

    builder = threading.Thread(target=build_like_the_loader)
    builder.start()
    builder.join()
    assert found == {"builder": lowered, "pool": serving}


async def test_loop_threads_answer_the_loop_with_the_result_or_the_error() -> None:
    threads = LoopThreads(2, "answer")
    loop = asyncio.get_running_loop()
    try:
        assert await threads.run(loop, lambda a, b: (a + b, _os_name()), 2, 3) in {
            (5, "answer_0"),
            (5, "answer_1"),
        }
        with pytest.raises(ZeroDivisionError):
            await threads.run(loop, lambda: 1 / 0)
        assert threads.submit(lambda: threading.current_thread().name).result(5).startswith("answer_")
    finally:
        threads.shutdown()


async def test_loop_threads_skip_a_call_cancelled_before_a_thread_takes_it() -> None:
    threads = LoopThreads(1, "skip")
    loop = asyncio.get_running_loop()
    gate, ran = threading.Event(), []
    try:
        busy = threads.run(loop, gate.wait, 5)
        skipped = threads.run(loop, ran.append, "skipped")
        skipped.cancel()
        gate.set()
        assert await busy is True
        assert await threads.run(loop, ran.append, "ran") is None
        assert ran == ["ran"]
    finally:
        threads.shutdown()


async def test_loop_threads_run_every_queued_call_before_they_shut_down() -> None:
    threads = LoopThreads(1, "drain")
    gate, ran = threading.Event(), []
    first = threads.submit(gate.wait, 5)
    queued = [threads.submit(ran.append, index) for index in range(3)]
    closing = threading.Thread(target=threads.shutdown)
    closing.start()
    gate.set()
    closing.join(5)
    assert not closing.is_alive()
    assert first.result() is True and all(future.done() for future in queued)
    assert ran == [0, 1, 2]
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("drain_")]
    with pytest.raises(RuntimeError, match="after shutdown"):
        threads.submit(ran.append, 4)


def test_a_submitted_call_cancelled_while_queued_is_reported_to_wait() -> None:
    threads = LoopThreads(1, "cancel")
    gate = threading.Event()
    try:
        busy = threads.submit(gate.wait, 5)
        queued = threads.submit(threading.get_native_id)
        assert queued.cancel()
        gate.set()
        done, _ = concurrent.futures.wait([queued], timeout=5)
        assert done == {queued} and queued.cancelled() and busy.result(5) is True
    finally:
        threads.shutdown()
