"""Exact search of a small catalog against the Annoy index: what retrieval costs, what it finds, what it serves.

`retrieval.exact_search_max_items` searches a catalog of at most that many live items exactly: one matrix
product of the batch's user embeddings with every item embedding, and a partial sort per query. Its cost
grows with the catalog, Annoy's with `search_k`, so there is a size below which exact search is cheaper and
finds the true top candidates. Three measurements, side by side:

1. **retrieval alone, by catalog size** (in process, `CatalogView.retrieve`, 100 candidates per query, as
   Recommend asks): the demo model's item embeddings (20,000) and catalogs of 50,000 to 200,000 made of
   them plus noise; real user-tower queries; exact against Annoy (32 trees, the committed `search_k`, the
   server's 2 lookup threads) at batches of 1 and 64: ms per batch, CPU per query, Annoy's recall@100;
2. **the pipeline ceiling** (`bench/pipeline_ceiling.py`, its own process) at batches 1 and 64, committed
   config against exact;
3. **served**: `recserve serve` with the committed config and with exact search, Recommend at c=1/64/128
   through `recserve loadtest`, interleaved rounds (the order reversed every other round), medians.

    .venv/bin/python bench/exact_search.py [--rounds 3] [--seconds 6] [--sizes 20000 50000 100000 200000]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import json
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from annoy_sweep import built_config, user_queries
from server_load import ceiling_rows, measure_cell, repository_with, request_data, start_server

from recserve.server.catalog.live import BaseCatalog, LiveCatalog
from recserve.server.catalog.view import CatalogView, Retrieval, spread_over
from recserve.server.repository import resolve_version_dir
from recserve.server.runtime.ann_index import AnnIndex, build_index
from recserve.server.settings import load_model_config

SIZES = (20_000, 50_000, 100_000, 200_000)
BATCHES = (1, 64)
CANDIDATES = 100
N_TREES = 32
ANN_THREADS = 2
CONCURRENCY = (1, 64, 128)
EXACT = {"exact_search_max_items": 50_000}
NOISE = 0.3  # per dimension, against unit vectors: copies of an item spread around it


def cpu_seconds() -> float:
    """This process's CPU time, every thread's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def catalog_of(embeddings: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` unit item embeddings: the model's, then noisy copies of them (a larger catalog like it)."""
    copies = embeddings[rng.integers(0, len(embeddings), size - len(embeddings))]
    noisy = copies + rng.normal(scale=NOISE / np.sqrt(embeddings.shape[1]), size=copies.shape)
    grown = np.concatenate([embeddings, noisy]).astype(np.float32)
    return grown / np.linalg.norm(grown, axis=1, keepdims=True)


def view_of(embeddings: np.ndarray, index: AnnIndex, exact: bool) -> CatalogView:
    """A catalog of `embeddings` (Annoy id r is row r + 1), searched exactly or through `index`."""
    base = BaseCatalog(
        ids=[f"i{n}" for n in range(1, len(embeddings) + 1)],
        embeddings=embeddings,
        tags=[()] * len(embeddings),
        popularity=np.zeros(len(embeddings)),
        index=index,
    )
    return LiveCatalog(base, lambda *_: np.zeros(0), len(embeddings) if exact else 0).view()


def time_retrieval(
    view: CatalogView, queries: np.ndarray, batch: int, seconds: float, pool: ThreadPoolExecutor
) -> dict:
    """ms per batch (median) and CPU µs per query of `view.retrieve` over batches of `batch` queries."""

    mapper = spread_over(pool, ANN_THREADS)  # as the server's pipeline spreads a batch's lookups
    requests = [Retrieval(position, CANDIDATES) for position in range(batch)]
    timings, found, done, start = [], [], 0, 0
    cpu_before, deadline = cpu_seconds(), time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(timings) < 5:
        vectors = queries[start : start + batch]
        if len(vectors) < batch:
            start, vectors = 0, queries[:batch]
        started = time.perf_counter()
        rows = view.retrieve(vectors, requests, mapper)
        timings.append((time.perf_counter() - started) * 1000)
        if len(found) < len(queries):
            found.extend(rows)
        start, done = start + batch, done + batch
    return {
        "ms_per_batch": median(timings),
        "cpu_us_per_query": (cpu_seconds() - cpu_before) / done * 1e6,
        "found": found,
    }


def retrieval_by_size(
    version_dir: Path, config_path: Path, sizes: list[int], seconds: float, workdir: Path
) -> list[dict]:
    """Part 1: exact against Annoy per catalog size and batch size."""
    metadata = json.loads((version_dir / "metadata.json").read_text())
    search_k = load_model_config(config_path.parent).retrieval.search_k
    queries = user_queries(version_dir, built_config(config_path, metadata), 640).astype(np.float32)
    item_embeddings = np.load(version_dir / "item_embeddings.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    rows = []
    with ThreadPoolExecutor(ANN_THREADS) as pool:
        for size in sizes:
            embeddings = (
                catalog_of(item_embeddings, size, rng)
                if size > len(item_embeddings)
                else item_embeddings[:size]
            )
            path = workdir / f"items-{size}.ann"
            started = time.perf_counter()
            build_index(path, embeddings, N_TREES, seed=1)
            build_s = time.perf_counter() - started
            index = AnnIndex(path, embeddings.shape[1], search_k=search_k)
            for batch in BATCHES:
                exact = time_retrieval(view_of(embeddings, index, True), queries, batch, seconds, pool)
                annoy = time_retrieval(view_of(embeddings, index, False), queries, batch, seconds, pool)
                # the same queries in the same order; the two may have run different numbers of batches
                pairs = list(zip(annoy.pop("found"), exact.pop("found"), strict=False))
                recall = sum(np.intersect1d(a, e).size for a, e in pairs) / sum(e.size for _, e in pairs)
                row = {
                    "items": size,
                    "batch": batch,
                    "search_k": search_k,
                    "build_s": build_s,
                    "annoy_recall_at_100": recall,
                    **{f"exact_{key}": value for key, value in exact.items()},
                    **{f"annoy_{key}": value for key, value in annoy.items()},
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
            index.unload()
    return rows


def ceiling(repository: Path, seconds: float) -> list[dict]:
    """Part 2: the in-process pipeline at batches 1 and 64 (its own process)."""
    return ceiling_rows(repository, [str(batch) for batch in BATCHES], seconds)


def served(repositories: dict[str, Path], args: argparse.Namespace, workdir: Path) -> dict:
    """Parts 2 and 3, interleaved: per round, each config's ceiling, then each server at every concurrency."""
    data_file = workdir / "requests.json"
    data_file.write_text(json.dumps(request_data(args.model_repository)))
    cells: dict[str, dict[int, list[dict]]] = {
        name: {c: [] for c in args.concurrency} for name in repositories
    }
    ceilings: dict[str, list[list[dict]]] = {name: [] for name in repositories}
    servers = {name: start_server(repo, [], workdir) for name, repo in repositories.items()}
    try:
        for round_number in range(args.rounds):
            order = list(repositories) if round_number % 2 == 0 else list(reversed(repositories))
            for name in order:
                ceilings[name].append(ceiling(repositories[name], args.ceiling_seconds))
            for concurrency in args.concurrency:
                for name in order:
                    cell = measure_cell(servers[name], data_file, concurrency, args.seconds, use_ghz=False)
                    cells[name][concurrency].append(cell)
                    print(name, concurrency, json.dumps({k: cell[k] for k in ("rps", "p50_ms", "p99_ms")}))
    finally:
        for server in servers.values():
            server.stop()
    return {
        name: {
            "ceiling": {
                str(batch): median([rows[i]["rows_per_s"] for rows in ceilings[name]])
                for i, batch in enumerate(BATCHES)
            },
            "ceiling_ms": {
                str(batch): median([rows[i]["ms_per_batch"] for rows in ceilings[name]])
                for i, batch in enumerate(BATCHES)
            },
            "load": {
                str(c): {key: median([cell[key] for cell in cells[name][c]]) for key in cells[name][c][0]}
                for c in args.concurrency
            },
        }
        for name in repositories
    }


def main() -> None:
    """Measure all three parts and write bench/results/exact_search.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--result", default="exact_search", help="name of the result file (bench/results/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per load cell")
    parser.add_argument("--retrieval-seconds", type=float, default=2.0, help="per retrieval cell")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="catalog sizes (part 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="per ceiling batch size")
    args = parser.parse_args()
    model_dir = args.model_repository / "recommender"
    version_dir = resolve_version_dir(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        by_size = retrieval_by_size(
            version_dir, model_dir / "config.yaml", args.sizes, args.retrieval_seconds, workdir
        )
        repositories = {
            "annoy": args.model_repository,
            "exact": repository_with("retrieval", EXACT, args.model_repository, workdir),
        }
        serving = served(repositories, args, workdir)
    result = {
        "machine": machine_note(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "exact_search_max_items": EXACT["exact_search_max_items"],
        "by_size": by_size,
        "served": serving,
    }
    print("results:", write_result(args.result, result))


if __name__ == "__main__":
    main()
