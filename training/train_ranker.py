"""Ranker training: binary cross-entropy on held-out positives and sampled negatives, with early stopping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from annoy import AnnoyIndex

from recserve.training.config import DemoConfig
from recserve.training.data import Examples
from recserve.training.embed import embed_users
from recserve.training.train import batch_size_for

EXACT_NEIGHBOURS_MAX_ITEMS = 100_000
"""Up to this many items, the ranker's near negatives come from scoring every item."""
NEIGHBOUR_INDEX_TREES = 8

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[], None]


@dataclass(frozen=True)
class ItemVectors:
    """Item-tower outputs by item row: with the item's id (`known`), and as index 0 with its tags (`cold`)."""

    known: np.ndarray  # float32 [num_items, D]
    cold: np.ndarray  # float32 [num_items, D]


@dataclass(frozen=True)
class RankerHistory:
    """Per epoch run: training and validation loss; the epoch whose weights were kept."""

    losses: list[float]
    validation_losses: list[float]
    best_epoch: int  # 1-based


def train_ranker(
    ranker: keras.Model,
    user_tower: keras.Model,
    items: ItemVectors,
    examples: Examples,
    item_popularity: np.ndarray,
    config: DemoConfig,
    on_step: ProgressCallback | None = None,
) -> RankerHistory:
    """Train the ranker with binary cross-entropy until its validation loss stops falling.

    Positives are the held-out interactions the towers never saw, scored from the frozen user tower's
    embedding of the history before them. Negatives per positive are a mix of items retrieval would
    offer (the user's nearest items: what the ranker must re-order at serving time), popular items and
    uniformly drawn ones, so that neither closeness nor popularity alone predicts a like. `id_dropout` of
    the pairs show their item as a cold one (index 0, its tag-only embedding), so index 0's bias is what
    an item the model never saw gets. `ranker_validation_share` of the positives, with their negatives,
    measure the validation loss; the best epoch's weights are kept.
    """
    rng = np.random.default_rng(config.seed + 1)
    if len(examples) > config.ranker_max_examples:
        kept = rng.choice(len(examples), config.ranker_max_examples, replace=False)
        examples = examples.take(np.sort(kept))
    user_vectors = embed_users(user_tower, items.known, examples.user_indices, examples.contexts)
    negatives = _ranker_negatives(rng, user_vectors, items.known, item_popularity, config)
    clashes = negatives == examples.targets[:, None]
    negatives[clashes] = rng.integers(1, len(items.known) + 1, size=int(clashes.sum()))
    inputs, labels = _pairs(rng, user_vectors, examples.targets, negatives, items, config.id_dropout)
    validation = _validation_mask(rng, len(examples), negatives.shape[1] + 1, config.ranker_validation_share)
    ranker.compile(optimizer=keras.optimizers.Adam(config.ranker_learning_rate), loss="binary_crossentropy")
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(patience=config.ranker_patience, restore_best_weights=True)
    ]
    if on_step is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: on_step()))
    history = ranker.fit(
        {name: value[~validation] for name, value in inputs.items()},
        labels[~validation],
        validation_data=({name: value[validation] for name, value in inputs.items()}, labels[validation]),
        batch_size=batch_size_for(int((~validation).sum()), config.batch_size),
        epochs=config.ranker_max_epochs,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    losses = [float(loss) for loss in history.history["loss"]]
    validation_losses = [float(loss) for loss in history.history["val_loss"]]
    best = int(np.argmin(validation_losses)) + 1
    logger.info(
        "ranker: validation cross-entropy %.4f at epoch %d of %d", min(validation_losses), best, len(losses)
    )
    return RankerHistory(losses, validation_losses, best)


def _pairs(
    rng: np.random.Generator,
    user_vectors: np.ndarray,
    targets: np.ndarray,
    negatives: np.ndarray,
    items: ItemVectors,
    id_dropout: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ranker inputs and labels, one row per (example, positive or negative), an example's rows together."""
    repeats = negatives.shape[1] + 1
    indices = np.concatenate([targets[:, None], negatives], axis=1).reshape(-1).astype(np.int32)
    known = rng.random(indices.size) >= id_dropout
    embeddings = np.where(known[:, None], items.known[indices - 1], items.cold[indices - 1])
    inputs = {
        "user_embedding": np.repeat(user_vectors, repeats, axis=0),
        "item_embedding": embeddings.astype(np.float32),
        "item_index": np.where(known, indices, 0).astype(np.int32),
    }
    labels = np.tile(np.eye(1, repeats, dtype=np.float32), (len(targets), 1)).reshape(-1, 1)
    return inputs, labels


def _validation_mask(rng: np.random.Generator, examples: int, repeats: int, share: float) -> np.ndarray:
    """Which pair rows validate: all rows of a random `share` of the examples (at least one)."""
    chosen = np.zeros(examples, dtype=bool)
    chosen[rng.choice(examples, size=max(1, round(share * examples)), replace=False)] = True
    return np.repeat(chosen, repeats)


def _ranker_negatives(
    rng: np.random.Generator,
    user_vectors: np.ndarray,
    item_embeddings: np.ndarray,
    item_popularity: np.ndarray,
    config: DemoConfig,
) -> np.ndarray:
    """Negative item indices [N, ranker_negatives]: a third near the user, the rest popular or uniform."""
    count = len(user_vectors)
    near = max(1, config.ranker_negatives // 3)
    popular = max(0, (config.ranker_negatives - near) // 2)
    uniform = config.ranker_negatives - near - popular
    neighbours = _nearest_items(user_vectors, item_embeddings, config.candidate_count)
    picks = rng.integers(0, neighbours.shape[1], size=(count, near))
    popularity = (item_popularity.astype(np.float64) + 1.0) ** 0.75
    return np.concatenate(
        [
            np.take_along_axis(neighbours, picks, axis=1),
            rng.choice(len(item_embeddings), size=(count, popular), p=popularity / popularity.sum()) + 1,
            rng.integers(1, len(item_embeddings) + 1, size=(count, uniform)),
        ],
        axis=1,
    ).astype(np.int32)


def _nearest_items(user_vectors: np.ndarray, item_embeddings: np.ndarray, count: int) -> np.ndarray:
    """The `count` items of highest cosine per user (1-based item indices, unordered).

    Exact, or beyond `EXACT_NEIGHBOURS_MAX_ITEMS` from an approximate index (scoring every pair would take
    hours there).
    """
    count = min(count, len(item_embeddings))
    if len(item_embeddings) > EXACT_NEIGHBOURS_MAX_ITEMS:
        return _approximate_nearest_items(user_vectors, item_embeddings, count)
    parts = []
    for start in range(0, len(user_vectors), 1024):
        scores = user_vectors[start : start + 1024] @ item_embeddings.T
        parts.append(np.argpartition(-scores, count - 1, axis=1)[:, :count] + 1)
    return np.concatenate(parts)


def _approximate_nearest_items(
    user_vectors: np.ndarray, item_embeddings: np.ndarray, count: int
) -> np.ndarray:
    """Like `_nearest_items`, from a small Annoy index built on every core for this alone."""
    index = AnnoyIndex(item_embeddings.shape[1], "angular")
    for row, vector in enumerate(item_embeddings):
        index.add_item(row, vector)
    index.build(NEIGHBOUR_INDEX_TREES, n_jobs=-1)
    try:
        found = np.ones((len(user_vectors), count), dtype=np.int64)  # item 1 where a search comes up short
        for row, vector in enumerate(user_vectors):
            neighbours = index.get_nns_by_vector(vector, count)
            found[row, : len(neighbours)] = np.asarray(neighbours) + 1
        return found
    finally:
        index.unload()
