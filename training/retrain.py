"""`retrain`: the next version of a model, from the newest version's training data plus what users did since.

The newest complete version N stores the interactions it was trained on (`training_data.npz`); the server
recorded events and catalog changes since (its live state, `recorded`). Both together (`feedback`) are
the data of version N+1, trained from scratch by the same code as `build-demo` and published the same way
(a staging directory, `manifest.json` last). Each user's most recent new interaction is held out: version
N+1 and version N, each as a server would serve it now (`served`), are evaluated on those same cases, and
both results go into `evaluation.json`, so that whether retraining helped is there to read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from recserve.server.exceptions import UnavailableError
from recserve.server.repository import resolve_version_dir
from recserve.server.settings import StateSettings
from recserve.training.build import (
    TrainedModel,
    TrainingData,
    epochs_kept,
    index_recall,
    publish_built,
    ranking_figures,
    train_models,
    write_version_files,
)
from recserve.training.config import DemoConfig, load_demo_config
from recserve.training.data import Examples, split_by_time
from recserve.training.evaluate import evaluate_recommender, popularity_recommender, sample_cases
from recserve.training.feedback import (
    FeedbackSummary,
    MergedTraining,
    merge_feedback,
    new_cases,
    weighted_examples,
)
from recserve.training.metadata import version_metadata
from recserve.training.progress import BuildProgress
from recserve.training.recorded import RecordedState, StateReadError, read_recorded_state
from recserve.training.train import configure_tensorflow
from recserve.training.training_data import StoredTraining, TrainingDataError, load_training_data

logger = logging.getLogger(__name__)


class RetrainError(Exception):
    """Retraining cannot go ahead; the message (one line) says why."""


@dataclass(frozen=True)
class Retrained:
    """The version made, the one it was made from, its evaluation and what the recorded state changed."""

    version_dir: Path
    previous_version: str
    evaluation: dict[str, float | int]
    summary: FeedbackSummary


@dataclass(frozen=True)
class _Inputs:
    """Everything training needs, read and checked before any training starts."""

    previous: Path
    recorded: RecordedState
    merged: MergedTraining
    data: TrainingData
    cases: Examples  # held out: each user's most recent new interaction


def retrain(
    repository: Path,
    model_name: str,
    state: StateSettings,
    config: DemoConfig | None = None,
    show_progress: bool = True,
) -> Retrained:
    """Train, export and evaluate version N+1 of `model_name` from version N and the recorded state.

    Training settings come from `config`, else from the `demo:` section of the model's `config.yaml`.

    Raises:
        RetrainError: no such model or complete version, a version without stored training data, an
            unreadable state, or nothing new in it to learn from; nothing is written then.
    """
    model_dir = _model_dir(Path(repository), model_name)
    previous = _newest_version(model_dir)
    config = config or _config(model_dir)
    configure_tensorflow(config.seed, config.threads)
    with BuildProgress(show_progress) as progress:
        with progress.stage("read state"):
            base, recorded = _read(previous, state)
        with progress.stage("data"):
            inputs = _inputs(previous, base, recorded, config)
        trained = train_models(inputs.data, config, progress)
        version_dir, evaluation = publish_built(
            model_dir,
            progress,
            lambda staging: write_version_files(staging, trained, inputs.data, config, inputs.merged.weights),
            lambda number: _metadata(model_name, number, inputs, trained, config),
            lambda staging: _evaluate(staging, inputs, trained, config),
        )
    title = f"{model_name} version {version_dir.name} (retrained from {previous.name})"
    progress.show_results(title, {**evaluation, **epochs_kept(trained)})
    return Retrained(version_dir, previous.name, evaluation, inputs.merged.summary)


def _model_dir(repository: Path, model_name: str) -> Path:
    if not repository.is_dir():
        raise RetrainError(f"no model repository at {repository}")
    model_dir = repository / model_name
    if not model_dir.is_dir():
        have = sorted(path.name for path in repository.iterdir() if path.is_dir())
        raise RetrainError(f"no model '{model_name}' in {repository} (have: {', '.join(have) or 'none'})")
    return model_dir


def _newest_version(model_dir: Path) -> Path:
    try:
        return resolve_version_dir(model_dir)
    except UnavailableError as error:
        raise RetrainError(str(error)) from error


def _config(model_dir: Path) -> DemoConfig:
    try:
        return load_demo_config(model_dir / "config.yaml")
    except (ValidationError, OSError, ValueError) as error:
        details = " ".join(str(error).split())
        raise RetrainError(f"{model_dir / 'config.yaml'} is not a valid model config: {details}") from error


def _read(previous: Path, state: StateSettings) -> tuple[StoredTraining, RecordedState]:
    """The previous version's training data and what the server recorded."""
    try:
        return load_training_data(previous), read_recorded_state(state)
    except (TrainingDataError, StateReadError) as error:
        raise RetrainError(str(error)) from error


