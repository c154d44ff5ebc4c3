"""`build_demo`: data, training, export and offline evaluation of one new model version."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from recserve.training import export
from recserve.training.cold_start import (
    ColdStartItems,
    evaluate_cold_start,
    held_out_count,
    hold_out_items,
    random_items,
)
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.data import Examples, Interactions, Split, split_by_time
from recserve.training.demo_data import generate_demo
from recserve.training.embed import embed_items, embed_users
from recserve.training.evaluate import (
    RecommendFn,
    ann_recall_at_k,
    evaluate_recommender,
    popularity_recommender,
    sample_cases,
)
from recserve.training.metadata import version_metadata
from recserve.training.movielens import check_trainable, read_movielens
from recserve.training.progress import BuildProgress
from recserve.training.towers import Towers, build_ranker, build_towers
from recserve.training.train import TowerHistory, configure_tensorflow, tower_steps_per_epoch, train_towers
from recserve.training.train_ranker import ItemVectors, RankerHistory, train_ranker
from recserve.training.training_data import save_training_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """What a build learns from: the training vocabulary's interactions, split, and the held-out items."""

    interactions: Interactions  # without the held-out items: its items are the version's vocabulary
    split: Split
    cold: ColdStartItems | None
    item_tags: np.ndarray  # int32 [num_items + 1, T]: tag indices by item index, row 0 empty


@dataclass(frozen=True)
class TrainedModel:
    """The trained models, the item-tower outputs the version stores, and how training went."""

    towers: Towers
    ranker: keras.Model
    items: ItemVectors
    towers_history: TowerHistory
    ranker_history: RankerHistory
    seconds: float


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
        trained = train_models(data, config, progress)
        version_dir, evaluation = publish_built(
            model_dir,
            progress,
            lambda staging: write_version_files(staging, trained, data, config),
            lambda number: version_metadata(model_name, number, data, trained, config),
            lambda staging: _evaluate(staging, trained, data, config),
        )
    progress.show_results(f"{model_name} version {version_dir.name}", {**evaluation, **epochs_kept(trained)})
    return version_dir


