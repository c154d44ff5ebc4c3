"""`recserve retrain`: a tiny real build, drifted events written through the real state backends, a real
retraining through the command line, and the version it makes loaded and served. TensorFlow, Annoy, the
memory backend's log and a redis-server are all real; the build and the retraining happen once per module."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from recserve.client import RecommenderClient
from recserve.server.cli import main
from recserve.server.manifest import incompleteness, write_manifest
from recserve.server.repository import load_checked
from recserve.server.settings import ServerSettings, StateSettings
from recserve.server.state.events import EventType, ItemDelete, ItemUpsert, UserEvent
from recserve.server.state.log import HEADER
from recserve.server.state.memory import MemoryBackend
from recserve.server.state.redis_backend import RedisBackend
from recserve.training.build import build_demo, training_data
from recserve.training.cold_start import held_out_count
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.data import Interactions
from recserve.training.demo_data import generate_demo
from recserve.training.drift import DriftedFeedback, DriftSettings, demo_item_structure, drifted_feedback
from recserve.training.evaluate import evaluate_recommender, sample_cases
from recserve.training.feedback import merge_feedback, pair_feedback
from recserve.training.recorded import RecordedState, read_recorded_state
from recserve.training.retrain import RetrainError, retrain
from recserve.training.training_data import TRAINING_DATA, StoredTraining, load_training_data
from tests.redis_server import RedisServer
from tests.serving import ServerThread

MODEL = "recommender"
TINY = {
    "seed": 7,
    "num_users": 600,
    "num_items": 1000,
    "max_epochs": 2,
    "eval_users": 300,
    "ann_queries": 100,
}
DRIFT = DriftSettings(users=200, new_users=40, new_items=12, deleted_items=20, trending_share=0.3, seed=3)
EVALUATION_KEYS = {
    "recall@10", "ndcg@10", "popular_recall@10", "popular_ndcg@10", "ann_recall@100", "users_evaluated",
    "previous_version", "previous_recall@10", "previous_ndcg@10",
}  # fmt: skip


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with version 1 of a tiny demo model."""
    root = tmp_path_factory.mktemp("retrain-models")
    (root / MODEL).mkdir()
    document = {"name": MODEL, "retrieval": {"candidate_count": 100, "search_k": 3000}, "demo": TINY}
    (root / MODEL / "config.yaml").write_text(yaml.safe_dump(document))
    build_demo(root, MODEL, show_progress=False)
    return root


@pytest.fixture(scope="module")
def config(repository: Path) -> DemoConfig:
    return load_demo_config(repository / MODEL / "config.yaml")


@pytest.fixture(scope="module")
def feedback(repository: Path, config: DemoConfig) -> DriftedFeedback:
    return drifted_feedback(load_training_data(repository / MODEL / "1").interactions, config, DRIFT)


async def _write_memory(state_dir: Path, feedback: DriftedFeedback) -> None:
    backend = MemoryBackend(state_dir, "everysec", 1000, max_context=1000, compact_log_bytes=1 << 26)
    await backend.open()
    await backend.record_catalog_changes([*feedback.upserts, *feedback.deletes])
    for start in range(0, len(feedback.events), 1000):
        await backend.record_events(feedback.events[start : start + 1000])
    await backend.close()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory, feedback: DriftedFeedback) -> Path:
    """A state directory written by the memory backend: the drifted items and events."""
    directory = tmp_path_factory.mktemp("retrain-state") / "state"
    asyncio.run(_write_memory(directory, feedback))
    return directory


@pytest.fixture(scope="module")
def cli_output(repository: Path, state_dir: Path) -> str:
    """What `recserve retrain` printed; it made version 2."""
    args = ["retrain", "--model-repository", str(repository), "--state-dir", str(state_dir), "--no-progress"]
    capture = _Capture()
    with capture:
        code = main(args)
    assert code == 0, capture.err
    return capture.out


@pytest.fixture(scope="module")
def retrained(cli_output: str, repository: Path) -> Path:
    return repository / MODEL / "2"


@pytest.fixture(scope="module")
def evaluation(retrained: Path) -> dict:
    return json.loads((retrained / "evaluation.json").read_text())


class _Capture:
    """stdout and stderr of an in-process command (capsys is function-scoped)."""

    def __enter__(self) -> _Capture:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


# Stored training data ------------------------------------------------------------------------------


