"""The ceiling: the in-process pipeline (no RPC, no batcher) at batch sizes 1…512.

Prints, per batch size: rows/s, ms per batch, and ms per batch in each stage (user tower, ANN lookups,
ranker). Medians over repeated batches.

    .venv/bin/python bench/pipeline_ceiling.py [--model-repository models] [--seconds 2]

`--json` prints the rows as one JSON list and writes no result: bench/server_load.py runs it between its
server runs, so that the server's share of the ceiling compares measurements taken minutes, not half an
hour, apart on this noisy machine.
"""

from __future__ import annotations

# isort: off
from common import (
    DEFAULT_REPOSITORY,
    machine_note,
    median,
    write_result,
)  # first: sets thread limits before numpy loads

# isort: on

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from recserve.server.catalog.from_model import live_catalog
from recserve.server.context import UserQuery
from recserve.server.pipeline import STAGES, BatchPipeline, RecommendQuery
from recserve.server.repository import load_model, resolve_version_dir
from recserve.server.runtime.tf_model import configure_threads
from recserve.server.settings import load_model_config

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def make_queries(pipeline: BatchPipeline, size: int, rng: np.random.Generator) -> list[RecommendQuery]:
    """Realistic queries: known users, 0-5 recent items each, k=10, recent items excluded."""
    model = pipeline.model
    queries = []
    for _ in range(size):
        context = rng.integers(1, len(model.items) + 1, size=rng.integers(0, 6)).astype(np.int32)
        index = int(rng.integers(1, len(model.users) + 1))
        user = UserQuery(model.users.ids[index - 1], index, context, use_history=False)
        queries.append(RecommendQuery(user, 10, np.unique(context)))
    return queries


def run_batches(
    pipeline: BatchPipeline, batches: list[list[RecommendQuery]], until: float | threading.Event
) -> tuple[list[float], dict[str, list[float]]]:
    """Run `batches` round robin for `until` seconds (or until the event is set), at least 5: ms of each
    batch, total and by stage."""
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    deadline = time.perf_counter() + until if isinstance(until, float) else 0.0

    def going() -> bool:
        return not until.is_set() if isinstance(until, threading.Event) else time.perf_counter() < deadline

    while len(totals) < 5 or going():
        before = {stage: pipeline.stages[stage].compute_duration_ns for stage in STAGES}
        started = time.perf_counter_ns()
        pipeline.run_batch(batches[len(totals) % len(batches)])
        totals.append((time.perf_counter_ns() - started) / 1e6)
        for stage in STAGES:
            per_stage[stage].append((pipeline.stages[stage].compute_duration_ns - before[stage]) / 1e6)
    return totals, per_stage


def measure(pipeline: BatchPipeline, size: int, seconds: float, rng: np.random.Generator) -> dict[str, float]:
    """Run batches of `size` for about `seconds`; medians of the per-batch timings."""
    batches = [make_queries(pipeline, size, rng) for _ in range(8)]
    pipeline.run_batch(batches[0])  # warm this shape
    totals, per_stage = run_batches(pipeline, batches, float(seconds))
    ms = median(totals)
    return {
        "batch_size": size,
        "ms_per_batch": ms,
        "rows_per_s": size / ms * 1000,
        **{f"{stage}_ms": median(per_stage[stage]) for stage in STAGES},
    }


def main() -> None:
    """Run the sweep and print a markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model-name", default="recommender")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON; write no result")
    args = parser.parse_args()
    configure_threads(1, 1)
    model_dir = args.model_repository / args.model_name
    config = load_model_config(model_dir)
    model = load_model(resolve_version_dir(model_dir), config.retrieval.search_k)
    pipeline = BatchPipeline(
        model, live_catalog(model, config.retrieval.exact_search_max_items), config.retrieval, config.limits
    )
    rng = np.random.default_rng(0)
    rows = [measure(pipeline, size, args.seconds, rng) for size in args.batch_sizes]
    if args.json:
        print(json.dumps(rows))
        return
    print(
        f"Pipeline ceiling, one batch thread + {config.retrieval.ann_threads} ANN threads, {machine_note()}; medians per batch"
    )
    print("| batch | rows/s | ms/batch | user tower ms | ANN ms | ranker ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['batch_size']} | {row['rows_per_s']:.0f} | {row['ms_per_batch']:.2f} | {row['user_tower_ms']:.2f} "
            f"| {row['ann_ms']:.2f} | {row['ranker_ms']:.2f} |"
        )
    write_result(
        "pipeline_ceiling",
        {"machine": machine_note(), "ann_threads": config.retrieval.ann_threads, "rows": rows},
    )


if __name__ == "__main__":
    main()