def publish_built(
    model_dir: Path,
    progress: BuildProgress,
    write_files: Callable[[Path], None],
    metadata: Callable[[int], dict[str, Any]],
    evaluate: Callable[[Path], dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """Export a trained version into a staging directory and publish it; a failure leaves nothing behind.

    Its files first, then metadata.json (for the next version number), then evaluation.json.
    """
    staging = export.staging_directory(model_dir)
    try:
        with progress.stage("export"):
            write_files(staging)
            export.write_json(staging / "metadata.json", metadata(export.next_version(model_dir)))
        with progress.stage("evaluate"):
            evaluation = evaluate(staging)
            export.write_json(staging / "evaluation.json", evaluation)
        return export.publish_version(staging, model_dir), evaluation
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def training_data(config: DemoConfig, ratings_path: Path | None = None) -> TrainingData:
    """The demo data (or a MovieLens file's), less the held-out items, split by time.

    Generated data gets `cold_start_holdout` more items than `num_items`, and those newest ids
    (`item-<num_items + 1>`...) are the held-out ones, so the vocabulary stays `item-1`..`item-<num_items>`
    (demo item rows are in random order of popularity and topic). From a file, a random share of the
    items is held out.
    """
    if ratings_path is not None:
        interactions = read_movielens(ratings_path, config.movielens_min_rating)
        check_trainable(interactions)
        if not interactions.tag_ids:
            logger.warning(
                "%s: no movie file with genres beside it (movies.csv, movies.dat or u.item): items have no "
                "tags, so items upserted later (and the held-out ones) are placed without content features",
                interactions.source,
            )
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
    tags = interactions.item_tag_indices()
    item_tags = np.concatenate([np.zeros((1, tags.shape[1]), dtype=np.int32), tags])
    return TrainingData(interactions, split, cold, item_tags)


def train_models(data: TrainingData, config: DemoConfig, progress: BuildProgress) -> TrainedModel:
    """The towers, then the ranker on top of the frozen towers' outputs."""
    start = time.perf_counter()
    interactions = data.interactions
    towers = build_towers(
        interactions.num_users,
        interactions.num_items,
        interactions.num_tags,
        config.embedding_dim,
        config.hidden_units,
    )
    steps = config.max_epochs * tower_steps_per_epoch(
        len(data.split.train), config.batch_size, config.max_examples_per_epoch
    )
    validation = sample_cases(data.split.ranker, config.validation_cases, config.seed)
    with progress.stage("train towers", total=steps) as advance:
        towers_history = train_towers(towers, data.split.train, validation, data.item_tags, config, advance)
    item_tower = towers.item_tower
    items = ItemVectors(
        embed_items(item_tower, data.item_tags), embed_items(item_tower, data.item_tags, True)
    )
    ranker = build_ranker(
        interactions.num_items,
        config.embedding_dim,
        1.0 / config.temperature,
        -math.log(config.ranker_negatives),
    )
    with progress.stage("train ranker", total=config.ranker_max_epochs) as advance:
        ranker_history = train_ranker(
            ranker, towers.user_tower, items, data.split.ranker, data.split.item_popularity, config, advance
        )
    seconds = time.perf_counter() - start
    return TrainedModel(towers, ranker, items, towers_history, ranker_history, seconds)


def write_version_files(
    directory: Path,
    trained: TrainedModel,
    data: TrainingData,
    config: DemoConfig,
    weights: np.ndarray | None = None,
) -> None:
    """Every file of a version but the JSON ones, its training data (`weights` of it) included."""
    export.save_user_tower(trained.towers.user_tower, directory / "user_tower", config.embedding_dim)
    export.save_item_tower(trained.towers.item_tower, directory / "item_tower")
    export.save_ranker(trained.ranker, directory / "ranker", config.embedding_dim)
    item_embeddings = trained.items.known
    export.write_item_index(directory / "items.ann", item_embeddings, config.n_trees, config.seed)
    export.write_item_arrays(directory, item_embeddings, data.split.item_popularity, data.item_tags[1:])
    export.write_ids(directory / "item_ids.txt", data.interactions.item_ids)
    export.write_ids(directory / "user_ids.txt", data.interactions.user_ids)
    export.write_ids(directory / "tag_ids.txt", data.interactions.tag_ids)
    save_training_data(directory, data.interactions, weights)
    if data.cold is not None:
        cold = data.cold
        export.write_cold_start_items(directory / "cold_start_items.jsonl", cold.item_ids, cold.item_tags)


def _evaluate(
    version_dir: Path, trained: TrainedModel, data: TrainingData, config: DemoConfig
) -> dict[str, float | int]:
    """The figures of evaluation.json: users' last interactions, and the held-out items' interactions."""
    cases = sample_cases(data.split.test, config.eval_users, config.seed)
    model = evaluate_recommender(pipeline_recommender(version_dir), cases)
    popular = evaluate_recommender(popularity_recommender(data.split.item_popularity), cases)
    evaluation = ranking_figures(
        model, popular, index_recall(version_dir, trained, cases, config), len(cases)
    )
    if data.cold is not None:
        tag_ids = data.interactions.tag_ids
        cold = evaluate_cold_start(version_dir, data.cold, tag_ids, config.eval_users, config.seed)
        evaluation.update(cold)
    return evaluation


def index_recall(version_dir: Path, trained: TrainedModel, cases: Examples, config: DemoConfig) -> float:
    """Annoy's recall@100 of exact search at the configured `search_k`, for the users of `cases`."""
    item_embeddings = trained.items.known
    queries = embed_users(trained.towers.user_tower, item_embeddings, cases.user_indices, cases.contexts)
    ann = ann_recall_at_k(
        version_dir / "items.ann",
        item_embeddings,
        100,
        config.search_k,
        config.ann_queries,
        queries,
        config.seed,
    )
    return ann.recall


def ranking_figures(
    model: dict[str, float], popular: dict[str, float], ann_recall: float, users: int
) -> dict[str, float | int]:
    """evaluation.json's common figures: the model's and most-popular's recall and NDCG, the index recall."""
    return {
        "recall@10": round(model["recall@10"], 4),
        "ndcg@10": round(model["ndcg@10"], 4),
        "popular_recall@10": round(popular["recall@10"], 4),
        "popular_ndcg@10": round(popular["ndcg@10"], 4),
        "ann_recall@100": round(ann_recall, 4),
        "users_evaluated": users,
    }


def epochs_kept(trained: TrainedModel) -> dict[str, int]:
    """The epochs early stopping kept, for the results table."""
    return {
        "tower_epochs": trained.towers_history.best_epoch,
        "ranker_epochs": trained.ranker_history.best_epoch,
    }


def pipeline_recommender(version_dir: Path) -> RecommendFn:
    """The server's own pipeline over a built version, so evaluation measures what will be served.

    Imported here, not at module level: the server imports its runtime at import time, which the rest
    of this package does not need.
    """
    from recserve.server.pipeline import offline_recommender

    return offline_recommender(version_dir)
