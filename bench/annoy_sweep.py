"""Annoy settings against recall@100 of exact search and cost per query, on the demo model's embeddings.

Queries are real user-tower embeddings of held-out demo requests (the distribution the server sees), and
the item embeddings are the built version's. For each n_trees an index is built like `build-demo` builds
it; for each search_k: recall@100 against exact cosine top-100, and ms per query (median of 3 passes).

    .venv/bin/python bench/annoy_sweep.py [--model-repository models] [--queries 1000]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from recserve.server.repository import resolve_version_dir
from recserve.server.runtime.tf_model import SignatureRunner, configure_threads
from recserve.server.settings import load_model_config
from recserve.training.build import training_data
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.embed import gather_embeddings
from recserve.training.evaluate import exact_top_k, sample_cases

N_TREES = (16, 32, 64, 128)
SEARCH_K = (1000, 1500, 2000, 2500, 3000, 4000)
K = 100
# Marked in the table: the cheapest setting that keeps recall@100 at this level (the floor is 0.9).
RECALL_TARGET = 0.93


def built_config(config_path: Path, metadata: dict) -> DemoConfig:
    """The demo settings a version was built with: a large build's sizes were flags, not config.yaml."""
    sizes = {"num_users": metadata["num_users"], "num_items": metadata["num_items"]}
    return load_demo_config(config_path).model_copy(update={**sizes, "seed": metadata["dataset"]["seed"]})


def configured_setting(model_dir: Path, metadata: dict) -> dict:
    """The n_trees the version was built with and the search_k the server uses on it."""
    retrieval = load_model_config(model_dir).retrieval
    return {"n_trees": metadata["index"]["n_trees"], "search_k": retrieval.search_k}


def user_queries(version_dir: Path, config: DemoConfig, count: int) -> np.ndarray:
    """User-tower embeddings of `count` held-out requests (user + recent items) of `config`'s demo data."""
    cases = sample_cases(training_data(config).split.test, count, seed=1)
    tower = SignatureRunner(version_dir / "user_tower")
    recent = gather_embeddings(np.load(version_dir / "item_embeddings.npy"), cases.contexts)
    return tower(user_index=cases.user_indices, recent_item_embeddings=recent)["embedding"]


def build_index(embeddings: np.ndarray, n_trees: int, seed: int) -> tuple[AnnoyIndex, float]:
    """An angular index as build-demo makes it, and its build time."""
    index = AnnoyIndex(embeddings.shape[1], "angular")
    index.set_seed(seed)
    for row, vector in enumerate(embeddings):
        index.add_item(row, vector)
    started = time.perf_counter()
    index.build(n_trees, n_jobs=1)
    return index, time.perf_counter() - started


def measure(
    index: AnnoyIndex, queries: list[list[float]], exact: np.ndarray, search_k: int
) -> tuple[float, float]:
    """(recall@K, median ms per query)."""
    timings, found = [], []
    for _ in range(3):
        started = time.perf_counter()
        found = [index.get_nns_by_vector(query, K, search_k) for query in queries]
        timings.append((time.perf_counter() - started) / len(queries) * 1000)
    hits = sum(np.intersect1d(got, want).size for got, want in zip(found, exact, strict=True))
    return hits / exact.size, median(timings)


def main() -> None:
    """Sweep and print a markdown table; mark the cheapest setting with recall >= RECALL_TARGET."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model-name", default="recommender")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--n-trees", type=int, nargs="+", default=list(N_TREES))
    parser.add_argument("--search-k", type=int, nargs="+", default=list(SEARCH_K))
    parser.add_argument("--recall-target", type=float, default=RECALL_TARGET, help="marks the cheapest at it")
    parser.add_argument("--result", default="annoy_sweep", help="name of the result file (bench/results/)")
    args = parser.parse_args()
    configure_threads(1, 1)
    model_dir = args.model_repository / args.model_name
    version_dir = resolve_version_dir(model_dir)
    embeddings = np.load(version_dir / "item_embeddings.npy")
    metadata = json.loads((version_dir / "metadata.json").read_text())
    queries = user_queries(version_dir, built_config(model_dir / "config.yaml", metadata), args.queries)
    exact = exact_top_k(queries, embeddings, K)
    query_lists = queries.tolist()
    rows = []
    for n_trees in args.n_trees:
        index, build_s = build_index(embeddings, n_trees, seed=7)
        for search_k in args.search_k:
            recall, ms = measure(index, query_lists, exact, search_k)
            rows.append(
                {
                    "n_trees": n_trees,
                    "search_k": search_k,
                    "recall_at_100": recall,
                    "ms_per_query": ms,
                    "build_s": build_s,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
        index.unload()
    good = [row for row in rows if row["recall_at_100"] >= args.recall_target]
    choice = min(good, key=lambda row: row["ms_per_query"]) if good else None
    print(
        f"Annoy on {len(embeddings)} items x {embeddings.shape[1]} dims, {len(queries)} user queries, "
        f"top-{K}; {machine_note()}"
    )
    print("| n_trees | search_k | recall@100 | ms/query | build s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        mark = f" **(cheapest at >= {args.recall_target:g})**" if row is choice else ""
        print(
            f"| {row['n_trees']} | {row['search_k']} | {row['recall_at_100']:.3f}{mark} | {row['ms_per_query']:.3f} "
            f"| {row['build_s']:.1f} |"
        )
    write_result(
        args.result,
        {
            "machine": machine_note(),
            "items": len(embeddings),
            "queries": len(queries),
            "rows": rows,
            "recall_target": args.recall_target,
            "choice": choice,
            "configured": configured_setting(model_dir, metadata),
        },
    )


if __name__ == "__main__":
    main()
