"""The live delta at a large catalog: what exact search beside the index costs as it grows, and a rebuild.

Items upserted since the index was built are searched exactly, one matrix product per batch
(docs/live-state.md), until `retrieval.rebuild_delta_items` of them trigger a rebuild in a child process.
This measures both on one model version, in process (no RPC, no batcher), through the server's own code:

1. **Delta cost**: batches of 64 Recommend queries through `BatchPipeline.run_batch` with 0, 1k, 5k, 20k
   and 100k upserted items (embedded by the version's item tower, committed as the write path does),
   ms per batch and per stage, medians; the delta's share is the ANN stage's growth over delta 0.
2. **Rebuild**: the index over every live row (base + the largest delta) built by `build_in_child`, as the
   server's background rebuild does (idle priority, no TensorFlow), timed; batch latency while it runs
   against before, on the same 2 cores; the time to open and swap in the new index.

    .venv/bin/python bench/delta_scale.py --model-repository /data/m1m
"""

from __future__ import annotations

# isort: off
from common import machine_note, median, write_result  # first: sets thread limits before numpy loads

# isort: on

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pipeline_ceiling import make_queries, run_batches

from recserve.server.catalog.from_model import live_catalog
from recserve.server.catalog.live import LiveCatalog
from recserve.server.pipeline import BatchPipeline
from recserve.server.repository import load_model, resolve_version_dir
from recserve.server.runtime.ann_index import AnnIndex
from recserve.server.runtime.index_build import build_in_child
from recserve.server.runtime.tf_model import configure_threads
from recserve.server.settings import load_model_config
from recserve.server.state.events import ItemUpsert

DELTAS = (0, 1_000, 5_000, 20_000, 100_000)
BATCH = 64
UPSERT_CHUNK = 10_000  # upserts committed at a time, as a stream of writes would arrive


def grow_delta(catalog: LiveCatalog, tag_ids: list[str], target: int, rng: np.random.Generator) -> None:
    """Upsert new items (1-3 random known tags each) until the catalog's delta holds `target` rows."""
    while catalog.delta_size < target:
        count = min(UPSERT_CHUNK, target - catalog.delta_size)
        start = catalog.delta_size
        changes = [
            (
                ItemUpsert(
                    f"new-item-{start + n}",
                    tuple(str(t) for t in rng.choice(tag_ids, rng.integers(1, 4), replace=False)),
                ),
                None,
            )
            for n in range(count)
        ]
        catalog.commit(catalog.prepare(changes))


def summary(totals: list[float], per_stage: dict[str, list[float]]) -> dict[str, float]:
    """Median and p99 ms per batch, median ms per stage."""
    return {
        "batches": len(totals),
        "ms_per_batch": median(totals),
        "p99_ms_per_batch": float(np.percentile(totals, 99)),
        **{f"{stage}_ms": median(values) for stage, values in per_stage.items()},
    }


def rebuild_figures(pipeline: BatchPipeline, catalog: LiveCatalog, batches: list, seconds: float) -> dict:
    """A background rebuild over every live row, timed, with batch latency before and during it."""
    before = summary(*run_batches(pipeline, batches, seconds))
    rows, embeddings, covered_size = catalog.index_snapshot()
    n_trees = pipeline.model.index.n_trees
    with tempfile.TemporaryDirectory(prefix="recserve-delta-scale-") as directory:  # a 1M index: ~700 MB
        path = Path(directory) / "index.ann"
        build_s, during = timed_rebuild(pipeline, batches, embeddings, path, n_trees)
        started = time.perf_counter()
        index = AnnIndex(path, embeddings.shape[1], search_k=pipeline.retrieval.search_k)
        catalog.install_index(index, rows, covered_size)
        swap_s = time.perf_counter() - started
        after = summary(*run_batches(pipeline, batches, seconds))
        index_mb = path.stat().st_size / 2**20
    return {
        "rows": int(rows.size),
        "n_trees": n_trees,
        "build_s": build_s,
        "open_and_swap_s": swap_s,
        "index_mb": index_mb,
        "before": before,
        "during": during,
        "after": after,
    }


