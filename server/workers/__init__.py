"""`recserve serve --workers N`: N server processes on one port, under one supervisor.

One Python process is bound by its GIL to about one core. Workers are whole servers (front end, batcher,
model) that bind the same port with SO_REUSEPORT, so the kernel spreads new connections across them. The
Annoy index is memory-mapped, so every worker shares its pages through the page cache. Live state is shared
through Redis, exactly as between replicas. The supervisor forwards SIGTERM, restarts a worker that dies,
and serves one `/metrics` for all of them (`metrics_export`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WorkerRole:
    """What a server process needs to know to be one worker of several."""

    index: int
    metrics_dir: Path
    """Where this worker writes its metrics for the supervisor's `/metrics`."""
    ready_fd: int | None = None
    """Pipe to the supervisor: one byte once the worker serves (it tells a bad start from a crash)."""

    def report_ready(self) -> None:
        """Tell the supervisor this worker serves; once."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
        except OSError:
            pass  # the supervisor is gone; PR_SET_PDEATHSIG stops this worker
        self.ready_fd = None
