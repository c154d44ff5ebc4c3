"""Training: the two towers with in-batch negatives, then the ranker on held-out positives.

Both loops report progress through an optional `on_step` callback, so they know nothing about how
progress is shown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from recserve.training.config import DemoConfig
from recserve.training.data import Examples
from recserve.training.towers import Towers

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[], None]
MASKED_LOGIT = -1e9
EMBED_BATCH_SIZE = 4096
MIN_STEPS_PER_EPOCH = 100


def configure_tensorflow(seed: int, threads: int = 0) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and size TensorFlow's thread pools for training.

    Thread pools can only be sized before TensorFlow's first op; later calls keep the first setting.
    """
    keras.utils.set_random_seed(seed)
    intra_op = threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; keeping its thread pools")


def batch_size_for(num_examples: int, batch_size: int) -> int:
    """`batch_size`, made smaller for small data so that an epoch still takes `MIN_STEPS_PER_EPOCH` steps."""
    return max(2, min(batch_size, num_examples // MIN_STEPS_PER_EPOCH))


def tower_steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped so every step has the same shape)."""
    return max(1, num_examples // batch_size_for(num_examples, batch_size))


def train_towers(
    towers: Towers, examples: Examples, config: DemoConfig, on_step: ProgressCallback | None = None
) -> list[float]:
    """Train both towers with a softmax over in-batch negatives; returns the mean loss of each epoch.

    Each example's positive is its target; the other targets of the batch are its negatives. Popular
    items are negatives more often than their share of the catalogue, so their logits are corrected by
    `log q` (their frequency as targets); without it the towers learn to avoid popular items. Some
    examples are shown as user 0 (`user_dropout`) or without their context (`context_dropout`), so the
    tower also works from the context alone, or from the user alone.
    """
    rng = np.random.default_rng(config.seed)
    batch_size = batch_size_for(len(examples), config.batch_size)
    target_counts = np.bincount(examples.targets, minlength=int(examples.targets.max()) + 1) + 1.0
    log_q = np.log(target_counts / target_counts.sum()).astype(np.float32)
    step = _tower_step(towers, keras.optimizers.Adam(config.learning_rate), config.temperature)
    steps = tower_steps_per_epoch(len(examples), config.batch_size)
    losses = []
    for _ in range(config.epochs):
        order = rng.permutation(len(examples))
        total = 0.0
        for batch in range(steps):
            rows = order[batch * batch_size : (batch + 1) * batch_size]
            users, contexts = _dropped_out(rng, examples.user_indices[rows], examples.contexts[rows], config)
            targets = examples.targets[rows]
            total += float(step(users, contexts, targets, log_q[targets]))
            if on_step is not None:
                on_step()
        losses.append(total / steps)
        logger.info("tower epoch %d: in-batch softmax loss %.4f", len(losses), losses[-1])
    return losses


def _dropped_out(
    rng: np.random.Generator, users: np.ndarray, contexts: np.ndarray, config: DemoConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The batch with some users replaced by 0 (unknown) and some contexts by padding (copies)."""
    users = np.where(rng.random(users.size) < config.user_dropout, 0, users).astype(np.int32)
    contexts = np.where(rng.random(users.size)[:, None] < config.context_dropout, 0, contexts).astype(
        np.int32
    )
    return users, contexts


def _tower_step(towers: Towers, optimizer: keras.optimizers.Optimizer, temperature: float) -> Callable:
    """One compiled training step over a batch of (user, context, target, log q)."""
    variables = list(
        {
            id(v): v for v in towers.user_tower.trainable_variables + towers.item_tower.trainable_variables
        }.values()
    )

    @tf.function(reduce_retracing=True)
    def step(users: tf.Tensor, contexts: tf.Tensor, targets: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            user_vectors = towers.user_tower([users, contexts], training=True)
            item_vectors = towers.item_tower(targets, training=True)
            logits = tf.matmul(user_vectors, item_vectors, transpose_b=True) / temperature - log_q[None, :]
            # A popular item can be the target of several rows; it is no negative for any of them.
            same_item = tf.equal(targets[:, None], targets[None, :])
            logits = tf.where(same_item & ~tf.eye(tf.shape(targets)[0], dtype=tf.bool), MASKED_LOGIT, logits)
            labels = tf.range(tf.shape(targets)[0])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def embed_users(user_tower: keras.Model, user_indices: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """User-tower embeddings [N, D] for many examples, in large batches."""
    parts = [
        np.asarray(
            user_tower(
                [user_indices[start : start + EMBED_BATCH_SIZE], contexts[start : start + EMBED_BATCH_SIZE]]
            )
        )
        for start in range(0, len(user_indices), EMBED_BATCH_SIZE)
    ]
    return np.concatenate(parts).astype(np.float32)


def train_ranker(
    ranker: keras.Model,
    user_tower: keras.Model,
    item_embeddings: np.ndarray,
    examples: Examples,
    item_popularity: np.ndarray,
    config: DemoConfig,
    on_step: ProgressCallback | None = None,
) -> list[float]:
    """Train the ranker with binary cross-entropy; returns the loss of each epoch.

    Positives are the held-out interactions the towers never saw, scored from the frozen user tower's
    embedding of the history before them. Negatives per positive are a mix of items retrieval would
    offer (the user's nearest items: what the ranker must re-order at serving time), popular items and
    uniformly drawn ones, so that neither closeness nor popularity alone predicts a like.
    """
    rng = np.random.default_rng(config.seed + 1)
    user_vectors = embed_users(user_tower, examples.user_indices, examples.contexts)
    negatives = _ranker_negatives(rng, user_vectors, item_embeddings, item_popularity, config)
    clashes = negatives == examples.targets[:, None]
    negatives[clashes] = rng.integers(1, len(item_embeddings) + 1, size=int(clashes.sum()))
    repeats = negatives.shape[1] + 1
    items = np.concatenate([examples.targets[:, None], negatives], axis=1).reshape(-1).astype(np.int32)
    labels = np.tile(np.eye(1, repeats, dtype=np.float32), (len(examples), 1)).reshape(-1, 1)
    ranker.compile(optimizer=keras.optimizers.Adam(config.ranker_learning_rate), loss="binary_crossentropy")
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: on_step())] if on_step else []
    history = ranker.fit(
        {"user_embedding": np.repeat(user_vectors, repeats, axis=0), "item_index": items},
        labels,
        batch_size=batch_size_for(len(labels), config.batch_size),
        epochs=config.ranker_epochs,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    losses = [float(loss) for loss in history.history["loss"]]
    logger.info("ranker: binary cross-entropy %.4f after %d epochs", losses[-1], len(losses))
    return losses


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
    """The `count` items of highest cosine per user (1-based item indices, unordered), exact."""
    count = min(count, len(item_embeddings))
    parts = []
    for start in range(0, len(user_vectors), 1024):
        scores = user_vectors[start : start + 1024] @ item_embeddings.T
        parts.append(np.argpartition(-scores, count - 1, axis=1)[:, :count] + 1)
    return np.concatenate(parts)
