"""Shared helpers for the benchmarks: thread settings, the model under test, medians, result files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

# Set before numpy/TensorFlow load, exactly as `recserve serve` does (server/cli.py: THREAD_ENVIRONMENT and
# QUIET_TENSORFLOW), so that in-process figures (the pipeline ceiling) run the server's kernels: without
# TF_ENABLE_ONEDNN_OPTS=0 here they ran TensorFlow's oneDNN kernels, which the server turns off.
for _name, _value in {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_REPOSITORY = REPO_ROOT / "models"


def median(values: list[float]) -> float:
    """The median (the machines are noisy; means are not reported)."""
    return statistics.median(values)


def load_result(name: str) -> dict[str, Any] | None:
    """One benchmark's results (bench/results/<name>.json), or None if it has not run."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Store raw results as JSON under bench/results/ (not committed) for docs and plots."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def machine_note() -> str:
    """CPU count and model name, for the tables."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"
