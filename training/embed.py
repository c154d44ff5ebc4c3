"""Keras towers over many items or users at once, in large batches, outside training."""

from __future__ import annotations

import keras
import numpy as np

EMBED_BATCH_SIZE = 4096


def embed_items(item_tower: keras.Model, item_tags: np.ndarray, cold: bool = False) -> np.ndarray:
    """Item-tower outputs [num_items, D] of item indices 1..num_items with their tags; row r is index r + 1.

    `item_tags` is by item index (row 0 unused). With `cold`, every item is embedded as index 0 with its
    tags: what an item the model never saw would get.
    """
    indices = np.arange(1, len(item_tags), dtype=np.int32)
    if cold:
        indices = np.zeros_like(indices)
    parts = [
        np.asarray(item_tower([indices[s : s + EMBED_BATCH_SIZE], item_tags[1:][s : s + EMBED_BATCH_SIZE]]))
        for s in range(0, indices.size, EMBED_BATCH_SIZE)
    ]
    return np.concatenate(parts).astype(np.float32)


def gather_embeddings(item_embeddings: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows of `item_embeddings` (row r = item index r + 1) for `indices` of any shape; 0 gives zeros."""
    rows = item_embeddings[np.maximum(indices, 1) - 1]
    return np.where((indices > 0)[..., None], rows, np.float32(0)).astype(np.float32)


def embed_users(
    user_tower: keras.Model, item_embeddings: np.ndarray, user_indices: np.ndarray, contexts: np.ndarray
) -> np.ndarray:
    """User-tower embeddings [N, D] for many examples, in large batches; contexts are item indices."""
    parts = [
        np.asarray(
            user_tower(
                [
                    user_indices[start : start + EMBED_BATCH_SIZE],
                    gather_embeddings(item_embeddings, contexts[start : start + EMBED_BATCH_SIZE]),
                ]
            )
        )
        for start in range(0, len(user_indices), EMBED_BATCH_SIZE)
    ]
    return np.concatenate(parts).astype(np.float32)