def test_build_demo_stores_what_it_trained_on(repository: Path, config: DemoConfig) -> None:
    version = repository / MODEL / "1"
    stored = load_training_data(version).interactions
    expected = training_data(config).interactions
    assert np.array_equal(stored.user_rows, expected.user_rows)
    assert np.array_equal(stored.item_rows, expected.item_rows)
    assert np.array_equal(stored.timestamps, expected.timestamps)
    assert (stored.user_ids, stored.item_ids, stored.tag_ids) == (
        expected.user_ids,
        expected.item_ids,
        expected.tag_ids,
    )
    assert stored.item_tags == expected.item_tags and stored.source == "demo"
    assert TRAINING_DATA in json.loads((version / "manifest.json").read_text())["files"]
    assert (version / TRAINING_DATA).stat().st_size < 8 * len(stored)  # compressed: well under 16 B each


# Feedback rules, on a handmade version ---------------------------------------------------------------


def _small_version() -> StoredTraining:
    interactions = Interactions(
        user_ids=("u1", "u2"),
        item_ids=("a", "b", "c"),
        user_rows=np.array([0, 0, 1], np.int32),
        item_rows=np.array([0, 1, 2], np.int32),
        timestamps=np.array([10, 20, 30], np.int64),
        source="demo",
        tag_ids=("t1", "t2"),
        item_tags=(("t1",), ("t2",), ("t1", "t2")),
    )
    return StoredTraining(interactions, np.ones(3, np.uint8))


def _event(user: str, item: str, kind: EventType, seconds: int) -> UserEvent:
    return UserEvent(user, item, kind, seconds * 1000)


def test_latest_event_decides_and_the_strongest_type_weighs() -> None:
    feedback = pair_feedback(
        [
            _event("u", "x", EventType.VIEW, 5),
            _event("u", "x", EventType.PURCHASE, 7),
            _event("u", "y", EventType.LIKE, 1),
            _event("u", "y", EventType.DISLIKE, 2),
            _event("u", "z", EventType.DISLIKE, 1),
            _event("u", "z", EventType.CLICK, 3),
        ]
    )
    assert feedback == {("u", "x"): (5, 3), ("u", "y"): None, ("u", "z"): (3, 1)}


def test_merge_maps_events_and_catalog_onto_the_vocabularies() -> None:
    recorded = RecordedState(
        events=(
            _event("u1", "new", EventType.CLICK, 40),
            _event("u3", "new", EventType.VIEW, 41),  # a new user
            _event("u3", "c", EventType.ADD_TO_CART, 42),
            _event("u2", "c", EventType.PURCHASE, 43),  # strengthens a pair the version has
            _event("u1", "a", EventType.DISLIKE, 44),  # takes the version's pair out
            _event("u1", "b", EventType.VIEW, 45),  # b is deleted
            _event("u4", "ghost", EventType.VIEW, 46),  # neither in the version nor upserted
        ),
        catalog={"new": ("t3", "t1"), "b": None, "c": ("t2",)},
        where="test",
    )
    merged = merge_feedback(_small_version(), recorded)
    interactions = merged.interactions
    assert interactions.item_ids == ("a", "c", "new")
    assert interactions.item_tags == (("t1",), ("t2",), ("t3", "t1"))
    assert interactions.tag_ids == ("t1", "t2", "t3")
    assert interactions.user_ids == ("u1", "u2", "u3")  # u4 had no usable event
    pairs = [
        (interactions.user_ids[u], interactions.item_ids[i], int(t), int(w), bool(n))
        for u, i, t, w, n in zip(
            interactions.user_rows,
            interactions.item_rows,
            interactions.timestamps,
            merged.weights,
            merged.is_new,
            strict=True,
        )
    ]
    assert pairs == [
        ("u2", "c", 30, 3, False),
        ("u1", "new", 40, 1, True),
        ("u3", "new", 41, 1, True),
        ("u3", "c", 42, 2, True),
    ]
    summary = merged.summary
    assert (summary.new_users, summary.new_items, summary.deleted_items, summary.retagged_items) == (
        1,
        1,
        1,
        1,
    )
    assert (summary.new_interactions, summary.strengthened_interactions, summary.removed_interactions) == (
        3,
        1,
        1,
    )
    assert (summary.recorded_events, summary.unknown_item_events) == (7, 2)
    again = merge_feedback(StoredTraining(interactions, merged.weights), recorded)
    assert again.summary.new_interactions == 0 and len(again.interactions) == len(interactions)


# Reading the recorded state -------------------------------------------------------------------------


def _by_user(events: tuple[UserEvent, ...]) -> dict[str, list[UserEvent]]:
    found: dict[str, list[UserEvent]] = {}
    for event in events:
        found.setdefault(event.user_id, []).append(event)
    return {user: sorted(rows, key=lambda event: event.time_ms) for user, rows in found.items()}


