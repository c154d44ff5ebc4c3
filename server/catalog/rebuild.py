"""Rebuilding the index of a live catalog in the background, when its delta grows or on a schedule.

The rows live at the start are indexed in a child process (no GIL taken from serving) and the new index is
swapped in at once; rows added meanwhile stay in the delta, rows that died meanwhile are dropped as dead.
Batches keep the view, and so the index, they started with; an old index file is unlinked once replaced
(its memory map stays valid for whoever still reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from recserve.server.catalog.live import LiveCatalog
from recserve.server.runtime.ann_index import AnnIndex
from recserve.server.runtime.index_build import build_in_child

logger = logging.getLogger(__name__)

INDEX_DIR_PREFIX = "recserve-index-"
_OWN_DIRECTORIES: set[Path] = set()  # this process's, which a stale one with its pid (reused) is not


def index_directory() -> Path:
    """A new directory for this process's rebuilt indexes, named by its pid.

    Those of processes no longer running are removed first: a server killed with SIGKILL cannot remove its
    own, and a crash loop would fill the disk with them (in a container every start may get the same pid,
    so one with this pid that this process did not make is stale too).
    """
    for stale in Path(tempfile.gettempdir()).glob(f"{INDEX_DIR_PREFIX}*-*"):
        pid = stale.name[len(INDEX_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or stale in _OWN_DIRECTORIES:
            continue
        if int(pid) == os.getpid() or not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{INDEX_DIR_PREFIX}{os.getpid()}-"))
    _OWN_DIRECTORIES.add(directory)
    return directory


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class RebuildPolicy:
    """When and how to rebuild."""

    delta_rows: int
    """Rebuild once the delta plus the dead index entries reach this many rows."""
    interval_s: float
    """Also rebuild this often when anything changed (0 = only on `delta_rows`)."""
    n_trees: int
    search_k: int
    seed: int = 7


@dataclass
class RebuildStatistics:
    """What the rebuilds did, for metrics."""

    completed: int = 0
    failed: int = 0
    last_duration_s: float = 0.0
    total_duration_s: float = 0.0


class IndexRebuilder:
    """Keeps one catalog's index fresh. `start()` on the event loop, `close()` at the end."""

    def __init__(self, catalog: LiveCatalog, policy: RebuildPolicy) -> None:
        self._catalog = catalog
        self._policy = policy
        self._directory = index_directory()
        self._running: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._current_file: Path | None = None
        self.statistics = RebuildStatistics()

    def start(self) -> None:
        """Start the schedule (if any) and check the delta now."""
        if self._policy.interval_s > 0:
            self._timer = asyncio.get_running_loop().create_task(self._every_interval())
        self.changed()

    def changed(self) -> None:
        """Call after each commit: starts a rebuild when the delta has reached the threshold."""
        if self._catalog.delta_size + self._catalog.dead_in_index >= self._policy.delta_rows:
            self.trigger()

    def trigger(self) -> asyncio.Task[None]:
        """Start a rebuild now, unless one is running; returns the one that will finish."""
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._rebuild())
        return self._running

    async def close(self) -> None:
        """Stop the schedule, wait for a rebuild under way, remove the rebuilt files."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
        shutil.rmtree(self._directory, ignore_errors=True)
        _OWN_DIRECTORIES.discard(self._directory)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._policy.interval_s)
            if self._catalog.delta_size or self._catalog.dead_in_index:
                await asyncio.shield(self.trigger())

    async def _rebuild(self) -> None:
        started = time.perf_counter()
        rows, embeddings, covered_size = self._catalog.index_snapshot()
        path = self._directory / f"index-{self._catalog.index_generation + 1}.ann"
        try:
            await build_in_child(embeddings, path, self._policy.n_trees, self._policy.seed)
            index = AnnIndex(path, embeddings.shape[1], search_k=self._policy.search_k)
        except Exception:
            self.statistics.failed += 1
            logger.exception("index rebuild failed; serving goes on with the current index and delta")
            path.unlink(missing_ok=True)
            return
        self._catalog.install_index(index, rows, covered_size)
        if self._current_file is not None:
            self._current_file.unlink(missing_ok=True)
        self._current_file = path
        duration = time.perf_counter() - started
        self.statistics.completed += 1
        self.statistics.last_duration_s = duration
        self.statistics.total_duration_s += duration
        logger.info(
            "index rebuilt over %d live items in %.1fs (generation %d); %d rows still in the delta",
            rows.size,
            duration,
            self._catalog.index_generation,
            self._catalog.delta_size,
        )
