"""The pools' threads carry their names at the OS level (what `top -H`, /proc and profilers show)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recserve.server.threads import name_os_thread


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
