"""One worker process: `python -m recserve.server.workers.worker`, its settings as JSON on stdin.

The supervisor starts it; it dies with the supervisor (PR_SET_PDEATHSIG) so no worker outlives a killed
supervisor holding the port.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
logger = logging.getLogger(__name__)


def main() -> int:
    """Run one worker until SIGTERM; 2 when it cannot serve (before any worker has: the supervisor stops)."""
    spec = json.loads(sys.stdin.read())
    _die_with_parent(spec["supervisor_pid"])
    from recserve.server.settings import ServerSettings
    from recserve.server.telemetry.logs import configure_logging
    from recserve.server.workers import WorkerRole

    settings = ServerSettings.model_validate(spec["settings"])
    role = WorkerRole(spec["index"], Path(spec["metrics_dir"]), spec["ready_fd"])
    configure_logging(settings.log_level, settings.log_format, worker=role.index)
    from recserve.server.app import run
    from recserve.server.exceptions import StartupError

    try:
        run(settings, role)
    except StartupError as error:
        logger.error("%s", error)
        return 2
    except Exception:  # noqa: BLE001 - serve() logged why the model could not serve
        return 2
    return 0


def _die_with_parent(supervisor_pid: int) -> None:
    """SIGTERM this process when the supervisor exits, however it exits (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
