"""The offline side: demo data, MovieLens reading, the split, and a real (tiny) build checked against the
model-repository contract. TensorFlow and Annoy are real; the model is built once per module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recserve.server.settings import load_model_config
from recserve.training import movielens
from recserve.training.cold_start import hold_out_items, random_items
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.data import split_by_time
from recserve.training.demo_data import generate_demo
from recserve.training.evaluate import ann_recall_at_k, ndcg_at_k, popularity_recommender, recall_at_k
from recserve.training.movielens import read_movielens, write_movielens

DATA = Path(__file__).parent / "data"
TINY_DEMO = {
    "seed": 7,
    "num_users": 1500,
    "num_items": 2500,
    "embedding_dim": 32,
    "context_length": 20,
    "n_trees": 32,
    "max_epochs": 3,
}
RETRIEVAL = {"candidate_count": 100, "search_k": 3000}  # the committed config's
VERSION_FILES = (
    "metadata.json", "evaluation.json", "items.ann", "item_embeddings.npy", "item_popularity.npy",
    "item_ids.txt", "user_ids.txt", "tag_ids.txt", "item_tags.npy", "cold_start_items.jsonl",
    "user_tower/saved_model.pb", "item_tower/saved_model.pb", "ranker/saved_model.pb",
)  # fmt: skip
EVALUATION_KEYS = {
    "recall@10", "ndcg@10", "popular_recall@10", "popular_ndcg@10", "ann_recall@100", "users_evaluated",
    "cold_start_recall@10", "cold_start_random_recall@10", "cold_start_items", "cold_start_cases",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    model_dir = root / "recommender"
    model_dir.mkdir()
    document = {"name": "recommender", "retrieval": RETRIEVAL, "limits": {"max_k": 200}, "demo": TINY_DEMO}
    (model_dir / "config.yaml").write_text(yaml.safe_dump(document))
    return root


@pytest.fixture(scope="module")
def built(tiny_repository: Path) -> Path:
    """Version 1 of a tiny model, configured by the `demo:` section of its config.yaml."""
    from recserve.training.build import build_demo

    return build_demo(tiny_repository, "recommender", show_progress=False)


@pytest.fixture(scope="module")
def metadata(built: Path) -> dict:
    return json.loads((built / "metadata.json").read_text())


@pytest.fixture(scope="module")
def evaluation(built: Path) -> dict:
    return json.loads((built / "evaluation.json").read_text())


def _signature(path: Path):  # noqa: ANN202
    import tensorflow as tf

    return tf.saved_model.load(str(path)).signatures["serving_default"]


# Data ------------------------------------------------------------------------------------------------


def test_generate_demo_is_deterministic_by_seed() -> None:
    first, again, other = (generate_demo(300, 800, seed=s) for s in (3, 3, 4))
    assert np.array_equal(first.item_rows, again.item_rows)
    assert np.array_equal(first.timestamps, again.timestamps)
    assert not np.array_equal(first.item_rows[:100], other.item_rows[:100])
    assert first.user_ids[:2] == ("user-1", "user-2") and first.item_ids[-1] == "item-800"
    assert np.all(np.diff(first.timestamps) >= 0)
    pairs = first.user_rows.astype(np.int64) * first.num_items + first.item_rows
    assert np.unique(pairs).size == pairs.size  # nobody interacts with the same item twice
    assert 15 <= len(first) / first.num_users <= 35


def test_generate_demo_popularity_is_zipf_like() -> None:
    counts = np.sort(generate_demo(2000, 5000, seed=7).item_popularity())[::-1]
    top_share = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.08  # the top 1% of items get far more than 1% of interactions
    assert counts[0] > 20 * max(1, np.median(counts))


@pytest.mark.parametrize(
    ("path", "rows", "users"),
    [
        (DATA / "movielens-csv", 38, ("1", "2", "3", "5", "8", "13")),
        (DATA / "movielens-csv" / "ratings.csv", 38, ("1", "2", "3", "5", "8", "13")),
        (DATA / "movielens-100k", 31, ("1", "2", "4", "7", "11")),
        (DATA / "movielens-100k" / "u.data", 31, ("1", "2", "4", "7", "11")),
    ],
)
def test_read_movielens(path: Path, rows: int, users: tuple[str, ...]) -> None:
    interactions = read_movielens(path)
    assert len(interactions) == rows
    assert interactions.user_ids == users  # strings as in the file, numeric ones in numeric order
    assert np.all(np.diff(interactions.timestamps) >= 0)
    assert interactions.item_rows.max() < interactions.num_items
    liked = read_movielens(path, min_rating=4)
    assert 0 < len(liked) < rows


def test_read_movielens_in_chunks_equals_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = read_movielens(DATA / "movielens-csv")
    monkeypatch.setattr(movielens, "CHUNK_LINES", 5)  # 38 ratings in 8 chunks
    chunked = read_movielens(DATA / "movielens-csv")
    assert (chunked.user_ids, chunked.item_ids, chunked.item_tags) == (
        whole.user_ids,
        whole.item_ids,
        whole.item_tags,
    )
    for name in ("user_rows", "item_rows", "timestamps"):
        assert np.array_equal(getattr(chunked, name), getattr(whole, name))


def test_a_bad_ratings_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,3\n")
    with pytest.raises(ValueError, match=r"ratings.csv:3: expected user, item, rating, timestamp"):
        read_movielens(tmp_path)


def test_demo_data_written_as_movielens_reads_back(tmp_path: Path) -> None:
    data = generate_demo(300, 800, seed=5)
    read = read_movielens(write_movielens(data, tmp_path))
    assert len(read) == len(data) and read.source.startswith("movielens:")
    # Ids are row + 1; the reader keeps only items somebody rated, in numeric order.
    assert read.user_ids == tuple(str(row + 1) for row in range(data.num_users))
    item_row = {item_id: row for row, item_id in enumerate(read.item_ids)}
    original = np.array([item_row[str(row + 1)] for row in data.item_rows])
    order = np.lexsort((data.item_rows, data.user_rows, data.timestamps))
    read_order = np.lexsort((read.item_rows, read.user_rows, read.timestamps))
    assert np.array_equal(read.user_rows[read_order], data.user_rows[order])
    assert np.array_equal(read.item_rows[read_order], original[order])
    for item_id, tags in zip(read.item_ids, read.item_tags, strict=True):
        assert tags == data.item_tags[int(item_id) - 1]


def test_demo_items_have_tags_that_tell_their_topic_approximately() -> None:
    data, again = generate_demo(600, 1500, seed=3), generate_demo(600, 1500, seed=3)
    assert (
        data.item_tags == again.item_tags and data.tag_ids[:2] == ("tag-1", "tag-2") and data.num_tags == 100
    )
    assert all(1 <= len(tags) <= 4 and len(set(tags)) == len(tags) for tags in data.item_tags)
    assert {tag for tags in data.item_tags for tag in tags} <= set(data.tag_ids)
    assert data.item_tags != generate_demo(600, 1500, seed=4).item_tags
    # Tags come from a stream of their own: the interactions are the same whatever the tags.
    other_tags = generate_demo(600, 1500, seed=3, num_tags=40, tag_noise=0.5)
    assert np.array_equal(data.item_rows, other_tags.item_rows)
    # Consecutive items of a user mostly share a session's topic, so they share tags far more often
    # than random pairs do; but tags are not the topic itself.
    tags = [set(t) for t in data.item_tags]
    order = np.lexsort((data.timestamps, data.user_rows))
    users, items = data.user_rows[order], data.item_rows[order]
    same_user = users[1:] == users[:-1]
    pairs = zip(items[:-1], items[1:], same_user, strict=True)
    consecutive = [tags[a] & tags[b] != set() for a, b, same in pairs if same]
    rng = np.random.default_rng(0)
    random_pairs = [tags[a] & tags[b] != set() for a, b in rng.integers(0, 1500, size=(5000, 2))]
    assert np.mean(consecutive) > 0.5 and np.mean(random_pairs) < 0.15
    assert data.item_tag_indices().shape == (1500, 4)


@pytest.mark.parametrize(
    ("path", "item", "tags"),
    [
        (DATA / "movielens-csv", "3", ("Comedy", "Drama", "Romance")),  # a quoted title with commas
        (DATA / "movielens-csv", "5", ("Comedy",)),
        (DATA / "movielens-csv", "55", ()),  # (no genres listed)
        (DATA / "movielens-csv", "377", ()),  # not in movies.csv
        (DATA / "movielens-100k", "4", ("Action", "Comedy", "Drama")),
        (DATA / "movielens-100k", "15", ("Drama",)),  # a latin-1 title
        (DATA / "movielens-100k", "19", ()),  # not in u.item
        (DATA / "movielens-1m", "661", ("Animation", "Children's", "Musical")),
        (DATA / "movielens-1m" / "ratings.dat", "1193", ("Drama",)),
    ],
)
def test_read_movielens_genres_as_tags(path: Path, item: str, tags: tuple[str, ...]) -> None:
    interactions = read_movielens(path)
    assert interactions.item_tags[interactions.item_ids.index(item)] == tags
    assert interactions.tag_ids == tuple(
        sorted({t for item_tags in interactions.item_tags for t in item_tags})
    )
    indices = interactions.item_tag_indices()
    assert indices.shape[0] == interactions.num_items and indices.max() == interactions.num_tags


def test_read_movielens_without_a_movie_file_has_no_tags(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_bytes((DATA / "movielens-100k" / "u.data").read_bytes())
    interactions = read_movielens(tmp_path)
    assert interactions.tag_ids == () and all(tags == () for tags in interactions.item_tags)
    assert interactions.item_tag_indices().shape == (interactions.num_items, 1)


def test_held_out_items_leave_training_entirely() -> None:
    data = generate_demo(400, 1000, seed=1)
    held_out = random_items(data.num_items, 0.1, seed=1)
    warm, cold = hold_out_items(data, held_out, context_length=5)
    assert len(cold) == 100 and cold.item_ids == tuple(data.item_ids[row] for row in held_out)
    assert cold.item_tags == tuple(data.item_tags[row] for row in held_out)
    assert warm.item_ids == tuple(item for item in data.item_ids if item not in cold.item_ids)
    assert warm.item_tags == tuple(data.item_tags[data.item_ids.index(item)] for item in warm.item_ids)
    assert len(warm) + len(cold.cases) == len(data)
    events = zip(data.user_rows, data.item_rows, data.timestamps, strict=True)
    history: dict[int, list[tuple[int, str]]] = {}
    for user, item, when in events:
        history.setdefault(int(user), []).append((int(when), data.item_ids[item]))
    # A case's context: the user's latest kept items strictly before it, most recent last.
    for case in range(0, len(cold.cases), 37):
        target = cold.item_ids[cold.cases.targets[case] - 1]
        mine = sorted(history[int(cold.cases.user_indices[case]) - 1])
        when = next(t for t, item in mine if item == target)
        before = [item for t, item in mine if t < when and item not in cold.item_ids][-5:]
        assert [warm.item_ids[i - 1] for i in cold.cases.contexts[case] if i > 0] == before
    assert hold_out_items(data, random_items(data.num_items, 0.0, seed=1), 5) == (data, None)


def test_read_movielens_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_movielens(tmp_path)


def test_split_keeps_each_users_last_item_out_of_training() -> None:
    interactions = generate_demo(400, 1000, seed=1)
    split = split_by_time(interactions, context_length=5)
    assert len(split.test) == len(split.ranker) == interactions.num_users
    assert len(split.train) + len(split.ranker) + len(split.test) == len(interactions)
    test_by_user = dict(zip(split.test.user_indices.tolist(), split.test.targets.tolist(), strict=True))
    for examples in (split.train, split.ranker):
        assert not np.any(examples.targets == np.vectorize(test_by_user.get)(examples.user_indices))
        assert not np.any(examples.contexts == np.vectorize(test_by_user.get)(examples.user_indices)[:, None])
    ranker_by_user = dict(zip(split.ranker.user_indices.tolist(), split.ranker.targets.tolist(), strict=True))
    # Most recent last: the item just before each test item is the ranker's held-out positive.
    assert [ranker_by_user[u] for u in split.test.user_indices.tolist()] == split.test.contexts[
        :, -1
    ].tolist()
    first = split.train.contexts[np.argmax(split.train.user_indices == 1)]
    assert np.all(first == 0)  # a user's first interaction has an all-padding context
    assert split.item_popularity.sum() == len(interactions) - len(split.test)


def test_load_demo_config_reads_demo_and_retrieval(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {"batching": {"max_batch_size": 8}, "retrieval": {"search_k": 123}, "demo": {"max_epochs": 9}}
        )
    )
    config = load_demo_config(path)
    assert (config.max_epochs, config.search_k, config.num_users, config.candidate_count) == (
        9,
        123,
        10_000,
        100,
    )
    assert load_demo_config(tmp_path / "missing.yaml") == DemoConfig()
    path.write_text(yaml.safe_dump({"demo": {"epochz": 1}}))
    with pytest.raises(ValueError, match="epochz"):
        load_demo_config(path)


def test_defaults_match_committed_config() -> None:
    committed = load_demo_config(Path(__file__).parents[1] / "models" / "recommender" / "config.yaml")
    assert committed == DemoConfig()


# Metrics ---------------------------------------------------------------------------------------------


def test_recall_and_ndcg() -> None:
    recommended = np.array([[5, 7, 9], [1, 2, 3], [4, 8, 6]])
    targets = np.array([5, 3, 10])
    assert recall_at_k(recommended, targets, 3) == pytest.approx(2 / 3)
    assert recall_at_k(recommended, targets, 1) == pytest.approx(1 / 3)
    assert ndcg_at_k(recommended, targets, 3) == pytest.approx((1.0 + 1 / np.log2(4)) / 3)


def test_popularity_baseline_skips_context_items() -> None:
    recommend = popularity_recommender(np.array([50, 40, 30, 20, 10]))
    contexts = np.array([[0, 0, 1], [2, 3, 4]], dtype=np.int32)
    assert recommend(np.array([1, 2]), contexts, 2).tolist() == [[2, 3], [1, 5]]


# A real build ----------------------------------------------------------------------------------------


def test_version_directory_matches_contract(built: Path, metadata: dict, evaluation: dict) -> None:
    assert built.name == "1"
    for name in VERSION_FILES:
        assert (built / name).is_file(), name
    assert not list(built.parent.glob(".staging-*"))
    assert metadata["version"] == "1" and metadata["name"] == "recommender"
    assert (metadata["num_users"], metadata["num_items"], metadata["embedding_dim"]) == (1500, 2500, 32)
    assert metadata["index"] == {"library": "annoy", "metric": "angular", "n_trees": 32}
    assert metadata["dataset"]["source"] == "demo" and metadata["dataset"]["seed"] == 7
    assert {"max_epochs", "patience", "id_dropout", "batch_size", "wall_seconds"} <= set(metadata["training"])
    assert metadata["num_tags"] == 100 and metadata["max_item_tags"] == 4
    assert set(evaluation) == EVALUATION_KEYS
    assert len((built / "item_ids.txt").read_text().splitlines()) == 2500
    assert (built / "user_ids.txt").read_text().splitlines()[16] == "user-17"
    embeddings = np.load(built / "item_embeddings.npy")
    assert embeddings.shape == (2500, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    popularity = np.load(built / "item_popularity.npy")
    assert popularity.shape == (2500,) and popularity.dtype == np.int64
    tags = np.load(built / "item_tags.npy")
    assert tags.shape == (2500, 4) and tags.dtype == np.int32
    assert tags.min() == 0 and tags.max() <= 100 and np.all(tags[:, 0] > 0)  # every demo item has a tag
    assert (built / "tag_ids.txt").read_text().splitlines()[:2] == ["tag-1", "tag-2"]


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (7, 5), (7, 33)])
def test_user_tower_signature(built: Path, batch: int, length: int) -> None:
    user_tower = _signature(built / "user_tower")
    rng = np.random.default_rng(batch)
    recent = np.load(built / "item_embeddings.npy")[rng.integers(0, 2500, size=(batch, length))]
    recent[:, 0] = 0.0  # padding
    outputs = user_tower(user_index=np.arange(batch, dtype=np.int32), recent_item_embeddings=recent)
    assert set(outputs) == {"embedding"}
    embedding = outputs["embedding"].numpy()
    assert embedding.shape == (batch, 32) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_unknown_user_without_context_gets_a_unit_embedding(built: Path) -> None:
    user_tower = _signature(built / "user_tower")
    padding = np.zeros((2, 4, 32), np.float32)
    embedding = user_tower(user_index=np.zeros(2, np.int32), recent_item_embeddings=padding)[
        "embedding"
    ].numpy()
    assert np.all(np.isfinite(embedding))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_item_tower_and_ranker_signatures(built: Path) -> None:
    item_tower, ranker = _signature(built / "item_tower"), _signature(built / "ranker")
    tags = np.load(built / "item_tags.npy")
    for batch in (1, 7):
        items = np.arange(1, batch + 1, dtype=np.int32)
        embedding = item_tower(item_index=items, item_tags=tags[:batch])["embedding"].numpy()
        np.testing.assert_allclose(embedding, np.load(built / "item_embeddings.npy")[:batch], atol=1e-5)
        outputs = ranker(user_embedding=embedding[::-1].copy(), item_embedding=embedding, item_index=items)
        assert set(outputs) == {"probability"}
        probability = outputs["probability"].numpy()
        assert probability.shape == (batch, 1) and probability.dtype == np.float32
        assert np.all((probability > 0) & (probability < 1))
    cold = ranker(user_embedding=embedding, item_embedding=embedding, item_index=np.zeros(7, np.int32))
    assert np.all(np.isfinite(cold["probability"].numpy()))


@pytest.mark.parametrize("width", [1, 3, 9])
def test_item_tower_embeds_an_unknown_item_from_its_tags(built: Path, width: int) -> None:
    item_tower = _signature(built / "item_tower")
    tags = np.zeros((4, width), np.int32)
    tags[0, 0], tags[1, 0], tags[2, : min(width, 2)] = 5, 6, [5, 6][: min(width, 2)]
    embedding = item_tower(item_index=np.zeros(4, np.int32), item_tags=tags)["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)  # row 3: no id, no tags
    assert not np.allclose(embedding[0], embedding[1])  # the tags decide
    stored = np.load(built / "item_tags.npy")
    padded = np.pad(stored[:3], ((0, 0), (0, 2)))  # extra padding columns change nothing
    known = item_tower(item_index=np.arange(1, 4, dtype=np.int32), item_tags=padded)["embedding"].numpy()
    np.testing.assert_allclose(known, np.load(built / "item_embeddings.npy")[:3], atol=1e-5)


def test_annoy_index_holds_every_item(built: Path) -> None:
    from annoy import AnnoyIndex

    index = AnnoyIndex(32, "angular")
    index.load(str(built / "items.ann"))
    assert index.get_n_items() == 2500 and index.get_n_trees() == 32
    assert index.get_nns_by_item(41, 1) == [41]  # Annoy id r is item row r
    embeddings = np.load(built / "item_embeddings.npy")
    default_search_k = load_model_config(
        Path(__file__).parents[1] / "models" / "recommender"
    ).retrieval.search_k
    assert ann_recall_at_k(index, embeddings, k=100, search_k=default_search_k, n_queries=100).recall >= 0.9


def test_held_out_items_are_written_but_not_in_the_vocabulary(built: Path, evaluation: dict) -> None:
    lines = (built / "cold_start_items.jsonl").read_text().splitlines()
    cold = [json.loads(line) for line in lines]
    assert len(cold) == evaluation["cold_start_items"] == 132  # 5% of 2632 generated items
    assert [item["item_id"] for item in cold[:2]] == ["item-2501", "item-2502"]  # the newest ids
    assert all(1 <= len(item["tags"]) <= 4 for item in cold)
    assert not {item["item_id"] for item in cold} & set((built / "item_ids.txt").read_text().splitlines())


def test_cold_start_clearly_beats_random(evaluation: dict) -> None:
    assert evaluation["cold_start_cases"] >= 1000
    assert evaluation["cold_start_random_recall@10"] == round(10 / 132, 4)
    assert evaluation["cold_start_recall@10"] > 3 * evaluation["cold_start_random_recall@10"]


def test_training_stopped_on_validation_and_kept_the_best_epoch(metadata: dict) -> None:
    training = metadata["training"]
    curve = training["tower_validation_recall@50"]
    assert len(curve) == training["tower_epochs_run"] <= training["max_epochs"]
    assert training["tower_best_epoch"] == int(np.argmax(curve)) + 1
    losses = training["ranker_validation_loss"]
    assert len(losses) == training["ranker_epochs_run"] <= training["ranker_max_epochs"]
    assert training["ranker_best_epoch"] == int(np.argmin(losses)) + 1


def test_tower_training_stops_when_validation_stops_improving_and_keeps_the_best_weights() -> None:
    from recserve.training.build import training_data
    from recserve.training.towers import build_towers
    from recserve.training.train import train_towers, validation_recall

    config = DemoConfig(num_users=300, num_items=400, max_epochs=30, patience=1, batch_size=128)
    data = training_data(config)
    sizes = data.interactions
    towers = build_towers(sizes.num_users, sizes.num_items, sizes.num_tags, 16, 32)
    history = train_towers(towers, data.split.train, data.split.ranker, data.item_tags, config)
    assert len(history.losses) == len(history.validation_recall) == history.best_epoch + 1 < 30
    best = max(history.validation_recall)
    assert validation_recall(towers, data.split.ranker, data.item_tags) == pytest.approx(best, abs=1e-6)


def test_model_clearly_beats_popularity(evaluation: dict) -> None:
    assert evaluation["users_evaluated"] >= 1000
    assert evaluation["recall@10"] >= 1.5 * evaluation["popular_recall@10"]
    assert evaluation["recall@10"] - evaluation["popular_recall@10"] >= 0.1
    assert evaluation["ndcg@10"] >= 1.5 * evaluation["popular_ndcg@10"]


def test_ann_recall_at_default_index_settings(evaluation: dict) -> None:
    assert evaluation["ann_recall@100"] >= 0.9


def test_recent_items_change_recommendations(built: Path) -> None:
    from recserve.training.build import pipeline_recommender, training_data

    split = training_data(DemoConfig(**TINY_DEMO)).split
    recommend = pipeline_recommender(built)
    users, contexts = split.test.user_indices[:30], split.test.contexts[:30]
    own = recommend(users, contexts, 10)
    # The same users with other users' recent items.
    swapped = recommend(users, np.roll(contexts, 1, axis=0), 10)
    without = recommend(users, np.zeros_like(contexts[:, :1]), 10)
    overlap = [len(np.intersect1d(a, b)) for a, b in zip(own, swapped, strict=True)]
    assert np.mean(overlap) <= 3
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(own, without, strict=True)]) <= 6


def test_next_build_is_version_two(tiny_repository: Path, built: Path) -> None:
    from recserve.training.build import build_demo

    small = DemoConfig(
        num_users=300,
        num_items=400,
        max_epochs=1,
        batch_size=128,
        ranker_max_epochs=1,
        eval_users=50,
        ann_queries=20,
    )
    second = build_demo(tiny_repository, "recommender", config=small, show_progress=False)
    assert second == tiny_repository / "recommender" / "2"
    assert json.loads((second / "metadata.json").read_text())["version"] == "2"
    assert (built / "metadata.json").is_file()  # version 1 untouched
    assert sorted(p.name for p in (tiny_repository / "recommender").iterdir()) == ["1", "2", "config.yaml"]


# A large catalog's paths, at a small size ---------------------------------------------------------------


def test_an_epoch_over_more_examples_than_it_shows_takes_a_bounded_sample() -> None:
    from recserve.training.train import tower_steps_per_epoch

    assert tower_steps_per_epoch(27_000_000, 1024, 1_000_000) == 1_000_000 // 1024
    assert tower_steps_per_epoch(280_000, 1024, 1_000_000) == 280_000 // 1024, "small data: every example"


def test_approximate_near_negatives_find_most_of_the_exact_ones() -> None:
    from recserve.training import train_ranker

    rng = np.random.default_rng(3)
    items = rng.normal(size=(3000, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = items[rng.choice(3000, 50)] + 0.1 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = train_ranker._nearest_items(users, items, 50)
    approximate = train_ranker._approximate_nearest_items(users, items, 50)
    assert approximate.shape == exact.shape and approximate.min() >= 1 and approximate.max() <= 3000
    overlap = np.mean([np.intersect1d(a, e).size / 50 for a, e in zip(approximate, exact, strict=True)])
    assert overlap >= 0.5


def test_validation_recall_is_the_same_scored_in_parts(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recserve.training import train
    from recserve.training.build import training_data
    from recserve.training.towers import build_towers

    data = training_data(DemoConfig(**TINY_DEMO))
    interactions = data.interactions
    towers = build_towers(interactions.num_users, interactions.num_items, interactions.num_tags, 32, 64)
    cases = data.split.ranker.take(np.arange(300))
    whole = train.validation_recall(towers, cases, data.item_tags)
    monkeypatch.setattr(train, "SCORED_ROWS", 7)
    assert train.validation_recall(towers, cases, data.item_tags) == whole


def test_a_build_through_the_large_catalog_paths_still_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled tower epochs, a sampled ranker set and approximate near negatives: what a million items use."""
    from recserve.training import train_ranker
    from recserve.training.build import build_demo

    monkeypatch.setattr(train_ranker, "EXACT_NEIGHBOURS_MAX_ITEMS", 100)
    model_dir = tmp_path / "recommender"
    model_dir.mkdir()
    demo = {**TINY_DEMO, "max_examples_per_epoch": 15_000, "ranker_max_examples": 600}
    document = {"name": "recommender", "retrieval": RETRIEVAL, "demo": demo}
    (model_dir / "config.yaml").write_text(yaml.safe_dump(document))
    version = build_demo(tmp_path, "recommender", show_progress=False)
    evaluation = json.loads((version / "evaluation.json").read_text())
    assert evaluation["recall@10"] >= 1.5 * evaluation["popular_recall@10"]
    assert evaluation["ann_recall@100"] >= 0.9


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-items", "0"], "error: --num-items: Input should be greater than or equal to 10"),
        (
            ["--num-users", "-5", "--max-epochs", "0"],
            "--num-users: Input should be greater than or equal to 2; ",
        ),
        (["--ratings", str(DATA / "movielens-csv")], "38 ratings by 6 users of 12 items"),
        (["--ratings", "no-such-ratings.csv"], "error: no MovieLens ratings file"),
    ],
)
def test_build_demo_refuses_what_it_cannot_train_on_in_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recserve.server.cli import main

    assert main(["build-demo", "--model-repository", str(tmp_path), "--no-progress", *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not list(tmp_path.rglob("metadata.json")), "nothing was built"


def test_ratings_without_a_movie_file_warn_that_items_have_no_tags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from recserve.training.build import training_data

    interactions = generate_demo(num_users=60, num_items=40, seed=3)
    ratings = write_movielens(interactions, tmp_path)
    (tmp_path / "movies.csv").unlink()
    with caplog.at_level("WARNING"):
        data = training_data(DemoConfig(num_users=60, num_items=40), ratings)
    assert not data.interactions.tag_ids
    assert "no movie file with genres beside it" in caplog.text
