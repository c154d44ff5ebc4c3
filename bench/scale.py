"""recserve at 20k, 200k and 1M items: index size and cost, recall, start-up, memory, latency, throughput.

Each size is a built model repository (`recserve build-demo --num-items N --num-users N`). Per size:

- **The index**: its file size, its build time (rebuilt from the version's embeddings with its n_trees, one
  job, as build-demo builds it), and a `search_k` sweep over the built index with real queries (user-tower
  embeddings of held-out demo requests): recall@100 of exact cosine search and ms per query (median of 3
  passes). The chosen `search_k` is the cheapest one with recall@100 >= 0.9 (`RECALL_TARGET`): recall at a
  fixed `search_k` falls as the catalog grows, so each size gets its own.
- **The server** (`recserve serve`, the committed config with that `search_k`): seconds from start to
  health SERVING, RSS and PSS of the process, and, through `recserve loadtest` with Recommend (k = 10,
  2,000 known users), p50 at concurrency 1 and throughput at 64, in interleaved rounds (every size once per
  round, the order reversed every other round), medians.

    .venv/bin/python bench/scale.py --size 20000=models --size 200000=/data/m200k --size 1000000=/data/m1m
"""

from __future__ import annotations

# isort: off
from common import machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from annoy_sweep import build_index, built_config, measure, user_queries
from perf_analyzer import write_inputs
from process_tree import tree_memory_mb
from server_load import ServerProcess, repository_with, run_load, start_server, summarize

from recserve.server.repository import resolve_version_dir
from recserve.server.runtime.tf_model import configure_threads
from recserve.training.evaluate import exact_top_k

SEARCH_K = (1000, 2000, 3000, 5000, 8000, 12000, 20000, 30000, 50000, 80000)
RECALL_TARGET = 0.9
K = 100


def index_figures(repository: Path, queries_count: int) -> dict:
    """The built index's size and its search_k sweep; the chosen search_k."""
    model_dir = repository / "recommender"
    version_dir = resolve_version_dir(model_dir)
    embeddings = np.load(version_dir / "item_embeddings.npy")
    metadata = json.loads((version_dir / "metadata.json").read_text())
    queries = user_queries(version_dir, built_config(model_dir / "config.yaml", metadata), queries_count)
    exact = exact_top_k(queries, embeddings, K)
    index = AnnoyIndex(embeddings.shape[1], "angular")
    index.load(str(version_dir / "items.ann"))
    sweep = []
    for search_k in SEARCH_K:
        recall, ms = measure(index, queries.tolist(), exact, search_k)
        sweep.append({"search_k": search_k, "recall_at_100": recall, "ms_per_query": ms})
        print(json.dumps({"items": len(embeddings), **sweep[-1]}), file=sys.stderr)
        if recall >= RECALL_TARGET + 0.03:
            break  # past the target with margin: larger search_k only costs more
    n_trees = index_trees(metadata) or index.get_n_trees()
    index.unload()
    rebuilt, build_s = build_index(embeddings, n_trees, seed=int(metadata["dataset"].get("seed", 7)))
    rebuilt.unload()
    good = [row for row in sweep if row["recall_at_100"] >= RECALL_TARGET]
    chosen = min(good, key=lambda row: row["ms_per_query"]) if good else sweep[-1]
    return {
        "items": len(embeddings),
        "n_trees": n_trees,
        "index_build_s": build_s,
        "index_mb": (version_dir / "items.ann").stat().st_size / 2**20,
        "version_mb": sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file()) / 2**20,
        "sweep": sweep,
        "chosen": chosen,
    }


def index_trees(metadata: dict) -> int | None:
    """The version's n_trees, where its metadata records it."""
    for section in ("index", "config", "demo"):
        value = metadata.get(section)
        if isinstance(value, dict) and "n_trees" in value:
            return int(value["n_trees"])
    return None


def start_sized(repository: Path, search_k: int, workdir: Path) -> tuple[ServerProcess, float]:
    """The server over `repository` with `search_k`, and its seconds from start to SERVING."""
    started = time.monotonic()
    server = start_server(
        repository_with("retrieval", {"search_k": search_k}, repository, workdir), [], workdir
    )
    return server, time.monotonic() - started


def run(server: ServerProcess, data: Path, concurrency: int, seconds: float) -> dict:
    """One closed-loop run of `recserve loadtest`: throughput and p50/p99 (ms)."""
    return summarize(run_load(server.address, data, concurrency, seconds, use_ghz=False))


def main() -> None:
    """Index figures per size, then every server in interleaved rounds; bench/results/scale.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", action="append", required=True, help="ITEMS=REPOSITORY, once per size")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="one 0.5 s round, 50 queries; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.queries = 0.5, 1, 50
    configure_threads(1, 1)
    sizes = {int(items): Path(path) for items, path in (size.split("=", 1) for size in args.size)}
    workdir = Path(tempfile.mkdtemp(prefix="recserve-scale-"))
    figures = {items: index_figures(repository, args.queries) for items, repository in sizes.items()}
    servers: dict[int, ServerProcess] = {}
    data: dict[int, Path] = {}
    try:
        for items, repository in sizes.items():
            server, start_s = start_sized(repository, figures[items]["chosen"]["search_k"], workdir)
            servers[items] = server
            figures[items]["start_s"] = start_s
            figures[items]["memory_mb"] = tree_memory_mb(server.process.pid)
            (workdir / str(items)).mkdir()
            data[items] = write_inputs(repository, workdir / str(items))[1]
            run(server, data[items], 16, 2)  # warm
        cells: dict[int, list[dict]] = {items: [] for items in sizes}
        order = list(sizes)
        for round_number in range(args.rounds):
            for items in order if round_number % 2 == 0 else order[::-1]:
                one = run(servers[items], data[items], 1, args.seconds)
                busy = run(servers[items], data[items], 64, args.seconds)
                cells[items].append(
                    {"c1_p50_ms": one["p50_ms"], "c64_rps": busy["rps"], "c64_p99_ms": busy["p99_ms"]}
                )
                print(json.dumps({"items": items, **cells[items][-1]}), file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for items in sizes:
        runs = cells[items]
        rows.append({**figures[items], **{key: median([r[key] for r in runs]) for key in runs[0]}})
    for row in rows:
        print(
            f"{row['items']:>9,} items: search_k {row['chosen']['search_k']} (recall@100 "
            f"{row['chosen']['recall_at_100']:.3f}, {row['chosen']['ms_per_query']:.2f} ms), index "
            f"{row['index_mb']:.0f} MB, start {row['start_s']:.1f} s, RSS {row['memory_mb']['rss']:.0f} MB, "
            f"c=1 p50 {row['c1_p50_ms']:.2f} ms, c=64 {row['c64_rps']:.0f}/s"
        )
    if not args.smoke:
        payload = {"machine": machine_note(), "seconds": args.seconds, "rounds": args.rounds, "rows": rows}
        write_result("scale", payload)


if __name__ == "__main__":
    main()
