"""Offline evaluation: ranking metrics, a popularity baseline and the recall of the ANN index.

A recommender is any `recommend_fn(user_indices [B] int32, contexts [B, L] int32, k) -> [B, k] int32` of
1-based item indices, best first, 0 where it has fewer than k; the full pipeline and the baseline are
measured through the same function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from recserve.training.data import Examples

RecommendFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
EVAL_BATCH_SIZE = 256


def recall_at_k(recommended: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """Share of rows whose one held-out target is among the first `k` recommendations (the hit rate)."""
    if len(targets) == 0:
        return 0.0
    return float(np.mean(np.any(recommended[:, :k] == targets[:, None], axis=1)))


def ndcg_at_k(recommended: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per row: `1 / log2(rank + 2)` at 0-based rank, 0 when missed."""
    if len(targets) == 0:
        return 0.0
    hits = recommended[:, :k] == targets[:, None]
    gains = np.where(hits, 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)[None, :], 0.0)
    return float(np.mean(gains.sum(axis=1)))


def sample_cases(cases: Examples, count: int, seed: int) -> Examples:
    """At most `count` cases drawn without replacement, in their original order."""
    if len(cases) <= count:
        return cases
    rows = np.sort(np.random.default_rng(seed).choice(len(cases), size=count, replace=False))
    return cases.take(rows)


def evaluate_recommender(
    recommend_fn: RecommendFn, cases: Examples, k: int = 10, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float]:
    """`recall@k` and `ndcg@k` of `recommend_fn` predicting each case's target from its user and context."""
    recommended = np.concatenate(
        [
            np.asarray(
                recommend_fn(cases.user_indices[s : s + batch_size], cases.contexts[s : s + batch_size], k)
            )
            for s in range(0, len(cases), batch_size)
        ]
    ).reshape(len(cases), k)
    return {
        f"recall@{k}": recall_at_k(recommended, cases.targets, k),
        f"ndcg@{k}": ndcg_at_k(recommended, cases.targets, k),
    }


def popularity_recommender(item_popularity: np.ndarray) -> RecommendFn:
    """The baseline: the most popular items (by training interactions), skipping the user's context items."""
    ranked = (np.argsort(-item_popularity, kind="stable") + 1).astype(np.int32)

    def recommend(user_indices: np.ndarray, contexts: np.ndarray, k: int) -> np.ndarray:
        pool = ranked[: k + contexts.shape[1]]
        seen = np.any(pool[None, :, None] == contexts[:, None, :], axis=2)
        # Stable sort puts unseen items first and keeps their popularity order.
        order = np.argsort(seen, axis=1, kind="stable")[:, :k]
        return pool[order]

    return recommend


@dataclass(frozen=True)
class AnnRecall:
    """How well the index approximates exact cosine search at one `search_k`."""

    recall: float
    ms_per_query: float
    search_k: int
    n_trees: int


def ann_recall_at_k(
    index: Path | AnnoyIndex,
    item_embeddings: np.ndarray,
    k: int = 100,
    search_k: int = -1,
    n_queries: int = 500,
    queries: np.ndarray | None = None,
    seed: int = 0,
) -> AnnRecall:
    """Share of the exact top-`k` items by cosine that the Annoy index returns, averaged over queries.

    Queries are `queries` (e.g. user embeddings, the real query distribution) or, when None, the
    embeddings of `n_queries` random items. `index` is an index or the path of an angular index over
    `item_embeddings` (Annoy id `r` = row `r`).
    """
    if isinstance(index, Path | str):
        loaded = AnnoyIndex(item_embeddings.shape[1], "angular")
        loaded.load(str(index))
        index = loaded
    rng = np.random.default_rng(seed)
    if queries is None:
        queries = item_embeddings[rng.choice(len(item_embeddings), size=min(n_queries, len(item_embeddings)))]
    queries = queries[:n_queries]
    exact = exact_top_k(queries, item_embeddings, k)
    start = time.perf_counter()
    approximate = [index.get_nns_by_vector(query, k, search_k) for query in queries]
    elapsed = time.perf_counter() - start
    found = [np.intersect1d(a, e, assume_unique=True).size for a, e in zip(approximate, exact, strict=True)]
    return AnnRecall(
        recall=float(np.sum(found) / exact.size),
        ms_per_query=1000.0 * elapsed / max(1, len(queries)),
        search_k=search_k,
        n_trees=index.get_n_trees(),
    )


def exact_top_k(queries: np.ndarray, item_embeddings: np.ndarray, k: int) -> np.ndarray:
    """Rows (0-based) of the `k` items of highest cosine to each unit query, [Q, k], unordered."""
    k = min(k, len(item_embeddings))
    parts = []
    for start in range(0, len(queries), 256):  # bounded memory at a million items
        scores = queries[start : start + 256].astype(np.float32) @ item_embeddings.T
        parts.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)
