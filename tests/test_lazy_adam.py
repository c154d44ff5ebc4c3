"""LazyAdam: Adam's step on the rows a sparse gradient touches, and nothing else."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from recserve.training.lazy_adam import LazyAdam


def train(optimizer: keras.optimizers.Optimizer, batches: list[list[int]]) -> np.ndarray:
    keras.utils.set_random_seed(1)
    table = keras.Variable(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32))
    target = tf.constant(np.ones(3, dtype=np.float32))
    for rows in batches:
        with tf.GradientTape() as tape:
            picked = tf.gather(table.value, tf.constant(rows))
            loss = tf.reduce_sum(tf.square(picked - target))
        gradient = tape.gradient(loss, table.value)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply_gradients([(gradient, table)])
    return table.numpy()


def test_rows_touched_at_every_step_follow_adam_exactly() -> None:
    every_row = [[0, 1, 2, 3, 4, 5]] * 5
    np.testing.assert_allclose(
        train(LazyAdam(0.1), every_row), train(keras.optimizers.Adam(0.1), every_row), atol=1e-5
    )


def test_untouched_rows_do_not_move_and_repeated_rows_add_up() -> None:
    start = train(LazyAdam(0.1), [])
    batches = [[0, 0, 1], [1, 2], [0]]
    lazy = train(LazyAdam(0.1), batches)
    np.testing.assert_array_equal(lazy[3:], start[3:])
    assert not np.allclose(lazy[:3], start[:3])
    dense = train(keras.optimizers.Adam(0.1), batches)
    assert not np.allclose(dense[1], lazy[1]), "dense Adam keeps moving row 1 on momentum when it is absent"
