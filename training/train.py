"""Training: the two towers with in-batch negatives, then the ranker on held-out positives.

Both stop early on held-out data and keep their best weights. Both loops report progress through an
optional `on_step` callback, so they know nothing about how progress is shown.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from recserve.training.config import DemoConfig
from recserve.training.data import Examples
from recserve.training.embed import embed_items, embed_users
from recserve.training.lazy_adam import LazyAdam
from recserve.training.towers import Towers

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[], None]
MASKED_LOGIT = -1e9
MIN_STEPS_PER_EPOCH = 100
VALIDATION_K = 50
SCORED_ROWS = 256  # users scored against every item at once: 1 GB of scores at a million items


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


def tower_steps_per_epoch(num_examples: int, batch_size: int, max_examples: int | None = None) -> int:
    """Full batches per epoch over `num_examples`, or over a sample of `max_examples` of them.

    The last partial batch is dropped so every step has the same shape.
    """
    shown = min(num_examples, max_examples or num_examples)
    return max(1, shown // batch_size_for(shown, batch_size))


@dataclass(frozen=True)
class TowerHistory:
    """Per epoch run, its mean loss and validation recall@50; and the epoch whose weights were kept."""

    losses: list[float]
    validation_recall: list[float]
    best_epoch: int  # 1-based


def train_towers(
    towers: Towers,
    examples: Examples,
    validation: Examples,
    item_tags: np.ndarray,
    config: DemoConfig,
    on_step: ProgressCallback | None = None,
) -> TowerHistory:
    """Train both towers with a softmax over in-batch negatives, stopping early on `validation`.

    Each example's positive is its target; the other targets of the batch are its negatives. Popular
    items are negatives more often than their share of the catalogue, so their logits are corrected by
    `log q` (their frequency as targets); without it the towers learn to avoid popular items. Some
    examples are shown as user 0 (`user_dropout`) or without their context (`context_dropout`), and some
    target and context items as item index 0 with only their tags (`id_dropout`), so the towers also work
    from the context alone, the user alone, or an item's tags alone. `item_tags` is int32 [num_items + 1,
    T] by item index (row 0: no tags).

    After each epoch the user tower retrieves over all items for `validation` (its exact recall@50);
    training stops after `patience` epochs without a better one, and the best epoch's weights are kept.
    """
    epoch = _TowerEpoch(towers, examples, item_tags, config)
    losses: list[float] = []
    curve: list[float] = []
    best_weights: list[list[np.ndarray]] = []
    for _ in range(config.max_epochs):
        started = time.perf_counter()
        losses.append(epoch.run(on_step))
        trained = time.perf_counter()
        curve.append(validation_recall(towers, validation, item_tags))
        logger.info(
            "tower epoch %d: loss %.4f, validation recall@50 %.4f (%d steps in %.0f s, validation %.0f s)",
            len(curve),
            losses[-1],
            curve[-1],
            epoch.steps,
            trained - started,
            time.perf_counter() - trained,
        )
        if len(curve) == 1 or curve[-1] > max(curve[:-1]):
            best_weights = [tower.get_weights() for tower in (towers.user_tower, towers.item_tower)]
        elif len(curve) - 1 - int(np.argmax(curve)) >= config.patience:
            break
    towers.user_tower.set_weights(best_weights[0])
    towers.item_tower.set_weights(best_weights[1])
    return TowerHistory(losses, curve, int(np.argmax(curve)) + 1)


class _TowerEpoch:
    """One pass over the training examples in shuffled, full batches."""

    def __init__(self, towers: Towers, examples: Examples, item_tags: np.ndarray, config: DemoConfig) -> None:
        self.examples = examples
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.shown = min(len(examples), config.max_examples_per_epoch)
        self.batch_size = batch_size_for(self.shown, config.batch_size)
        self.steps = tower_steps_per_epoch(len(examples), config.batch_size, config.max_examples_per_epoch)
        target_counts = np.bincount(examples.targets, minlength=len(item_tags)) + 1.0
        self.log_q = np.log(target_counts / target_counts.sum()).astype(np.float32)
        optimizer = LazyAdam(config.learning_rate)
        self.step = _tower_step(towers, optimizer, tf.constant(item_tags), config.temperature)

    def run(self, on_step: ProgressCallback | None) -> float:
        """Train one epoch (over a fresh sample when the examples are more than an epoch shows)."""
        order = self.rng.permutation(len(self.examples))[: self.shown]
        total = 0.0
        for batch in range(self.steps):
            rows = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            users, contexts = _dropped_out(
                self.rng, self.examples.user_indices[rows], self.examples.contexts[rows], self.config
            )
            targets = self.examples.targets[rows]
            known_contexts = self.rng.random(contexts.shape) >= self.config.id_dropout
            known_targets = self.rng.random(targets.shape) >= self.config.id_dropout
            loss = self.step(users, contexts, known_contexts, targets, known_targets, self.log_q[targets])
            total += float(loss)
            if on_step is not None:
                on_step()
        return total / self.steps


def _dropped_out(
    rng: np.random.Generator, users: np.ndarray, contexts: np.ndarray, config: DemoConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The batch with some users replaced by 0 (unknown) and some contexts by padding (copies)."""
    users = np.where(rng.random(users.size) < config.user_dropout, 0, users).astype(np.int32)
    contexts = np.where(rng.random(users.size)[:, None] < config.context_dropout, 0, contexts).astype(
        np.int32
    )
    return users, contexts


