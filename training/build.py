"""`build_demo`: data, training, export and offline evaluation of one new model version."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from recserve.training import export
from recserve.training.cold_start import ColdStartItems, held_out_count, hold_out_items, random_items
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.data import Interactions, Split, split_by_time
from recserve.training.demo_data import generate_demo
from recserve.training.evaluate import (
    RecommendFn,
    ann_recall_at_k,
    evaluate_recommender,
    popularity_recommender,
    sample_cases,
)
from recserve.training.movielens import read_movielens
from recserve.training.progress import BuildProgress
from recserve.training.towers import Towers, build_ranker, build_towers
from recserve.training.train import (
    configure_tensorflow,
    embed_users,
    tower_steps_per_epoch,
    train_ranker,
    train_towers,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """What a build learns from: the training vocabulary's interactions, split, and the held-out items."""

    interactions: Interactions  # without the held-out items: its items are the version's vocabulary
    split: Split
    cold: ColdStartItems | None


def build_demo(
    repository: Path,
    model_name: str = "recommender",
    config: DemoConfig | None = None,
    ratings_path: Path | None = None,
    show_progress: bool = True,
) -> Path:
    """Train, export and evaluate a new version of `model_name`; returns its directory.

    Settings come from `config`, else from `<repository>/<model_name>/config.yaml` (defaults when it is
    missing). The data is generated, or read from a MovieLens ratings file when `ratings_path` is given.
    The version appears, complete with `evaluation.json`, under the next version number; a failed build
    leaves nothing behind.
    """
    model_dir = Path(repository) / model_name
    config = config or load_demo_config(model_dir / "config.yaml")
    configure_tensorflow(config.seed, config.threads)
    with BuildProgress(show_progress) as progress:
        with progress.stage("data"):
            data = training_data(config, ratings_path)
            interactions, split = data.interactions, data.split
        start = time.perf_counter()
        towers, ranker, losses = _train(interactions, split, config, progress)
        training_seconds = time.perf_counter() - start
        staging = export.staging_directory(model_dir)
        try:
            with progress.stage("export"):
                item_embeddings = _write_version(staging, towers, ranker, interactions, split, config)
                if data.cold is not None:
                    cold = data.cold
                    export.write_cold_start_items(
                        staging / "cold_start_items.jsonl", cold.item_ids, cold.item_tags
                    )
                metadata = _metadata(model_name, model_dir, data, config, losses, training_seconds)
                export.write_json(staging / "metadata.json", metadata)
            with progress.stage("evaluate"):
                evaluation = _evaluate(staging, towers, item_embeddings, split, config)
                export.write_json(staging / "evaluation.json", evaluation)
            version_dir = export.publish_version(staging, model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    progress.show_results(f"{model_name} version {version_dir.name}", evaluation)
    return version_dir


def training_data(config: DemoConfig, ratings_path: Path | None = None) -> TrainingData:
    """The demo data (or a MovieLens file's), less the held-out items, split by time.

    Generated data gets `cold_start_holdout` more items than `num_items`, and those newest ids
    (`item-<num_items + 1>`...) are the held-out ones, so the vocabulary stays `item-1`..`item-<num_items>`
    (demo item rows are in random order of popularity and topic). From a file, a random share of the
    items is held out.
    """
    if ratings_path is not None:
        interactions = read_movielens(ratings_path, config.movielens_min_rating)
        held_out = random_items(interactions.num_items, config.cold_start_holdout, config.seed)
    else:
        extra = held_out_count(config.num_items, config.cold_start_holdout)
        interactions = generate_demo(
            num_users=config.num_users,
            num_items=config.num_items + extra,
            seed=config.seed,
            interactions_per_user=config.interactions_per_user,
            items_per_topic=config.items_per_topic,
            session_length=config.session_length,
            popularity_exponent=config.popularity_exponent,
            num_tags=config.num_tags,
            tag_noise=config.tag_noise,
        )
        held_out = np.arange(config.num_items, config.num_items + extra)
    interactions, cold = hold_out_items(interactions, held_out, config.context_length)
    split = split_by_time(interactions, config.context_length, config.ranker_holdout_per_user)
    return TrainingData(interactions, split, cold)


def _train(
    interactions: Interactions, split: Split, config: DemoConfig, progress: BuildProgress
) -> tuple[Towers, keras.Model, dict[str, list[float]]]:
    """The towers, then the ranker on top of the frozen item tower; returns the models and loss curves."""
    towers = build_towers(
        interactions.num_users, interactions.num_items, config.embedding_dim, config.hidden_units
    )
    steps = config.epochs * tower_steps_per_epoch(len(split.train), config.batch_size)
    with progress.stage("train towers", total=steps) as advance:
        tower_loss = train_towers(towers, split.train, config, on_step=advance)
    ranker = build_ranker(
        towers.item_tower,
        interactions.num_items,
        1.0 / config.temperature,
        -math.log(config.ranker_negatives),
    )
    with progress.stage("train ranker", total=config.ranker_epochs) as advance:
        ranker_loss = train_ranker(
            ranker,
            towers.user_tower,
            _item_embeddings(towers, interactions.num_items),
            split.ranker,
            split.item_popularity,
            config,
            on_step=advance,
        )
    return towers, ranker, {"tower_loss": tower_loss, "ranker_loss": ranker_loss}


def _item_embeddings(towers: Towers, num_items: int) -> np.ndarray:
    """Item-tower outputs for item indices 1..num_items: row r is item index r + 1."""
    return np.asarray(towers.item_tower(np.arange(1, num_items + 1, dtype=np.int32)), dtype=np.float32)


def _write_version(
    directory: Path,
    towers: Towers,
    ranker: keras.Model,
    interactions: Interactions,
    split: Split,
    config: DemoConfig,
) -> np.ndarray:
    """Every file of a version but the JSON ones; returns the item embeddings it indexed."""
    export.save_user_tower(towers.user_tower, directory / "user_tower")
    export.save_item_tower(towers.item_tower, directory / "item_tower")
    export.save_ranker(ranker, directory / "ranker", config.embedding_dim)
    item_embeddings = _item_embeddings(towers, interactions.num_items)
    export.write_item_index(directory / "items.ann", item_embeddings, config.n_trees, config.seed)
    export.write_item_arrays(directory, item_embeddings, split.item_popularity)
    export.write_ids(directory / "item_ids.txt", interactions.item_ids)
    export.write_ids(directory / "user_ids.txt", interactions.user_ids)
    return item_embeddings


def _metadata(
    name: str,
    model_dir: Path,
    data: TrainingData,
    config: DemoConfig,
    losses: dict[str, list[float]],
    training_seconds: float,
) -> dict[str, Any]:
    interactions, split = data.interactions, data.split
    dataset: dict[str, Any] = {
        "source": interactions.source.split(":", 1)[0],
        "num_interactions": len(interactions),
    }
    if interactions.source == "demo":
        dataset["seed"] = config.seed
    else:
        dataset["path"] = interactions.source.split(":", 1)[1]
    dataset["cold_start_items"] = len(data.cold) if data.cold is not None else 0
    dataset["cold_start_interactions"] = len(data.cold.cases) if data.cold is not None else 0
    return {
        "name": name,
        "version": str(export.next_version(model_dir)),
        "embedding_dim": config.embedding_dim,
        "num_users": interactions.num_users,
        "num_items": interactions.num_items,
        "context_length": config.context_length,
        "index": {"library": "annoy", "metric": "angular", "n_trees": config.n_trees},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset,
        "training": {
            **config.model_dump(include=_TRAINING_KEYS),
            "train_examples": len(split.train),
            "ranker_examples": len(split.ranker),
            "test_examples": len(split.test),
            **{key: [round(value, 4) for value in curve] for key, curve in losses.items()},
            "wall_seconds": round(training_seconds, 1),
        },
    }


_TRAINING_KEYS = {
    "epochs",
    "batch_size",
    "learning_rate",
    "temperature",
    "user_dropout",
    "context_dropout",
    "hidden_units",
    "ranker_epochs",
    "ranker_negatives",
    "ranker_learning_rate",
    "ranker_holdout_per_user",
}


def _evaluate(
    version_dir: Path, towers: Towers, item_embeddings: np.ndarray, split: Split, config: DemoConfig
) -> dict[str, float | int]:
    """The figures of evaluation.json, from a sample of users' last interactions."""
    cases = sample_cases(split.test, config.eval_users, config.seed)
    model = evaluate_recommender(pipeline_recommender(version_dir), cases)
    popular = evaluate_recommender(popularity_recommender(split.item_popularity), cases)
    queries = embed_users(towers.user_tower, cases.user_indices, cases.contexts)
    ann = ann_recall_at_k(
        version_dir / "items.ann",
        item_embeddings,
        100,
        config.search_k,
        config.ann_queries,
        queries,
        config.seed,
    )
    return {
        "recall@10": round(model["recall@10"], 4),
        "ndcg@10": round(model["ndcg@10"], 4),
        "popular_recall@10": round(popular["recall@10"], 4),
        "popular_ndcg@10": round(popular["ndcg@10"], 4),
        "ann_recall@100": round(ann.recall, 4),
        "users_evaluated": len(cases),
    }


def pipeline_recommender(version_dir: Path) -> RecommendFn:
    """The server's own pipeline over a built version, so evaluation measures what will be served.

    Imported here, not at module level: the server imports its runtime at import time, which the rest
    of this package does not need.
    """
    from recserve.server.pipeline import offline_recommender

    return offline_recommender(version_dir)
