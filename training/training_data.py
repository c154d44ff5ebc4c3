"""The interactions a version was trained on, kept inside it (`training_data.npz`) so it can be retrained.

The file holds index arrays only; the vocabularies they index are the version's own `user_ids.txt`,
`item_ids.txt`, `tag_ids.txt` and `item_tags.npy`, so nothing is stored twice. Row `r` of an array is one
interaction: user row, item row (0-based rows of those files), time in seconds and weight (how strongly it
counts in tower training: 1 for generated or MovieLens data, more for strong recorded events).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recserve.training.data import Interactions

TRAINING_DATA = "training_data.npz"
FORMAT_VERSION = 1


class TrainingDataError(Exception):
    """A version has no stored training data, or it does not read back; the message says which."""


@dataclass(frozen=True)
class StoredTraining:
    """A version's interactions (vocabularies included) and each interaction's weight."""

    interactions: Interactions
    weights: np.ndarray  # uint8 [N], >= 1


def save_training_data(
    directory: Path, interactions: Interactions, weights: np.ndarray | None = None
) -> Path:
    """Write `training_data.npz` into a version directory; `weights` None means 1 for every interaction."""
    if weights is None:
        weights = np.ones(len(interactions), dtype=np.uint8)
    path = directory / TRAINING_DATA
    np.savez_compressed(
        path,
        format_version=np.array(FORMAT_VERSION),
        user_rows=interactions.user_rows.astype(np.int32),
        item_rows=interactions.item_rows.astype(np.int32),
        timestamps=interactions.timestamps.astype(np.int64),
        weights=np.asarray(weights, dtype=np.uint8),
        source=np.array(interactions.source),
    )
    return path


def load_training_data(version_dir: Path) -> StoredTraining:
    """The interactions stored in `version_dir`, indexed by its vocabulary files.

    Raises:
        TrainingDataError: the version stores none (built before versions kept their data), or the file
            does not match the version's vocabularies.
    """
    path = version_dir / TRAINING_DATA
    if not path.is_file():
        raise TrainingDataError(
            f"version {version_dir.name} of model '{version_dir.parent.name}' ({version_dir}) stores no "
            f"training data ({TRAINING_DATA}): it was built before versions kept it; build a new version "
            "with `recserve build-demo` and retrain from that one"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            stored = {name: arrays[name] for name in arrays.files}
        user_ids = _ids(version_dir / "user_ids.txt")
        item_ids = _ids(version_dir / "item_ids.txt")
        tag_ids = _ids(version_dir / "tag_ids.txt")
        item_tags = np.load(version_dir / "item_tags.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise TrainingDataError(f"{path} does not read back ({type(error).__name__}: {error})") from error
    interactions = Interactions(
        user_ids=user_ids,
        item_ids=item_ids,
        user_rows=stored["user_rows"].astype(np.int32),
        item_rows=stored["item_rows"].astype(np.int32),
        timestamps=stored["timestamps"].astype(np.int64),
        source=str(stored["source"]),
        tag_ids=tag_ids,
        item_tags=tuple(tuple(tag_ids[index - 1] for index in row if index > 0) for row in item_tags),
    )
    _check(path, interactions, stored["weights"])
    return StoredTraining(interactions, stored["weights"].astype(np.uint8))


def _ids(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text().splitlines())


def _check(path: Path, interactions: Interactions, weights: np.ndarray) -> None:
    """Every array has a row per interaction and every row index is inside its vocabulary."""
    count = len(interactions)
    if not (interactions.item_rows.size == interactions.timestamps.size == weights.size == count):
        raise TrainingDataError(f"{path}: its arrays differ in length")
    if count and (
        interactions.user_rows.min() < 0
        or interactions.user_rows.max() >= interactions.num_users
        or interactions.item_rows.min() < 0
        or interactions.item_rows.max() >= interactions.num_items
    ):
        raise TrainingDataError(f"{path}: a row is outside the version's user_ids.txt or item_ids.txt")
