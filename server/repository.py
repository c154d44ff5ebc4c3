"""The model repository: finds a model's versions on disk and loads one into memory.

A version directory holds SavedModels, an Annoy index, the item embeddings and tags, and id maps (see
docs/model-repository.md). Loading reads everything once; the index is memory-mapped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recserve.server.exceptions import UnavailableError
from recserve.server.manifest import incompleteness
from recserve.server.runtime.ann_index import AnnIndex
from recserve.server.runtime.tf_model import SignatureRunner

logger = logging.getLogger(__name__)


def _nothing() -> None:
    """No pause between the parts of a load."""


@dataclass(frozen=True)
class Vocabulary:
    """Maps external string ids to the models' 1-based indices (0 = unknown) and back."""

    ids: tuple[str, ...]
    index_by_id: dict[str, int] = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> Vocabulary:
        """One id per line; line r is index r + 1."""
        ids = tuple(path.read_text().splitlines())
        return cls(ids, {item_id: row + 1 for row, item_id in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, external_id: str) -> int:
        """The index of `external_id`, 0 when unknown."""
        return self.index_by_id.get(external_id, 0)


@dataclass
class LoadedModel:
    """Everything one model version needs at serving time."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    evaluation: dict[str, float]
    users: Vocabulary
    items: Vocabulary
    user_tower: SignatureRunner
    ranker: SignatureRunner
    index: AnnIndex
    item_popularity: np.ndarray  # by item row
    item_embeddings: np.ndarray  # float32 [num_items, D] by item row: what the index holds, in memory
    tags: Vocabulary
    item_tags: np.ndarray  # int32 [num_items, T] by item row: 1-based tag indices, 0-padded
    item_tower: SignatureRunner | None = None  # None for a version built without one

    @property
    def embedding_dim(self) -> int:
        """Size of the user and item embeddings."""
        return int(self.metadata["embedding_dim"])


def list_versions(model_dir: Path) -> list[str]:
    """Version directory names (numeric), lowest first."""
    if not model_dir.is_dir():
        return []
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def complete_versions(model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The complete versions (lowest first) and, for each incomplete one, why (`manifest.py`)."""
    complete, incomplete = [], {}
    for name in list_versions(model_dir):
        reason = incompleteness(model_dir / name)
        if reason is None:
            complete.append(name)
        else:
            incomplete[name] = reason
    return complete, incomplete


def resolve_version_dir(model_dir: Path, version: str | None = None) -> Path:
    """The directory of `version`, or of the highest complete version when None.

    Raises:
        UnavailableError: no such complete version; the message says what there is.
    """
    versions, incomplete = complete_versions(model_dir)
    if version is None:
        if not versions:
            waiting = f" (incomplete: {_described(incomplete)})" if incomplete else ""
            raise UnavailableError(
                f"no built version of model '{model_dir.name}' in {model_dir}{waiting}; "
                "run `recserve build-demo`"
            )
        version = versions[-1]
    if version in incomplete:
        raise UnavailableError(f"version {version} of model '{model_dir.name}' is {incomplete[version]}")
    if version not in versions:
        raise UnavailableError(f"model '{model_dir.name}' has no version {version} (have: {versions})")
    return model_dir / version


def _described(reasons: dict[str, str]) -> str:
    return "; ".join(f"version {name}: {reason}" for name, reason in reasons.items())


def load_model(version_dir: Path, search_k: int = -1, between: Callable[[], None] = _nothing) -> LoadedModel:
    """Load one version directory (TensorFlow graphs, Annoy index, item arrays, id maps).

    The item tower is not on the Recommend path (the stored embeddings hold its outputs); it is loaded for
    the inference protocol's `item_tower` model. The item embeddings are read into a float32 array of
    their own, not memory-mapped: the server gathers context and ranked items from it. `between` runs
    after each part (a loading beside serving pauses there: `model_control.throttle`).
    """
    metadata = json.loads((version_dir / "metadata.json").read_text())
    evaluation_path = version_dir / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else {}
    dimension = int(metadata["embedding_dim"])
    parts: dict[str, Any] = {}
    for name, load in (
        ("users", lambda: Vocabulary.from_file(version_dir / "user_ids.txt")),
        ("items", lambda: Vocabulary.from_file(version_dir / "item_ids.txt")),
        ("user_tower", lambda: SignatureRunner(version_dir / "user_tower")),
        ("ranker", lambda: SignatureRunner(version_dir / "ranker")),
        ("index", lambda: _index(version_dir / "items.ann", dimension, search_k)),
        ("item_popularity", lambda: np.load(version_dir / "item_popularity.npy")),
        ("item_embeddings", lambda: np.load(version_dir / "item_embeddings.npy").astype(np.float32)),
        ("tags", lambda: Vocabulary.from_file(version_dir / "tag_ids.txt")),
        ("item_tags", lambda: np.load(version_dir / "item_tags.npy").astype(np.int32)),
        ("item_tower", lambda: _optional_runner(version_dir / "item_tower")),
    ):
        parts[name] = load()
        between()
    return LoadedModel(
        name=str(metadata.get("name", version_dir.parent.name)),
        version=version_dir.name,
        path=version_dir,
        metadata=metadata,
        evaluation={k: float(v) for k, v in evaluation.items() if isinstance(v, (int, float))},
        **parts,
    )


class VersionRejectedError(Exception):
    """A version directory that does not load or does not hang together; the message says why."""


def check_consistent(model: LoadedModel) -> None:
    """Every array and the index describe the same items at the same dimension.

    Raises:
        VersionRejectedError: they do not (a truncated or mixed-up version directory).
    """
    items, dimension = len(model.items), model.embedding_dim
    problems = []
    if model.item_embeddings.shape != (items, dimension):
        problems.append(f"item_embeddings.npy is {model.item_embeddings.shape}, not ({items}, {dimension})")
    if len(model.index) < items:
        problems.append(f"items.ann holds {len(model.index)} items, not {items}")
    if model.item_popularity.shape[0] != items or model.item_tags.shape[0] != items:
        problems.append("item_popularity.npy or item_tags.npy does not have a row per item")
    if problems:
        raise VersionRejectedError("; ".join(problems))


def load_checked(
    version_dir: Path, search_k: int = -1, between: Callable[[], None] = _nothing
) -> LoadedModel:
    """`load_model` (`between` as there), then `check_consistent`.

    Raises:
        VersionRejectedError: the version does not load, or does not hang together; the message says why.
    """
    try:
        model = load_model(version_dir, search_k, between)
    except VersionRejectedError:
        raise
    except Exception as error:  # noqa: BLE001 - any damage in the directory rejects the version
        raise VersionRejectedError(f"{type(error).__name__}: {error}") from error
    check_consistent(model)
    return model


def _index(path: Path, dimension: int, search_k: int) -> AnnIndex:
    """The version's Annoy index. Raises VersionRejectedError naming the dimension it was opened with."""
    try:
        return AnnIndex(path, dimension, search_k=search_k)
    except (OSError, RuntimeError) as error:  # unreadable, or not laid out as such an index
        raise VersionRejectedError(
            f"{path.name} cannot be opened as a {dimension}-dimensional angular Annoy index (the towers' "
            f"embedding_dim in metadata.json): {error}"
        ) from error


def _optional_runner(path: Path) -> SignatureRunner | None:
    """The SavedModel at `path`, or None if the version has none there."""
    return SignatureRunner(path) if path.is_dir() else None