def test_the_state_directory_reads_as_the_backend_rebuilds_it(tmp_path: Path) -> None:
    async def write_and_read_back() -> tuple[dict[str, list[UserEvent]], dict]:
        backend = MemoryBackend(tmp_path, "everysec", 3, max_context=3, compact_log_bytes=1 << 20)
        await backend.open()
        await backend.record_events([_event("keep", f"i{n}", EventType.VIEW, n) for n in range(5)])
        await backend.record_events([_event("gone", "i1", EventType.LIKE, 1)])
        await backend.record_catalog_changes([ItemUpsert("i9", ("t",)), ItemDelete("i1")])
        await backend.forget_user("gone")  # compacts: a snapshot, then a new segment
        await backend.record_events([_event("late", "i2", EventType.CLICK, 9)])
        await backend.record_catalog_changes([ItemUpsert("i1", ("u",))])
        await backend.close()
        again = MemoryBackend(tmp_path, "everysec", 3, max_context=3, compact_log_bytes=1 << 20)
        changes = await again.open()
        histories = {user: await again.user_history(user) for user in ("keep", "gone", "late")}
        await again.close()
        catalog = {c.item_id: c.tags if isinstance(c, ItemUpsert) else None for c, _ in changes}
        return {user: events for user, events in histories.items() if events}, catalog

    histories, catalog = asyncio.run(write_and_read_back())
    recorded = read_recorded_state(StateSettings(state_dir=tmp_path, max_history_events=3))
    assert list((tmp_path).glob("snapshot-*.bin")), "the reader went through a snapshot"
    assert _by_user(recorded.events) == histories
    assert [event.item_id for event in histories["keep"]] == ["i2", "i3", "i4"]
    assert recorded.catalog == catalog == {"i9": ("t",), "i1": ("u",)}


