"""Building an Annoy index in a child process, so that a rebuild never takes the serving process's GIL.

The parent writes the embeddings to a .npy file and awaits `python -m recserve.server.runtime.index_build`,
which imports only numpy and Annoy (no TensorFlow): it starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    await asyncio.get_running_loop().run_in_executor(None, np.save, source, embeddings)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, str(source), str(index_path), str(n_trees), str(seed),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _deprioritize(child.pid)
        _, stderr = await child.communicate()
    finally:
        source.unlink(missing_ok=True)
    if child.returncode != 0:
        raise RuntimeError(
            f"index build failed ({child.returncode}): {stderr.decode(errors='replace')[-2000:]}"
        )


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
