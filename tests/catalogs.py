"""A small live catalog over a real Annoy index, for the catalog and write-path tests."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recserve.server.catalog.live import BaseCatalog
from recserve.server.runtime.ann_index import AnnIndex, build_index

DIMENSION = 16
BASE_ITEMS = 400


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def tag_embedding(model_indices: np.ndarray, tags: Sequence[tuple[str, ...]]) -> np.ndarray:
    """Stands in for the item tower: one fixed direction per tag, averaged (the real one: test_live_state)."""
    vectors = [
        sum(np.random.default_rng(zlib.crc32(tag.encode())).normal(size=DIMENSION) for tag in t) for t in tags
    ]
    return unit(np.array(vectors, dtype=np.float64))


def small_base(tmp_path: Path) -> BaseCatalog:
    embeddings = unit(np.random.default_rng(3).normal(size=(BASE_ITEMS, DIMENSION)))
    build_index(tmp_path / "base.ann", embeddings, n_trees=10, seed=1)
    return BaseCatalog(
        ids=[f"item-{n}" for n in range(1, BASE_ITEMS + 1)],
        embeddings=embeddings,
        tags=[("base",)] * BASE_ITEMS,
        popularity=np.arange(BASE_ITEMS, 0, -1),
        index=AnnIndex(tmp_path / "base.ann", DIMENSION, search_k=4000),  # exact at this size
    )