def test_redis_state_reads_the_same_as_the_state_directory(
    tmp_path: Path, state_dir: Path, feedback: DriftedFeedback
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        asyncio.run(_write_redis(redis.url, feedback))
        from_redis = read_recorded_state(StateSettings(backend="redis", redis_url=redis.url))
    finally:
        redis.stop()
    from_directory = read_recorded_state(StateSettings(state_dir=state_dir))
    assert _by_user(from_redis.events) == _by_user(from_directory.events)
    assert from_redis.catalog == from_directory.catalog
    assert len(from_redis.events) == len(feedback.events)
    assert sum(tags is None for tags in from_redis.catalog.values()) == DRIFT.deleted_items


async def _write_redis(url: str, feedback: DriftedFeedback) -> None:
    backend = RedisBackend(url, "recserve:", 1.0, 1000, max_context=1000)
    await backend.open()
    await backend.record_catalog_changes([*feedback.upserts, *feedback.deletes])
    for start in range(0, len(feedback.events), 1000):
        await backend.record_events(feedback.events[start : start + 1000])
    await backend.close()


# Drift ----------------------------------------------------------------------------------------------


def test_drift_reuses_the_demo_topics(config: DemoConfig, feedback: DriftedFeedback) -> None:
    topic, _ = demo_item_structure(config)
    held_out = held_out_count(config.num_items, config.cold_start_holdout)
    generated = generate_demo(num_users=10, num_items=config.num_items + held_out, seed=config.seed)
    # The demo gives each topic a signature of tags: items of one topic share their most common tag.
    shares = []
    for value in np.unique(topic):
        tags = [tag for row in np.flatnonzero(topic == value) for tag in generated.item_tags[row]]
        shares.append(max(tags.count(tag) for tag in set(tags)) / np.sum(topic == value))
    assert np.median(shares) > 0.5
    drifted_users = {event.user_id for event in feedback.events}
    assert len(drifted_users) == DRIFT.users + DRIFT.new_users
    assert all(2 <= len(upsert.tags) <= 3 for upsert in feedback.upserts)


def test_mixed_themes_bring_together_items_of_several_topics(repository: Path, config: DemoConfig) -> None:
    base = load_training_data(repository / MODEL / "1").interactions
    topic, _ = demo_item_structure(config)
    row_of_item = {item_id: row for row, item_id in enumerate(base.item_ids)}

    def topics_per_user(mixed_topics: int) -> float:
        drift = DriftSettings(
            users=50, new_users=0, new_items=0, themes_per_user=1, mixed_topics=mixed_topics
        )
        by_user: dict[str, set[int]] = {}
        for event in drifted_feedback(base, config, drift).events:
            if event.type.is_positive:
                by_user.setdefault(event.user_id, set()).add(int(topic[row_of_item[event.item_id]]))
        return float(np.mean([len(topics) for topics in by_user.values()]))

    assert topics_per_user(1) == 1.0  # one theme each: one demo topic
    assert topics_per_user(3) > 2.0


# The retrained version ------------------------------------------------------------------------------


def test_retrain_prints_both_versions_figures(cli_output: str, evaluation: dict) -> None:
    assert cli_output.startswith("built ") and "from version 1" in cli_output
    assert (
        f"recall@10 {evaluation['recall@10']} (version 1: {evaluation['previous_recall@10']})" in cli_output
    )


def test_retrained_version_is_complete_and_loads(retrained: Path) -> None:
    assert incompleteness(retrained) is None
    model = load_checked(retrained)
    assert model.version == "2"
    metadata = json.loads((retrained / "metadata.json").read_text())
    assert metadata["version"] == "2"
    dataset = metadata["dataset"]
    assert (dataset["source"], dataset["retrained_from"], dataset["origin"]) == ("retrain", "1", "demo")
    assert not list(retrained.parent.glob(".staging-*"))


def test_retrained_vocabulary_has_the_new_items_and_users_and_not_the_deleted(
    retrained: Path, feedback: DriftedFeedback
) -> None:
    model = load_checked(retrained)
    items = set(model.items.ids)
    assert {upsert.item_id for upsert in feedback.upserts} <= items
    assert not items & {delete.item_id for delete in feedback.deletes}
    assert len(model.items) == TINY["num_items"] + DRIFT.new_items - DRIFT.deleted_items
    new_users = {f"drift-user-{n}" for n in range(1, DRIFT.new_users + 1)}
    assert new_users <= set(model.users.ids)
    assert len(model.users) == TINY["num_users"] + DRIFT.new_users
    upsert = feedback.upserts[0]
    tags = model.item_tags[model.items.index_of(upsert.item_id) - 1]
    assert tuple(model.tags.ids[index - 1] for index in tags if index) == upsert.tags


def test_evaluation_has_both_versions_on_the_same_cases(evaluation: dict) -> None:
    assert set(evaluation) == EVALUATION_KEYS
    assert evaluation["previous_version"] == 1
    assert 100 <= evaluation["users_evaluated"] <= TINY["eval_users"]
    assert all(0 <= evaluation[key] <= 1 for key in EVALUATION_KEYS - {"previous_version", "users_evaluated"})


def test_the_retrained_version_scores_drifted_events_better(evaluation: dict) -> None:
    assert evaluation["recall@10"] >= evaluation["previous_recall@10"] + 0.05
    assert evaluation["ndcg@10"] > evaluation["previous_ndcg@10"]
    assert evaluation["recall@10"] > evaluation["popular_recall@10"]


def test_the_comparison_measures_what_the_offline_pipeline_measures(
    repository: Path, config: DemoConfig
) -> None:
    from recserve.training.served import ServedVersion

    version = repository / MODEL / "1"
    data = training_data(config)
    cases = sample_cases(data.split.test, config.eval_users, config.seed)
    with ServedVersion(version, {}) as served:
        figures = evaluate_recommender(
            served.recommender(data.interactions.user_ids, data.interactions.item_ids), cases
        )
    assert (
        round(figures["recall@10"], 4) == json.loads((version / "evaluation.json").read_text())["recall@10"]
    )


def test_retrained_version_stores_its_training_data_with_the_events(
    retrained: Path, feedback: DriftedFeedback
) -> None:
    stored = load_training_data(retrained)
    interactions = stored.interactions
    pairs = {
        (interactions.user_ids[u], interactions.item_ids[i]): int(w)
        for u, i, w in zip(interactions.user_rows, interactions.item_rows, stored.weights, strict=True)
    }
    purchase = next(e for e in feedback.events if e.type is EventType.PURCHASE)
    view = next(e for e in feedback.events if e.type is EventType.VIEW)
    assert pairs[(purchase.user_id, purchase.item_id)] == 3
    assert pairs[(view.user_id, view.item_id)] >= 1
    dataset = json.loads((retrained / "metadata.json").read_text())["dataset"]
    assert dataset["num_interactions"] == len(interactions)
    assert dataset["new_interactions"] > 0.9 * len(feedback.events) - dataset["unknown_item_events"]
    positive = {(e.user_id, e.item_id) for e in feedback.events if e.type.is_positive}
    assert len(positive & pairs.keys()) == dataset["new_interactions"]


def test_retraining_again_without_new_events_says_so(retrained: Path, state_dir: Path) -> None:
    with pytest.raises(RetrainError, match="nothing new to learn: .* version 2"):
        retrain(retrained.parent.parent, MODEL, StateSettings(state_dir=state_dir), show_progress=False)
    assert sorted(path.name for path in retrained.parent.iterdir()) == ["1", "2", "config.yaml"]


def test_a_server_on_the_repository_serves_the_retrained_version(
    retrained: Path, state_dir: Path, tmp_path: Path, feedback: DriftedFeedback
) -> None:
    state = tmp_path / "state"
    shutil.copytree(state_dir, state)  # the server writes to its state directory
    settings = ServerSettings(
        model_repository=retrained.parent.parent, warmup_rounds=1, state=StateSettings(state_dir=state)
    )
    with ServerThread(settings) as server, RecommenderClient(server.address) as client:
        info = client.model_info()
        assert info.model_version == "2"
        assert info.num_items == TINY["num_items"] + DRIFT.new_items - DRIFT.deleted_items
        assert info.evaluation["previous_recall@10"] == pytest.approx(
            json.loads((retrained / "evaluation.json").read_text())["previous_recall@10"]
        )
        drifted = feedback.events[-1].user_id
        assert len(client.recommend(drifted, k=10).items) == 10


# Bad input ------------------------------------------------------------------------------------------


def _failure(*args: str) -> str:
    """The one line a failed `recserve retrain` writes; fails unless it exits 1 without a traceback."""
    capture = _Capture()
    with capture:
        code = main(["retrain", "--no-progress", *args])
    assert code == 1, capture.out
    lines = capture.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), capture.err
    return lines[0]


