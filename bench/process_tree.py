"""CPU and memory of a server's whole process tree (workers, Triton's backend stubs), from /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _parents_and_times() -> tuple[dict[int, int], dict[int, float]]:
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    return parents, times


def tree_pids(root: int) -> list[int]:
    """`root` and every process below it."""
    parents, _ = _parents_and_times()
    return [pid for pid in parents if _below(pid, root, parents)]


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and every process below it (threads included)."""
    parents, times = _parents_and_times()
    return sum(seconds for pid, seconds in times.items() if _below(pid, root, parents))


def tree_memory_mb(root: int) -> dict[str, float]:
    """The tree's resident memory: `rss` adds every process's (shared pages counted in each), `pss` splits
    shared pages among the processes that map them (what the tree really costs)."""
    totals = {"rss": 0.0, "pss": 0.0}
    for pid in tree_pids(root):
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                totals[key.lower()] += int(value.split()[0]) / 1024
    return totals


def _below(pid: int, root: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = parents.get(pid, 1)
    return False
