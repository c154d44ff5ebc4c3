"""Building an Annoy index in a child process, so that a rebuild never takes the serving process's GIL.

The parent writes the embeddings to a .npy file and runs `python -m recserve.server.runtime.index_build`,
which imports only numpy and Annoy (no TensorFlow): it starts in a fraction of a second, at idle priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from recserve.server.runtime.ann_index import build_index


async def build_in_child(embeddings: np.ndarray, index_path: Path, n_trees: int, seed: int) -> None:
    """Build the index of `embeddings` into `index_path` in a child process.

    Raises:
        RuntimeError: the child failed (its stderr is in the message).
    """
    source = index_path.with_suffix(".npy")
    command = [sys.executable, "-m", __name__, str(source), str(index_path), str(n_trees), str(seed)]
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, np.save, source, embeddings)
        returncode, stderr = await loop.run_in_executor(None, _run, command)
    finally:
        source.unlink(missing_ok=True)
    if returncode != 0:
        raise RuntimeError(f"index build failed ({returncode}): {stderr.decode(errors='replace')[-2000:]}")


def _run(command: list[str]) -> tuple[int, bytes]:
    """Run the child to its end; on a worker thread, not the event loop.

    subprocess's vfork-based spawn suspends only this thread for a moment; the event loop's own spawn
    (uvloop's fork of the whole serving process) stalled every request in flight for ~27 ms.
    """
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _deprioritize(child.pid)
    _, stderr = child.communicate()
    return child.returncode, stderr


def _deprioritize(pid: int) -> None:
    """Run the child only on CPU time nothing else wants (SCHED_IDLE; else the lowest nice level).

    Set from here, right after the spawn, so that its interpreter start and imports run idle too: on a
    busy machine serving keeps the cores and the build takes what is left (it finishes later, requests
    do not wait).
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def main(argv: list[str]) -> None:
    """Child entry point: embeddings.npy index.ann n_trees seed."""
    source, target, n_trees, seed = argv
    build_index(Path(target), np.load(source), int(n_trees), int(seed))


if __name__ == "__main__":
    main(sys.argv[1:])