def _inputs(previous: Path, base: StoredTraining, recorded: RecordedState, config: DemoConfig) -> _Inputs:
    """Both merged, split for training, and the held-out cases; RetrainError when there are none."""
    merged = merge_feedback(base, recorded)
    if merged.summary.new_interactions == 0:
        raise RetrainError(_nothing_new(previous, recorded, merged.summary))
    interactions = merged.interactions
    split = split_by_time(interactions, config.context_length, config.ranker_holdout_per_user)
    cases = new_cases(split.test, interactions, merged.is_new)
    if len(cases) == 0:
        raise RetrainError(
            f"the {merged.summary.new_interactions} new interactions leave no case to evaluate on: a user's "
            f"latest one is held out only when they have at least {config.ranker_holdout_per_user + 2} "
            "interactions in all; record more events"
        )
    split = dataclasses.replace(split, train=weighted_examples(split.train, interactions, merged.weights))
    tags = interactions.item_tag_indices()
    item_tags = np.concatenate([np.zeros((1, tags.shape[1]), dtype=np.int32), tags])  # by item index
    data = TrainingData(interactions, split, None, item_tags)
    return _Inputs(previous, recorded, merged, data, cases)


def _nothing_new(previous: Path, recorded: RecordedState, summary: FeedbackSummary) -> str:
    """Why there is nothing to retrain on, in one line."""
    counted = f"{summary.recorded_events} recorded events"
    if summary.unknown_item_events:
        counted += f", {summary.unknown_item_events} of them on items not in the live catalog"
    return (
        f"nothing new to learn: the {recorded.where} holds no event that adds an interaction to the "
        f"training data of version {previous.name} ({counted}); record events (the Events API) and retrain"
    )


def _metadata(
    name: str, version: int, inputs: _Inputs, trained: TrainedModel, config: DemoConfig
) -> dict[str, Any]:
    """build-demo's metadata, with `dataset` saying what this version was retrained from."""
    metadata = version_metadata(name, version, inputs.data, trained, config)
    metadata["dataset"] = {
        "source": "retrain",
        "retrained_from": inputs.previous.name,
        "origin": _origin(inputs.previous),
        "num_interactions": len(inputs.data.interactions),
        "state": inputs.recorded.where,
        **dataclasses.asdict(inputs.merged.summary),
        "evaluation_cases": len(inputs.cases),
    }
    return metadata


def _origin(previous: Path) -> str:
    """Where the first version's data came from: its own dataset source, or what it was retrained from."""
    dataset = json.loads((previous / "metadata.json").read_text()).get("dataset", {})
    if dataset.get("source") == "retrain":
        return str(dataset.get("origin", "unknown"))
    return str(dataset.get("path", dataset.get("source", "unknown")))


def _evaluate(
    version_dir: Path, inputs: _Inputs, trained: TrainedModel, config: DemoConfig
) -> dict[str, float | int]:
    """Both versions, each served with the live catalog, on the same held-out recent interactions."""
    from recserve.training.served import ServedVersion  # the server's runtime: imported when used

    data = inputs.data
    cases = sample_cases(inputs.cases, config.eval_users, config.seed)
    user_ids, item_ids = data.interactions.user_ids, data.interactions.item_ids
    catalog = inputs.recorded.catalog
    with ServedVersion(version_dir, catalog) as new, ServedVersion(inputs.previous, catalog) as old:
        model = evaluate_recommender(new.recommender(user_ids, item_ids), cases)
        previous = evaluate_recommender(old.recommender(user_ids, item_ids), cases)
    popular = evaluate_recommender(popularity_recommender(data.split.item_popularity), cases)
    return {
        **ranking_figures(model, popular, index_recall(version_dir, trained, cases, config), len(cases)),
        "previous_version": int(inputs.previous.name),
        "previous_recall@10": round(previous["recall@10"], 4),
        "previous_ndcg@10": round(previous["ndcg@10"], 4),
    }
