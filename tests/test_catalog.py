"""The live catalog over a real Annoy index: upserts found at once, deletes never returned, rebuilds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recserve.server.catalog import view as view_module
from recserve.server.catalog.live import BaseCatalog, LiveCatalog
from recserve.server.catalog.rebuild import INDEX_DIR_PREFIX, IndexRebuilder, RebuildPolicy, index_directory
from recserve.server.catalog.view import Retrieval, on_this_thread
from recserve.server.runtime.ann_index import AnnIndex
from recserve.server.state.events import ItemDelete, ItemUpsert
from tests.catalogs import BASE_ITEMS, DIMENSION, small_base, tag_embedding, unit


@pytest.fixture
def base(tmp_path: Path) -> BaseCatalog:
    return small_base(tmp_path)


@pytest.fixture
def catalog(base: BaseCatalog) -> LiveCatalog:
    return LiveCatalog(base, tag_embedding)


def commit(
    catalog: LiveCatalog, *changes: ItemUpsert | ItemDelete, version: tuple[int, int] | None = None
) -> int:
    return catalog.commit(catalog.prepare([(change, version) for change in changes]))


def retrieve(
    catalog: LiveCatalog, vector: np.ndarray, wanted: int, excluded: Sequence[int] = ()
) -> list[str]:
    view = catalog.view()
    query = Retrieval(0, wanted, np.array(excluded, dtype=np.int32))
    (rows,) = view.retrieve(vector[None, :], [query], on_this_thread)
    return [view.ids[row] for row in rows]


def test_an_upserted_item_is_found_at_once(catalog: LiveCatalog) -> None:
    vector = tag_embedding(np.zeros(1), [("fresh",)])[0]
    assert "new-1" not in retrieve(catalog, vector, 10)
    assert commit(catalog, ItemUpsert("new-1", ("fresh",))) == 1
    assert retrieve(catalog, vector, 10)[0] == "new-1"
    assert catalog.row_of("new-1") == BASE_ITEMS + 1
    assert catalog.tags_of("new-1") == ("fresh",)


def test_a_deleted_item_is_never_returned_and_k_stays_full(catalog: LiveCatalog, base: BaseCatalog) -> None:
    vector = base.embeddings[0]
    before = retrieve(catalog, vector, 20)
    assert before[0] == "item-1"
    commit(catalog, *(ItemDelete(item) for item in before[:15]))
    after = retrieve(catalog, vector, 20)
    assert len(after) == 20 and not set(after) & set(before[:15])
    assert catalog.row_of("item-1") == 0 and catalog.tags_of("item-1") is None


def test_new_features_replace_the_old_row_and_keep_the_model_index(catalog: LiveCatalog) -> None:
    commit(catalog, ItemUpsert("item-5", ("changed",)))
    row = catalog.row_of("item-5")
    view = catalog.view()
    assert row > BASE_ITEMS and view.model_indices[row] == 5 and not view.live[5]
    assert retrieve(catalog, tag_embedding(np.zeros(1), [("changed",)])[0], 5)[0] == "item-5"
    assert commit(catalog, ItemUpsert("item-5", ("changed",))) == 0, "the same upsert again changes nothing"


def test_an_older_version_does_not_overwrite_a_newer_one(catalog: LiveCatalog) -> None:
    commit(catalog, ItemUpsert("x", ("second",)), version=(2, 0))
    commit(catalog, ItemUpsert("x", ("first",)), version=(1, 5))
    assert catalog.tags_of("x") == ("second",)
    commit(catalog, ItemDelete("x"), version=(3, 0))
    assert catalog.row_of("x") == 0


def test_a_view_keeps_its_rows_but_sees_deletes(catalog: LiveCatalog, base: BaseCatalog) -> None:
    view = catalog.view()
    commit(catalog, ItemUpsert("later", ("fresh",)), ItemDelete("item-1"))
    assert view.size == BASE_ITEMS + 1 and "later" not in view.ids[: view.size]
    assert not view.live[1]


def test_excluded_rows_are_skipped_in_the_index_and_the_delta(
    catalog: LiveCatalog, base: BaseCatalog
) -> None:
    commit(catalog, ItemUpsert("new", ("fresh",)))
    vector = unit(base.embeddings[0] + tag_embedding(np.zeros(1), [("fresh",)])[0])
    found = retrieve(catalog, vector, 10)
    assert {"item-1", "new"} <= set(found)
    excluded = retrieve(catalog, vector, 10, excluded=[1, catalog.row_of("new")])
    assert len(excluded) == 10 and not {"item-1", "new"} & set(excluded)


def test_popular_and_similar_skip_dead_items(catalog: LiveCatalog) -> None:
    commit(catalog, ItemDelete("item-2"))
    view = catalog.view()
    popular = view.popular(Retrieval(0, 3))
    assert [view.ids[row] for row in popular] == ["item-1", "item-3", "item-4"]
    rows, scores = view.similar(1, 5)
    assert 1 not in rows and 2 not in rows and np.all(np.diff(scores) <= 1e-6)


async def test_a_rebuild_folds_the_delta_into_the_index(catalog: LiveCatalog, base: BaseCatalog) -> None:
    commit(catalog, *(ItemUpsert(f"new-{n}", (f"t{n}",)) for n in range(30)), ItemDelete("item-1"))
    vector = base.embeddings[1]
    before = retrieve(catalog, vector, 10)
    rebuilder = IndexRebuilder(
        catalog, RebuildPolicy(delta_rows=10**9, interval_s=0, n_trees=10, search_k=4000)
    )
    rebuilding = rebuilder.trigger()
    await asyncio.sleep(0.05)  # the rebuild has taken its snapshot and is building in the child
    commit(catalog, ItemUpsert("during", ("fresh",)))  # a write while the child builds
    await asyncio.wait_for(rebuilding, 60)
    assert catalog.index_generation == 1 and rebuilder.statistics.completed == 1
    assert catalog.delta_size == 1, "the item written during the rebuild stays in the delta"
    assert catalog.dead_in_index == 0
    assert retrieve(catalog, vector, 10) == before
    assert retrieve(catalog, tag_embedding(np.zeros(1), [("fresh",)])[0], 1) == ["during"]
    await rebuilder.close()


@pytest.mark.parametrize("columns", [500, 20_000])
def test_the_delta_search_finds_the_exact_top_rows(columns: int) -> None:
    from recserve.server.catalog.view import _top_columns

    rng = np.random.default_rng(columns)
    scores = rng.normal(size=(12, columns)).astype(np.float32)
    scores[3, : columns // 2] = -np.inf  # half the rows dead
    scores[5, :] = -np.inf
    scores[5, :7] = 1.0  # fewer live columns than wanted
    wanted = [100] * 6 + [37] * 6
    for row, (found, want) in enumerate(zip(_top_columns(scores, wanted), wanted, strict=True)):
        expected = np.argsort(-scores[row], kind="stable")[:want]
        assert sorted(scores[row, found].tolist()) == sorted(scores[row, expected].tolist())
        assert found.size == want


def exact_top(view, vectors: np.ndarray, queries: Sequence[Retrieval]) -> list[set[int]]:  # noqa: ANN001
    """Brute force: per query, its `wanted` live, not excluded rows of highest cosine."""
    found = []
    for query in queries:
        scores = view.embeddings[: view.size] @ vectors[query.position]
        usable = view.live[: view.size].copy()
        usable[0] = False
        usable[query.excluded] = False
        rows = np.flatnonzero(usable)
        found.append(set(rows[np.argsort(-scores[rows])[: query.wanted]].tolist()))
    return found


@pytest.mark.parametrize("score_budget", [view_module.SCORE_BUDGET, 1000])  # 1000: queries in chunks of 2
def test_a_small_catalog_is_searched_exactly_not_through_the_index(
    base: BaseCatalog, tmp_path: Path, score_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(view_module, "SCORE_BUDGET", score_budget)
    coarse = replace(base, index=AnnIndex(tmp_path / "base.ann", DIMENSION, search_k=1))  # one leaf per query
    exact_catalog = LiveCatalog(coarse, tag_embedding, exact_search_max_items=BASE_ITEMS)
    commit(exact_catalog, ItemDelete("item-7"), ItemUpsert("new", ("fresh",)), ItemDelete("item-9"))
    vectors = unit(np.random.default_rng(11).normal(size=(6, DIMENSION)))
    queries = [Retrieval(q, 25, np.array([q + 1, 40 + q], dtype=np.int32)) for q in range(6)]
    view = exact_catalog.view()
    assert view.exact
    assert [set(rows.tolist()) for rows in view.retrieve(vectors, queries, on_this_thread)] == exact_top(
        view, vectors, queries
    )
    through_index = LiveCatalog(coarse, tag_embedding).view()
    assert not through_index.exact
    got = [set(rows.tolist()) for rows in through_index.retrieve(vectors, queries, on_this_thread)]
    assert got != exact_top(through_index, vectors, queries), "the coarse index alone misses rows"


def test_exact_search_follows_the_catalog_size(base: BaseCatalog) -> None:
    assert not LiveCatalog(base, tag_embedding).view().exact, "0: never exact"
    catalog = LiveCatalog(base, tag_embedding, exact_search_max_items=BASE_ITEMS + 1)
    assert catalog.view().exact
    commit(catalog, ItemUpsert("a", ("fresh",)))
    assert catalog.view().exact, "401 live items: still exact"
    assert retrieve(catalog, tag_embedding(np.zeros(1), [("fresh",)])[0], 1) == ["a"]
    commit(catalog, ItemUpsert("b", ("fresh",)))
    assert not catalog.view().exact, "402 live items: through the index again"
    commit(catalog, ItemDelete("item-3"))
    view = catalog.view()
    assert view.exact
    rows, scores = view.similar(4, 10)
    assert 4 not in rows and 3 not in rows and np.all(np.diff(scores) <= 1e-6)
    assert set(rows.tolist()) == exact_top(view, view.embeddings[4][None, :], [Retrieval(0, 11)])[0] - {4}


def test_index_directories_of_processes_gone_are_removed_and_live_ones_kept() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    killed = Path(tempfile.mkdtemp(prefix=f"{INDEX_DIR_PREFIX}{int(gone.stdout)}-"))
    (killed / "index-3.ann").write_bytes(b"left by a server killed with SIGKILL")
    restarted = Path(tempfile.mkdtemp(prefix=f"{INDEX_DIR_PREFIX}{os.getpid()}-"))  # same pid, not made here
    running = Path(tempfile.mkdtemp(prefix=f"{INDEX_DIR_PREFIX}1-"))  # init runs as long as we do
    mine = index_directory()
    second = index_directory()
    try:
        assert mine.name.startswith(f"{INDEX_DIR_PREFIX}{os.getpid()}-")
        assert not killed.exists(), "a dead process's directory is removed"
        assert not restarted.exists(), "one with this pid that this process did not make is stale"
        assert running.exists(), "a running process's directory is kept"
        assert mine.is_dir() and second.is_dir(), "this process's own stay"
    finally:
        for directory in (running, mine, second):
            directory.rmdir()
