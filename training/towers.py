"""Keras 3 builders for the user tower, the item tower and the ranker (contract: docs/model-repository.md).

The user tower and the item tower share one item embedding table: the recent items a user tower pools and
the items it retrieves live in the same space, so a context about one topic points at that topic's items.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops


@dataclass(frozen=True)
class Towers:
    """The two towers of one model; `item_embedding` is the table they share."""

    user_tower: keras.Model
    item_tower: keras.Model
    item_embedding: layers.Embedding


class RecentItemPooling(layers.Layer):
    """Recency-weighted mean of the embeddings of recent items; index 0 (padding) has no weight.

    The weight of the item `a` steps before the most recent is `exp(-decay * a)` with a learned
    `decay >= 0`, so any context length works. Returns the pooled vector [B, D] and the total weight
    [B, 1] (0 when the context is all padding), which tells the next layer how much to trust the context.
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create the decay rate, starting near 0.1 per step."""
        self.raw_decay = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-2.25), name="decay"
        )

    def call(self, embeddings: keras.KerasTensor, indices: keras.KerasTensor) -> tuple:
        """Pool `embeddings` [B, L, D] of `indices` [B, L]."""
        age = ops.cast(ops.flip(ops.arange(ops.shape(indices)[1]), axis=0), embeddings.dtype)
        weights = ops.exp(-ops.softplus(self.raw_decay) * age)[None, :]
        weights = weights * ops.cast(ops.greater(indices, 0), embeddings.dtype)
        total = ops.sum(weights, axis=1, keepdims=True)
        pooled = ops.sum(embeddings * weights[:, :, None], axis=1) / ops.maximum(total, 1e-6)
        return pooled, total


def build_towers(num_users: int, num_items: int, embedding_dim: int, hidden_units: int = 128) -> Towers:
    """The user and item towers for `num_users`/`num_items` vocabularies (index 0 reserved in both)."""
    item_embedding = layers.Embedding(
        num_items + 1,
        embedding_dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1),
        name="item_table",
    )
    return Towers(
        _user_tower(num_users, item_embedding, embedding_dim, hidden_units),
        _item_tower(item_embedding),
        item_embedding,
    )


def _user_tower(
    num_users: int, item_embedding: layers.Embedding, embedding_dim: int, hidden_units: int
) -> keras.Model:
    """[user_index [B], recent_item_indices [B, L]] -> unit `embedding` [B, D].

    User 0 (unknown) has a learned embedding of its own, so an unknown user with no context still gets
    a finite unit vector.
    """
    user_index = keras.Input(shape=(), dtype="int32", name="user_index")
    recent = keras.Input(shape=(None,), dtype="int32", name="recent_item_indices")
    user_vector = layers.Embedding(
        num_users + 1,
        embedding_dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1),
        name="user_table",
    )(user_index)
    pooled, context_weight = RecentItemPooling(name="recent_pooling")(item_embedding(recent), recent)
    features = layers.Concatenate()([user_vector, pooled, ops.log1p(context_weight)])
    hidden = layers.Dense(hidden_units, activation="relu", name="hidden")(features)
    # The residual keeps "more of what was just seen" one step away; the layers learn the rest.
    combined = layers.Add()([layers.Dense(embedding_dim, name="projection")(hidden), pooled])
    embedding = layers.UnitNormalization(name="embedding")(combined)
    return keras.Model([user_index, recent], embedding, name="user_tower")


def _item_tower(item_embedding: layers.Embedding) -> keras.Model:
    """item_index [B] -> unit `embedding` [B, D]."""
    item_index = keras.Input(shape=(), dtype="int32", name="item_index")
    embedding = layers.UnitNormalization(name="embedding")(item_embedding(item_index))
    return keras.Model(item_index, embedding, name="item_tower")


def build_ranker(
    item_tower: keras.Model,
    num_items: int,
    cosine_scale: float = 5.0,
    prior_logit: float = 0.0,
    hidden_units: tuple[int, ...] = (64, 32),
) -> keras.Model:
    """[user_embedding [B, D], item_index [B]] -> `probability` [B, 1] = sigmoid(f(u, v)).

    `v` is the item tower's embedding, frozen: the ranker re-orders the retrieval space, it does not move
    it. Features are `[u, v, u*v, cos(u, v)]`; a learned per-item bias adds what popularity says. The
    cosine also reaches the logit directly, scaled like the retrieval softmax (`cosine_scale`, one over
    its temperature), and the MLP starts at zero, so the untrained ranker orders items as retrieval does;
    `prior_logit` starts it at the training data's share of positives.
    """
    item_tower.trainable = False
    dimension = item_tower.output.shape[-1]
    user_embedding = keras.Input(shape=(dimension,), dtype="float32", name="user_embedding")
    item_index = keras.Input(shape=(), dtype="int32", name="item_index")
    item_vector = item_tower(item_index)
    product = layers.Multiply()([user_embedding, item_vector])
    cosine = ops.sum(product, axis=-1, keepdims=True)
    hidden = layers.Concatenate()([user_embedding, item_vector, product, cosine])
    for units in hidden_units:
        hidden = layers.Dense(units, activation="relu")(hidden)
    mlp_logit = layers.Dense(1, kernel_initializer="zeros", name="mlp_logit")(hidden)
    cosine_logit = layers.Dense(
        1,
        kernel_initializer=keras.initializers.Constant(cosine_scale),
        bias_initializer=keras.initializers.Constant(prior_logit),
        name="cosine_logit",
    )
    item_bias = layers.Embedding(num_items + 1, 1, embeddings_initializer="zeros", name="item_bias")(
        item_index
    )
    logit = layers.Add()([mlp_logit, cosine_logit(cosine), layers.Flatten()(item_bias)])
    probability = layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model([user_embedding, item_index], probability, name="ranker")