def timed_rebuild(
    pipeline: BatchPipeline, batches: list, embeddings: np.ndarray, path: Path, n_trees: int
) -> tuple[float, dict[str, float]]:
    """Build the index in the server's background child while batches run: its seconds, the batches' figures."""
    done = threading.Event()
    timing: dict[str, float] = {}

    def rebuild() -> None:
        started = time.perf_counter()
        try:
            asyncio.run(build_in_child(embeddings, path, n_trees, seed=7))
        finally:
            timing["build_s"] = time.perf_counter() - started
            done.set()

    builder = threading.Thread(target=rebuild)
    builder.start()
    during = summary(*run_batches(pipeline, batches, done))
    builder.join()
    return timing["build_s"], during


def main() -> None:
    """Delta sweep, then the rebuild; prints a table, writes bench/results/delta_scale.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model-name", default="recommender")
    parser.add_argument("--deltas", type=int, nargs="+", default=list(DELTAS))
    parser.add_argument("--seconds", type=float, default=5.0, help="time per delta size")
    parser.add_argument("--search-k", type=int, help="override retrieval.search_k (bench/scale.py's choice)")
    parser.add_argument("--smoke", action="store_true", help="0.3 s per size; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 0.3
    configure_threads(1, 1)
    model_dir = args.model_repository / args.model_name
    config = load_model_config(model_dir)
    if args.search_k is not None:
        config = config.model_copy(
            update={"retrieval": config.retrieval.model_copy(update={"search_k": args.search_k})}
        )
    model = load_model(resolve_version_dir(model_dir), config.retrieval.search_k)
    catalog = live_catalog(model)
    pipeline = BatchPipeline(model, catalog, config.retrieval, config.limits)
    rng = np.random.default_rng(0)
    batches = [make_queries(pipeline, BATCH, rng) for _ in range(8)]
    pipeline.run_batch(batches[0])  # warm
    tag_ids = list(model.tags.ids)
    rows = []
    for delta in sorted(args.deltas):
        started = time.perf_counter()
        grow_delta(catalog, tag_ids, delta, rng)
        upsert_s = time.perf_counter() - started
        rows.append(
            {"delta": delta, "upsert_s": upsert_s, **summary(*run_batches(pipeline, batches, args.seconds))}
        )
        print(
            f"delta {delta:>7,}: {rows[-1]['ms_per_batch']:.2f} ms per batch of {BATCH} "
            f"(ANN stage {rows[-1]['ann_ms']:.2f} ms), p99 {rows[-1]['p99_ms_per_batch']:.2f} ms",
            file=sys.stderr,
        )
    rebuild = rebuild_figures(pipeline, catalog, batches, args.seconds)
    pipeline.close()
    items = len(model.items)
    print(
        f"Live delta over {items:,} items, search_k {config.retrieval.search_k}, batches of {BATCH}, {machine_note()}"
    )
    print("| delta items | ms per batch | ANN stage ms | ANN growth over delta 0 | p99 ms per batch |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        growth = row["ann_ms"] - rows[0]["ann_ms"]
        print(
            f"| {row['delta']:,} | {row['ms_per_batch']:.2f} | {row['ann_ms']:.2f} | {growth:+.2f} "
            f"| {row['p99_ms_per_batch']:.2f} |"
        )
    print(
        f"Rebuild over {rebuild['rows']:,} rows ({rebuild['n_trees']} trees): {rebuild['build_s']:.1f} s in the "
        f"background, {rebuild['open_and_swap_s'] * 1000:.1f} ms to open and swap in; ms per batch "
        f"{rebuild['before']['ms_per_batch']:.2f} before, {rebuild['during']['ms_per_batch']:.2f} during "
        f"(p99 {rebuild['before']['p99_ms_per_batch']:.2f} / {rebuild['during']['p99_ms_per_batch']:.2f}), "
        f"{rebuild['after']['ms_per_batch']:.2f} after"
    )
    if not args.smoke:
        payload = {
            "machine": machine_note(),
            "items": items,
            "search_k": config.retrieval.search_k,
            "batch": BATCH,
            "rows": rows,
            "rebuild": rebuild,
        }
        write_result("delta_scale", payload)


if __name__ == "__main__":
    main()
