"""Writes a model version directory exactly as docs/model-repository.md describes it.

Everything is written into a staging directory beside the versions (its name is not a number, so the
server never loads it) and renamed to the next version number only when complete: a half-written version
is never visible.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from annoy import AnnoyIndex

from recserve.server.manifest import write_manifest

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
SIGNATURE = "serving_default"


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version directory in `model_dir` (1 when there is none)."""
    if not model_dir.is_dir():
        return 1
    versions = [int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()]
    return max(versions, default=0) + 1


def staging_directory(model_dir: Path) -> Path:
    """A new, empty directory in `model_dir` to build a version in."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def publish_version(staging: Path, model_dir: Path) -> Path:
    """Atomically rename a complete staging directory to the next version number; returns its path.

    `metadata.json` is rewritten first if another build took the version it names meanwhile, and
    `manifest.json` is written last (a server polling the repository loads only complete versions).
    """
    while True:
        version = next_version(model_dir)
        _set_metadata_version(staging, str(version))
        write_manifest(staging)  # last: the version is complete
        target = model_dir / str(version)
        try:
            os.rename(staging, target)  # fails if a concurrent build created `target` and filled it
        except OSError:
            if not target.exists():
                raise
            continue
        logger.info("published %s", target)
        return target


def _set_metadata_version(directory: Path, version: str) -> None:
    path = directory / "metadata.json"
    if path.exists():
        metadata = json.loads(path.read_text())
        if metadata.get("version") != version:
            write_json(path, {**metadata, "version": version})


def save_user_tower(model: keras.Model, path: Path, embedding_dim: int) -> None:
    """`user_index` int32 [B], `recent_item_embeddings` float32 [B, L, D] -> `embedding` float32 [B, D]."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="user_index"),
            tf.TensorSpec([None, None, embedding_dim], tf.float32, name="recent_item_embeddings"),
        ]
    )
    def serve(user_index: tf.Tensor, recent_item_embeddings: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": model([user_index, recent_item_embeddings], training=False)}

    _save(model, serve, path)


def save_item_tower(model: keras.Model, path: Path) -> None:
    """`item_index` int32 [B], `item_tags` int32 [B, T] -> `embedding` float32 [B, D]."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="item_index"),
            tf.TensorSpec([None, None], tf.int32, name="item_tags"),
        ]
    )
    def serve(item_index: tf.Tensor, item_tags: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": model([item_index, item_tags], training=False)}

    _save(model, serve, path)


def save_ranker(model: keras.Model, path: Path, embedding_dim: int) -> None:
    """`user_embedding`, `item_embedding` float32 [B, D], `item_index` int32 [B] -> `probability` [B, 1]."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, embedding_dim], tf.float32, name="user_embedding"),
            tf.TensorSpec([None, embedding_dim], tf.float32, name="item_embedding"),
            tf.TensorSpec([None], tf.int32, name="item_index"),
        ]
    )
    def serve(
        user_embedding: tf.Tensor, item_embedding: tf.Tensor, item_index: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        return {"probability": model([user_embedding, item_embedding, item_index], training=False)}

    _save(model, serve, path)


def _save(model: keras.Model, serve: tf.types.experimental.PolymorphicFunction, path: Path) -> None:
    """A SavedModel whose one signature, `serving_default`, is `serve`.

    The explicit input signature takes any batch size, so a server calls one concrete function and never
    retraces; loading it needs TensorFlow only, not Keras or this package.
    """
    module = tf.Module()
    module.model = model  # tracks the variables
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})


def write_item_index(path: Path, item_embeddings: np.ndarray, n_trees: int, seed: int) -> None:
    """Build the angular Annoy index: Annoy id `r` is item row `r` (item index `r + 1`)."""
    index = AnnoyIndex(item_embeddings.shape[1], "angular")
    index.set_seed(seed)
    for row, vector in enumerate(item_embeddings):
        index.add_item(row, vector)
    index.build(n_trees, n_jobs=1)  # one job: the same seed gives the same trees
    index.save(str(path))
    index.unload()


def write_item_arrays(
    directory: Path, item_embeddings: np.ndarray, item_popularity: np.ndarray, item_tags: np.ndarray
) -> None:
    """`item_embeddings.npy` (float32, unit rows), `item_popularity.npy` (int64), `item_tags.npy` (int32).

    Row `r` of each is item row `r`; `item_tags` holds 1-based rows of `tag_ids.txt`, 0-padded.
    """
    np.save(directory / "item_embeddings.npy", item_embeddings.astype(np.float32))
    np.save(directory / "item_popularity.npy", item_popularity.astype(np.int64))
    np.save(directory / "item_tags.npy", item_tags.astype(np.int32))


def write_cold_start_items(path: Path, item_ids: Sequence[str], item_tags: Sequence[Sequence[str]]) -> None:
    """One `{"item_id": ..., "tags": [...]}` per line: items held out of training, ready to upsert."""
    lines = (
        json.dumps({"item_id": item_id, "tags": list(tags)}) + "\n"
        for item_id, tags in zip(item_ids, item_tags, strict=True)
    )
    path.write_text("".join(lines))


def write_ids(path: Path, ids: Sequence[str]) -> None:
    """One id per line; line `r` is index `r + 1`.

    Raises:
        ValueError: an id contains a line break, which would shift every later index.
    """
    if any("\n" in value or "\r" in value for value in ids):
        raise ValueError(f"{path.name}: ids must not contain line breaks")
    path.write_text("".join(f"{value}\n" for value in ids))


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Pretty JSON with a trailing newline."""
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
