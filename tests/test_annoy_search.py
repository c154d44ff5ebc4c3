"""The native batched lookups (`recserve.native._annoy_search`) against Annoy's own search."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from recserve.native import load_extension
from recserve.server.runtime.ann_index import AnnIndex, build_index

annoy_search = load_extension("annoy_search")  # built with the package: a missing one fails, never skips
FloatIndex = tuple[Path, np.ndarray, np.ndarray]


def annoy_ids(
    path: Path, dimension: int, queries: np.ndarray, counts: list[int], search_k: int
) -> list[list[int]]:
    index = AnnoyIndex(dimension, "angular")
    index.load(str(path))
    try:
        pairs = zip(queries, counts, strict=True)
        return [index.get_nns_by_vector(query, count, search_k) for query, count in pairs]
    finally:
        index.unload()


def native_ids(forest: object, queries: np.ndarray, counts: list[int], search_k: int) -> list[list[int]]:
    ids, lengths = forest.search(queries, np.array(counts, dtype=np.int32), search_k)
    return [ids[row, :length].tolist() for row, length in enumerate(lengths)]


@pytest.fixture(scope="module")
def integer_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Small-integer vectors: every dot product and norm is exact in float32, so no rounding can differ."""
    rng = np.random.default_rng(3)
    embeddings = rng.integers(-4, 5, size=(1500, 12)).astype(np.float32)
    embeddings[embeddings.sum(axis=1) == 0, 0] = 1  # no zero vector
    path = tmp_path_factory.mktemp("integer") / "items.ann"
    build_index(path, embeddings, n_trees=8, seed=1)
    return path, rng.integers(-4, 5, size=(100, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def float_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(4000, 32)).astype(np.float32)
    path = tmp_path_factory.mktemp("float") / "items.ann"
    build_index(path, embeddings, n_trees=16, seed=2)
    queries = embeddings[rng.integers(0, 4000, 200)] + rng.normal(0, 0.3, (200, 32)).astype(np.float32)
    return path, embeddings, queries


def test_exhaustive_search_answers_exactly_what_annoy_answers(integer_index: tuple[Path, np.ndarray]) -> None:
    path, queries = integer_index
    forest = annoy_search.AnnoyForest(str(path), 12)
    assert (forest.n_items, forest.n_trees) == (1500, 8)
    counts = [1, 10, 100, 1500, 2000] * 20  # beyond the item count: every item once
    everything = 10**8
    assert native_ids(forest, queries, counts, everything) == annoy_ids(path, 12, queries, counts, everything)


@pytest.mark.parametrize("search_k", [-1, 40, 400, 3000])
def test_bounded_search_visits_what_annoy_visits(float_index: FloatIndex, search_k: int) -> None:
    path, _, queries = float_index
    forest = annoy_search.AnnoyForest(str(path), 32)
    counts = [100] * len(queries)
    ours = native_ids(forest, queries, counts, search_k)
    theirs = annoy_ids(path, 32, queries, counts, search_k)
    # The walk is Annoy's; only the last bit of a dot product may round otherwise (SIMD width), and that can
    # only reorder near-equal branches.
    identical = sum(mine == annoy for mine, annoy in zip(ours, theirs, strict=True))
    assert identical >= 0.95 * len(queries), (search_k, identical)
    overlap = np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(ours, theirs, strict=True)])
    assert overlap >= 0.99, (search_k, overlap)


def test_answers_rows_of_different_counts_and_empty_batches(float_index: FloatIndex) -> None:
    path, _, queries = float_index
    forest = annoy_search.AnnoyForest(str(path), 32)
    ids, lengths = forest.search(queries[:3], np.array([0, 5, 50], dtype=np.int32), 3000)
    assert ids.shape == (3, 50) and lengths.tolist() == [0, 5, 50]
    assert ids[1, :5].tolist() == native_ids(forest, queries[1:2], [50], 3000)[0][:5]
    ids, lengths = forest.search(np.zeros((0, 32), dtype=np.float32), np.zeros(0, dtype=np.int32), 3000)
    assert ids.shape == (0, 0) and lengths.size == 0


