"""The TensorFlow runtime: a signature frozen into a graph answers exactly as its concrete function does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recserve.server.runtime import tf_model
from recserve.server.runtime.tf_model import SignatureRunner


def _inputs(runner: SignatureRunner, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the signature's shapes: `rows` rows, 3 context items where a length is free."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, spec in runner.input_specs.items():
        shape = [rows if axis == 0 else (3 if size is None else size) for axis, size in enumerate(spec.shape)]
        if spec.dtype.is_integer:
            inputs[name] = rng.integers(1, 20, size=shape)
        else:
            inputs[name] = rng.random(shape, dtype=np.float32)
    return inputs


@pytest.mark.parametrize("signature", ["user_tower", "ranker", "item_tower"])
def test_a_frozen_signature_answers_as_its_concrete_function(
    version_dir: Path, signature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = SignatureRunner(version_dir / signature)
    monkeypatch.setitem(tf_model._runtime, "graph_mode_max_bytes", 0)
    concrete = SignatureRunner(version_dir / signature)
    assert (frozen.graph_mode, concrete.graph_mode) == (True, False)
    assert frozen.output_names == concrete.output_names
    for rows in (1, 7, 64):
        inputs = _inputs(frozen, rows, seed=rows)
        got, expected = frozen(**inputs), concrete(**inputs)
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name].shape == expected[name].shape and got[name].dtype == expected[name].dtype
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_a_signature_over_the_limit_runs_through_its_concrete_function(
    version_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tf_model._runtime, "graph_mode_max_bytes", 1)  # every model has more
    runner = SignatureRunner(version_dir / "ranker")
    assert not runner.graph_mode
    assert runner(**_inputs(runner, 2))["probability"].shape == (2, 1)


def test_bad_inputs_fail_alike_in_both_modes(version_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = SignatureRunner(version_dir / "ranker")
    monkeypatch.setitem(tf_model._runtime, "graph_mode_max_bytes", 0)
    concrete = SignatureRunner(version_dir / "ranker")
    inputs = _inputs(frozen, 4)
    inputs["item_embedding"] = inputs["item_embedding"][:2]  # rows that do not line up
    for runner in (frozen, concrete):
        with pytest.raises(tf.errors.InvalidArgumentError):
            runner(**inputs)
        with pytest.raises(TypeError, match="takes inputs"):
            runner(user_embedding=inputs["user_embedding"])


def test_the_concrete_functions_flat_entry_answers_as_its_public_call_does(
    version_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tf_model._runtime, "graph_mode_max_bytes", 0)
    runner = SignatureRunner(version_dir / "ranker")
    dimension = runner.input_specs["user_embedding"].shape[1]
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(7, dimension))  # float64: converted to float32
    item_embeddings = rng.normal(size=(7, dimension))
    items = np.arange(1, 8, dtype=np.int64)  # converted to int32
    fast = runner(user_embedding=embeddings, item_embedding=item_embeddings, item_index=items)
    public = runner._function(
        user_embedding=embeddings.astype(np.float32),
        item_embedding=item_embeddings.astype(np.float32),
        item_index=items.astype(np.int32),
    )
    assert runner._flat_order is not None  # the fast path is what ran
    np.testing.assert_allclose(fast["probability"], public["probability"].numpy(), atol=1e-6)