def test_no_repository_or_model(tmp_path: Path, repository: Path) -> None:
    assert "no model repository at" in _failure("--model-repository", str(tmp_path / "missing"))
    message = _failure("--model-repository", str(repository), "--model-name", "other")
    assert "no model 'other'" in message and "recommender" in message


def test_no_complete_version(tmp_path: Path, repository: Path) -> None:
    (tmp_path / MODEL / "1").mkdir(parents=True)  # a version still being copied: no manifest
    assert "no built version" in _failure("--model-repository", str(tmp_path))


def test_a_version_without_training_data(tmp_path: Path, repository: Path, state_dir: Path) -> None:
    old = tmp_path / MODEL / "1"
    shutil.copytree(repository / MODEL / "1", old)
    (old / TRAINING_DATA).unlink()
    (old / "manifest.json").unlink()
    write_manifest(old)  # complete, as a version built before versions kept their data
    message = _failure("--model-repository", str(tmp_path), "--state-dir", str(state_dir))
    assert "stores no training data" in message and "build-demo" in message


def test_no_events(tmp_path: Path, repository: Path) -> None:
    empty = tmp_path / "state"
    asyncio.run(_write_memory(empty, DriftedFeedback((), (), ())))
    message = _failure("--model-repository", str(repository), "--state-dir", str(empty))
    assert "nothing new to learn" in message and "0 recorded events" in message
    assert "no state directory" in _failure(
        "--model-repository", str(repository), "--state-dir", str(tmp_path / "never")
    )


def test_events_that_leave_nothing_to_evaluate_on(tmp_path: Path, repository: Path) -> None:
    state = tmp_path / "state"
    two = (
        UserEvent("newcomer", "item-1", EventType.VIEW, 1),
        UserEvent("newcomer", "item-2", EventType.VIEW, 2),
    )
    asyncio.run(_write_memory(state, DriftedFeedback((), (), two)))
    message = _failure("--model-repository", str(repository), "--state-dir", str(state))
    assert "the 2 new interactions leave no case to evaluate on" in message


def test_unreadable_state(tmp_path: Path, repository: Path, state_dir: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert "is not a directory" in _failure(
        "--model-repository", str(repository), "--state-dir", str(not_a_directory)
    )
    damaged = tmp_path / "damaged"
    shutil.copytree(state_dir, damaged)
    segment = next(damaged.glob("log-*.bin"))
    data = bytearray(segment.read_bytes())
    data[HEADER.size + 2] ^= 0xFF  # inside the first of several records
    segment.write_bytes(bytes(data))
    assert "is damaged" in _failure("--model-repository", str(repository), "--state-dir", str(damaged))


def test_redis_that_does_not_answer(repository: Path) -> None:
    message = _failure(
        "--model-repository",
        str(repository),
        "--state-backend",
        "redis",
        "--redis-url",
        "redis://127.0.0.1:1/0",
    )
    assert "cannot read the recorded state from Redis at redis://127.0.0.1:1/0" in message