def _tower_step(
    towers: Towers, optimizer: keras.optimizers.Optimizer, item_tags: tf.Tensor, temperature: float
) -> Callable:
    """One compiled training step over a batch of (user, context, target, log q).

    `known_*` say which items keep their id; the others are shown as index 0 with their tags. The
    context's embeddings are the item tower's outputs, padding zeroed, so both sides train the item tower.
    """
    variables = towers.user_tower.trainable_variables + towers.item_tower.trainable_variables

    def embed(items: tf.Tensor, known: tf.Tensor) -> tf.Tensor:
        # Each distinct (item, known) pair of the batch goes through the tower once: popular items recur.
        pairs, positions = tf.unique(tf.reshape(items * 2 + tf.cast(known, tf.int32), [-1]))
        distinct = pairs // 2
        shown = tf.where(pairs % 2 == 1, distinct, 0)
        vectors = towers.item_tower([shown, tf.gather(item_tags, distinct)], training=True)
        return tf.reshape(tf.gather(vectors, positions), tf.concat([tf.shape(items), [-1]], axis=0))

    @tf.function(reduce_retracing=True)
    def step(
        users: tf.Tensor,
        contexts: tf.Tensor,
        known_contexts: tf.Tensor,
        targets: tf.Tensor,
        known_targets: tf.Tensor,
        log_q: tf.Tensor,
    ) -> tf.Tensor:
        with tf.GradientTape() as tape:
            recent = embed(contexts, known_contexts) * tf.cast(contexts > 0, tf.float32)[:, :, None]
            user_vectors = towers.user_tower([users, recent], training=True)
            item_vectors = embed(targets, known_targets)
            logits = tf.matmul(user_vectors, item_vectors, transpose_b=True) / temperature - log_q[None, :]
            # A popular item can be the target of several rows; it is no negative for any of them.
            same_item = tf.equal(targets[:, None], targets[None, :])
            logits = tf.where(same_item & ~tf.eye(tf.shape(targets)[0], dtype=tf.bool), MASKED_LOGIT, logits)
            labels = tf.range(tf.shape(targets)[0])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def validation_recall(towers: Towers, cases: Examples, item_tags: np.ndarray, k: int = VALIDATION_K) -> float:
    """Share of `cases` whose target is in the user tower's exact top `k` over all items.

    The case's own context items are not candidates, as at serving time.
    """
    item_vectors = embed_items(towers.item_tower, item_tags)
    user_vectors = embed_users(towers.user_tower, item_vectors, cases.user_indices, cases.contexts)
    hits = []
    for start in range(0, len(cases), SCORED_ROWS):  # [rows, all items] at a time: bounded memory
        part = slice(start, start + SCORED_ROWS)
        scores = user_vectors[part] @ item_vectors.T
        contexts, targets = cases.contexts[part], cases.targets[part]
        rows = np.repeat(np.arange(len(contexts)), contexts.shape[1])
        columns = contexts.reshape(-1).astype(np.int64) - 1
        scores[rows[columns >= 0], columns[columns >= 0]] = -np.inf
        target_scores = np.take_along_axis(scores, targets[:, None] - 1, axis=1)
        hits.append((scores > target_scores).sum(axis=1) < k)
    return float(np.mean(np.concatenate(hits)))
