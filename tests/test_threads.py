"""The pools' threads: their names at the OS level (what `top -H`, /proc and profilers show), and the priority
they are created at."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recserve.server.threads import name_os_thread, serving_pool, start_thread_starter


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


def test_a_pool_built_on_a_lowered_thread_serves_at_the_starters_priority() -> None:
    start_thread_starter()  # here, on the test's main thread, at the process's own niceness
    serving = _niceness(threading.get_native_id())
    lowered = min(serving + 5, 19)
    assert lowered > serving, "the test process already runs at the lowest priority"
    found: dict[str, int] = {}

    def build_like_the_loader() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), lowered)
        found["builder"] = _niceness(threading.get_native_id())
        pool = serving_pool(2, "lowered")
        ids = {pool.submit(threading.get_native_id).result() for _ in range(8)}
        found["pool"] = max(_niceness(native_id) for native_id in ids)
        pool.shutdown()

    builder = threading.Thread(target=build_like_the_loader)
    builder.start()
    builder.join()
    assert found == {"builder": lowered, "pool": serving}
