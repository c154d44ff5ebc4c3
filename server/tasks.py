"""Stopping background asyncio tasks for good, even when a library swallows a cancellation.

redis-py can: when its socket timeout fires in the same loop iteration as a cancellation, it reconnects and
goes on with the command, and a loop around it then never ends. A shutdown that waited on a single cancel()
hung forever. stop_task() cancels again until the task is done, within a bound.
"""

from __future__ import annotations

import asyncio
import logging
import time

logger = logging.getLogger(__name__)

RECANCEL_S = 0.2


async def stop_task(task: asyncio.Task[object], what: str, patience_s: float = 10.0) -> None:
    """Cancel `task` until it is done (at most `patience_s`); log what it raised, or that it did not stop."""
    deadline = time.monotonic() + patience_s
    while not task.done() and time.monotonic() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.done():
        logger.warning("%s did not stop within %.0fs; leaving it", what, patience_s)
    elif not task.cancelled() and task.exception() is not None:
        logger.warning("%s had failed: %s", what, task.exception())