def test_refuses_bad_arguments_and_files(float_index: FloatIndex, tmp_path: Path) -> None:
    path, _, queries = float_index
    forest = annoy_search.AnnoyForest(str(path), 32)
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        forest.search(queries[:, :16], np.array([10] * len(queries), dtype=np.int32), 100)
    with pytest.raises(ValueError, match="one count per query"):
        forest.search(queries, np.array([10], dtype=np.int32), 100)
    with pytest.raises(ValueError, match="negative"):
        forest.search(queries[:1], np.array([-1], dtype=np.int32), 100)
    with pytest.raises(RuntimeError, match="not an Annoy index of dimension 31"):
        annoy_search.AnnoyForest(str(path), 31)
    with pytest.raises(FileNotFoundError, match="missing.ann"):
        annoy_search.AnnoyForest(str(tmp_path / "missing.ann"), 32)
    (tmp_path / "empty.ann").write_bytes(b"")
    with pytest.raises(RuntimeError, match="not an Annoy index"):
        annoy_search.AnnoyForest(str(tmp_path / "empty.ann"), 32)
    forest.close()
    with pytest.raises(RuntimeError, match="closed"):
        forest.search(queries[:1], np.array([10], dtype=np.int32), 100)


def test_a_damaged_index_answers_without_reading_past_the_file(
    float_index: FloatIndex, tmp_path: Path
) -> None:
    path, _, queries = float_index
    damaged = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for offset in rng.integers(0, len(damaged) - 4, 2000):  # random bytes over node headers and vectors
        damaged[offset : offset + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.ann").write_bytes(bytes(damaged))
    try:
        forest = annoy_search.AnnoyForest(str(tmp_path / "damaged.ann"), 32)
    except RuntimeError:
        return  # the roots no longer make sense: refused at open, which is fine too
    ids, lengths = forest.search(queries, np.array([100] * len(queries), dtype=np.int32), 3000)
    assert all(0 <= ids[row, :length].min(initial=0) for row, length in enumerate(lengths))
    assert ((ids < forest.n_items) | (np.arange(ids.shape[1]) >= lengths[:, None])).all()


def test_lookups_let_other_threads_run(float_index: FloatIndex) -> None:
    """The whole call runs without the GIL: Python on another thread keeps running meanwhile.

    Holding the GIL would stop the main thread for the whole call (C code never hands it over), leaving one
    gap between its ticks as long as the call.
    """
    path, _, queries = float_index
    forest = annoy_search.AnnoyForest(str(path), 32)
    many = np.repeat(queries, 5, axis=0)
    counts = np.full(len(many), 100, dtype=np.int32)
    thread = threading.Thread(target=forest.search, args=(many, counts, -2))  # no limit: every leaf, long
    started = time.perf_counter()
    thread.start()
    ticks = [started]
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    took = ticks[-1] - started
    assert took > 0.2, "the call was too short to tell"
    assert max(np.diff(ticks)) < 0.5 * took, "the main thread stopped while the lookups ran"


def test_ann_index_lookups_match_annoy(float_index: FloatIndex) -> None:
    path, _, queries = float_index
    index = AnnIndex(path, 32, search_k=-1)
    counts = np.array([7, 30] * (len(queries) // 2), dtype=np.int32)
    batched = index.nearest_ids(queries, counts)
    assert [ids.dtype for ids in batched[:1]] == [np.int32]
    assert [len(ids) for ids in batched] == counts.tolist()
    assert index.nearest_ids_to_vector(queries[3], 30).tolist() == batched[3].tolist()
    index.unload()


def test_a_damaged_index_whose_nodes_lead_back_up_still_ends(float_index: FloatIndex, tmp_path: Path) -> None:
    """Every split node's children pointed at the root: without a bound the walk would never end."""
    path, _, queries = float_index
    nodes = np.frombuffer(path.read_bytes(), dtype=np.int32).reshape(-1, 3 + 32).copy()
    root = len(nodes) - 1
    splits = nodes[:, 0] > 34  # more descendants than a node lists: a split node
    nodes[splits, 1:3] = root
    (tmp_path / "cyclic.ann").write_bytes(nodes.tobytes())
    forest = annoy_search.AnnoyForest(str(tmp_path / "cyclic.ann"), 32)
    ids, lengths = forest.search(queries[:4], np.array([100] * 4, dtype=np.int32), 10**6)
    assert (lengths <= 100).all()
