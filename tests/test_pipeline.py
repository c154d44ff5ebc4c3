"""The batch pipeline on the real tiny model: batching and threading must not change any answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recserve.server.catalog.from_model import live_catalog
from recserve.server.context import UserQuery
from recserve.server.pipeline import BatchPipeline, RankedItems, RecommendQuery, ScoreQuery, Scores
from recserve.server.repository import load_model
from recserve.server.settings import LimitSettings, RetrievalSettings


@pytest.fixture(scope="module")
def model(version_dir: Path):
    return load_model(version_dir, search_k=2000)


def pipeline_over(model, **retrieval: int) -> BatchPipeline:  # noqa: ANN001
    """A pipeline over the model's own catalog, without stored history."""
    return BatchPipeline(
        model, live_catalog(model), RetrievalSettings(search_k=2000, **retrieval), LimitSettings()
    )


def queries(count: int) -> list:
    rng = np.random.default_rng(3)
    built = []
    for n in range(count):
        context = rng.integers(1, 2500, size=n % 4).astype(np.int32)
        user_index = 0 if n % 7 == 0 else int(rng.integers(1, 1500))
        user = UserQuery(f"user-{user_index}", user_index, context if n % 7 else context[:0])
        if n % 5 == 4:
            built.append(ScoreQuery(user, rng.integers(1, 2500, size=6).astype(np.int32)))
        else:
            built.append(RecommendQuery(user, 10, np.unique(context)))
    return built


def assert_same(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        if isinstance(b, RankedItems):
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
            assert a.rows.size == b.rows.size
        else:
            assert isinstance(b, Scores)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_one_batch_answers_as_single_queries_do(model) -> None:
    pipeline = pipeline_over(model, ann_threads=1)
    batch = queries(24)
    assert_same(pipeline.run_batch(batch), [pipeline.run_batch([query])[0] for query in batch])


def test_ann_threads_give_the_same_answers(model) -> None:
    batch = queries(33)
    one = pipeline_over(model, ann_threads=1)
    three = pipeline_over(model, ann_threads=3)
    try:
        got, want = three.run_batch(batch), one.run_batch(batch)
        assert_same(got, want)
        for a, b in zip(got, want, strict=True):
            if isinstance(b, RankedItems):
                np.testing.assert_array_equal(a.rows, b.rows)
    finally:
        three.close()


def test_stage_statistics_count_rows(model) -> None:
    pipeline = pipeline_over(model)
    batch = queries(10)
    pipeline.run_batch(batch)
    assert pipeline.stages["user_tower"].inference_count == 10
    assert pipeline.stages["ann"].execution_count == 1
    pairs = sum(q.item_rows.size if isinstance(q, ScoreQuery) else 100 for q in batch)
    assert pipeline.stages["ranker"].inference_count >= pairs - 10
    pipeline.close()


def test_excluded_and_cold_start(model) -> None:
    pipeline = pipeline_over(model)
    excluded = np.arange(1, 300, dtype=np.int32)
    cold, warm = pipeline.run_batch(
        [
            RecommendQuery(UserQuery("", 0, np.zeros(0, np.int32)), 20, excluded),
            RecommendQuery(UserQuery("user-5", 5, np.array([3, 4], np.int32)), 20, excluded),
        ]
    )
    assert cold.cold_start and not warm.cold_start
    for result in (cold, warm):
        assert result.rows.size == 20
        assert not np.isin(result.rows, excluded).any()
        assert np.all(np.diff(result.scores) <= 0)
    pipeline.close()


def test_signature_inputs_must_match_by_name(model) -> None:
    with pytest.raises(TypeError, match="takes inputs"):
        model.user_tower(user_index=np.array([1], dtype=np.int32))
    with pytest.raises(TypeError, match="takes inputs"):
        model.user_tower(
            user_index=np.array([1]), recent_item_embeddings=np.zeros((1, 1, 32)), extra=np.array([1])
        )
