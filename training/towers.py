"""Keras 3 builders for the user tower, the item tower and the ranker (contract: docs/model-repository.md).

The item tower embeds an item from its id and its tags, so that an item it never saw in training (index
0) is still placed by its tags. The user tower pools the item-tower outputs of the user's recent items:
the recent items and the items it retrieves live in one space, so a context about one topic points at
that topic's items, and the server can pool items upserted after training.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

EMBEDDING_INIT_STDDEV = 0.1


@dataclass(frozen=True)
class Towers:
    """The two towers of one model."""

    user_tower: keras.Model
    item_tower: keras.Model


class RecentItemPooling(layers.Layer):
    """Recency-weighted mean of the embeddings of recent items; an all-zero row (padding) has no weight.

    The weight of the item `a` steps before the most recent is `exp(-decay * a)` with a learned
    `decay >= 0`, so any context length works. Returns the pooled vector [B, D] and the total weight
    [B, 1] (0 when the context is all padding), which tells the next layer how much to trust the context.
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create the decay rate, starting near 0.1 per step."""
        self.raw_decay = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-2.25), name="decay"
        )

    def call(self, embeddings: keras.KerasTensor) -> tuple:
        """Pool `embeddings` [B, L, D]."""
        age = ops.cast(ops.flip(ops.arange(ops.shape(embeddings)[1]), axis=0), embeddings.dtype)
        weights = ops.exp(-ops.softplus(self.raw_decay) * age)[None, :]
        weights = weights * ops.cast(ops.any(ops.not_equal(embeddings, 0), axis=-1), embeddings.dtype)
        total = ops.sum(weights, axis=1, keepdims=True)
        pooled = ops.sum(embeddings * weights[:, :, None], axis=1) / ops.maximum(total, 1e-6)
        return pooled, total


class TagPooling(layers.Layer):
    """Mean of the embeddings of an item's tags [B, T, D] -> [B, D]; tag 0 (padding) has no weight."""

    def call(self, embeddings: keras.KerasTensor, tags: keras.KerasTensor) -> keras.KerasTensor:
        """Pool `embeddings` of `tags` [B, T]; an item without tags pools to 0."""
        present = ops.cast(ops.greater(tags, 0), embeddings.dtype)[:, :, None]
        count = ops.maximum(ops.sum(present, axis=1), 1.0)
        return ops.sum(embeddings * present, axis=1) / count


def build_towers(
    num_users: int, num_items: int, num_tags: int, embedding_dim: int, hidden_units: int = 128
) -> Towers:
    """The user and item towers for these vocabularies (index 0 reserved in each)."""
    return Towers(
        _user_tower(num_users, embedding_dim, hidden_units),
        _item_tower(num_items, num_tags, embedding_dim, hidden_units),
    )


def _table(rows: int, embedding_dim: int, name: str) -> layers.Embedding:
    return layers.Embedding(
        rows,
        embedding_dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=EMBEDDING_INIT_STDDEV),
        name=name,
    )


def _user_tower(num_users: int, embedding_dim: int, hidden_units: int) -> keras.Model:
    """[user_index [B], recent_item_embeddings [B, L, D]] -> unit `embedding` [B, D].

    User 0 (unknown) has a learned embedding of its own, so an unknown user with no context still gets
    a finite unit vector.
    """
    user_index = keras.Input(shape=(), dtype="int32", name="user_index")
    recent = keras.Input(shape=(None, embedding_dim), dtype="float32", name="recent_item_embeddings")
    user_vector = _table(num_users + 1, embedding_dim, "user_table")(user_index)
    pooled, context_weight = RecentItemPooling(name="recent_pooling")(recent)
    features = layers.Concatenate()([user_vector, pooled, ops.log1p(context_weight)])
    hidden = layers.Dense(hidden_units, activation="relu", name="hidden")(features)
    # The residual keeps "more of what was just seen" one step away; the layers learn the rest.
    combined = layers.Add()([layers.Dense(embedding_dim, name="projection")(hidden), pooled])
    embedding = layers.UnitNormalization(name="embedding")(combined)
    return keras.Model([user_index, recent], embedding, name="user_tower")


def _item_tower(num_items: int, num_tags: int, embedding_dim: int, hidden_units: int) -> keras.Model:
    """[item_index [B], item_tags [B, T]] -> unit `embedding` [B, D].

    The embedding is the sum of a learned id vector (none for index 0) and a small network over the mean
    of the tags' vectors. That network's bias is what an item without id or tags gets, so every output
    is a finite unit vector.
    """
    item_index = keras.Input(shape=(), dtype="int32", name="item_index")
    item_tags = keras.Input(shape=(None,), dtype="int32", name="item_tags")
    known = ops.cast(ops.greater(item_index, 0), "float32")[:, None]
    id_vector = _table(num_items + 1, embedding_dim, "item_table")(item_index) * known
    tag_vectors = _table(num_tags + 1, embedding_dim, "tag_table")(item_tags)
    tag_vector = TagPooling(name="tag_pooling")(tag_vectors, item_tags)
    hidden = layers.Dense(hidden_units, activation="relu", name="tag_hidden")(tag_vector)
    content = layers.Dense(
        embedding_dim,
        bias_initializer=keras.initializers.RandomNormal(stddev=EMBEDDING_INIT_STDDEV),
        name="tag_projection",
    )(hidden)
    embedding = layers.UnitNormalization(name="embedding")(layers.Add()([id_vector, content]))
    return keras.Model([item_index, item_tags], embedding, name="item_tower")


def build_ranker(
    num_items: int,
    embedding_dim: int,
    cosine_scale: float = 5.0,
    prior_logit: float = 0.0,
    hidden_units: tuple[int, ...] = (64, 32),
) -> keras.Model:
    """[user_embedding [B, D], item_embedding [B, D], item_index [B]] -> `probability` [B, 1].

    `probability = sigmoid(f(u, v))` for a user-tower output `u` and an item-tower output `v`: the ranker
    re-orders the retrieval space, it does not move it. Features are `[u, v, u*v, cos(u, v)]`; a learned
    per-item bias adds what popularity says, and index 0's bias is what an item the model never saw gets.
    The cosine also reaches the logit directly, scaled like the retrieval softmax (`cosine_scale`, one
    over its temperature), and the MLP starts at zero, so the untrained ranker orders items as retrieval
    does; `prior_logit` starts it at the training data's share of positives.
    """
    user_embedding = keras.Input(shape=(embedding_dim,), dtype="float32", name="user_embedding")
    item_embedding = keras.Input(shape=(embedding_dim,), dtype="float32", name="item_embedding")
    item_index = keras.Input(shape=(), dtype="int32", name="item_index")
    product = layers.Multiply()([user_embedding, item_embedding])
    cosine = ops.sum(product, axis=-1, keepdims=True)
    hidden = layers.Concatenate()([user_embedding, item_embedding, product, cosine])
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
    return keras.Model([user_embedding, item_embedding, item_index], probability, name="ranker")
