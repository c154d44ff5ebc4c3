"""`metadata.json` of a built version: sizes the server reads, and how the data and training went."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from recserve.training.config import DemoConfig
from recserve.training.train import VALIDATION_K

if TYPE_CHECKING:
    from recserve.training.build import TrainedModel, TrainingData

TRAINING_KEYS = {
    "max_epochs",
    "patience",
    "batch_size",
    "learning_rate",
    "temperature",
    "user_dropout",
    "context_dropout",
    "id_dropout",
    "hidden_units",
    "ranker_max_epochs",
    "ranker_patience",
    "ranker_negatives",
    "ranker_learning_rate",
    "ranker_holdout_per_user",
}


def version_metadata(
    name: str, version: int, data: TrainingData, trained: TrainedModel, config: DemoConfig
) -> dict[str, Any]:
    """The whole document (docs/model-repository.md)."""
    interactions = data.interactions
    return {
        "name": name,
        "version": str(version),
        "embedding_dim": config.embedding_dim,
        "num_users": interactions.num_users,
        "num_items": interactions.num_items,
        "num_tags": interactions.num_tags,
        "max_item_tags": int(data.item_tags.shape[1]),
        "context_length": config.context_length,
        "index": {"library": "annoy", "metric": "angular", "n_trees": config.n_trees},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": _dataset(data, config),
        "training": _training(data, trained, config),
    }


def _dataset(data: TrainingData, config: DemoConfig) -> dict[str, Any]:
    source, _, path = data.interactions.source.partition(":")
    dataset: dict[str, Any] = {"source": source, "num_interactions": len(data.interactions)}
    if source == "demo":
        dataset["seed"] = config.seed
    else:
        dataset["path"] = path
    dataset["cold_start_items"] = len(data.cold) if data.cold is not None else 0
    dataset["cold_start_interactions"] = len(data.cold.cases) if data.cold is not None else 0
    return dataset


def _training(data: TrainingData, trained: TrainedModel, config: DemoConfig) -> dict[str, Any]:
    towers, ranker = trained.towers_history, trained.ranker_history
    return {
        **config.model_dump(include=TRAINING_KEYS),
        "train_examples": len(data.split.train),
        "ranker_examples": len(data.split.ranker),
        "test_examples": len(data.split.test),
        "tower_epochs_run": len(towers.losses),
        "tower_best_epoch": towers.best_epoch,
        "tower_loss": _rounded(towers.losses),
        f"tower_validation_recall@{VALIDATION_K}": _rounded(towers.validation_recall),
        "ranker_epochs_run": len(ranker.losses),
        "ranker_best_epoch": ranker.best_epoch,
        "ranker_loss": _rounded(ranker.losses),
        "ranker_validation_loss": _rounded(ranker.validation_losses),
        "wall_seconds": round(trained.seconds, 1),
    }


def _rounded(curve: list[float]) -> list[float]:
    return [round(value, 4) for value in curve]
