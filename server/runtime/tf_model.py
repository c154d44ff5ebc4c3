"""Calls a TensorFlow SavedModel's serving signature with numpy arrays.

The signature's concrete function is called directly: Keras `model(x)` and `model.predict` cost many
times more per call and stay off the request path. Even the concrete function's public call spends most of
a small batch's time binding keyword arguments to its signature in Python, holding the GIL; so inputs go in
as a flat list of tensors in the function's own parameter order (its `_call_flat`, what the public call
ends in). Measured on 2 cores, in one process, conversions included: 0.39 instead of 0.53 ms per user-tower
call at batch 1, 0.57 instead of 0.71 ms per ranker call. Where a TensorFlow version lacks that entry point
the public call is used.

Faster still, and the default: the signature frozen (its variables made constants) and run by a TF1
`Session` that executes every op on the calling thread (`inter_op_parallelism_threads: -1`). A concrete
function's call hands part of its work to TensorFlow's inter-op pool and waits for it; a pool thread that
went to sleep between calls must be woken first. Measured in one process on 2 cores (the in-process
pipeline, `bench/pipeline_ceiling.py`, 2 alternating rounds): 693-741 against 472-481 rows/s at batch 1
(the user tower 0.28-0.31 against 0.57-0.59 ms, the ranker 0.40-0.44 against 0.73-0.74 ms), 2,793-3,054
against 2,370-2,530 rows/s at batch 64. Freezing is not free for large variables: a 26 MB embedding table
(200k users) took 0.8 s and kept ~120 MB more resident than its concrete function (~5x its size), a 128 MB
one (1M users) ~12 s, with ~2 GB at the peak. So a SavedModel whose variables take more than
`graph_mode_max_bytes` (16 MiB unless `start_runtime` says otherwise), or one that cannot be frozen, runs
through its concrete function; the gain is per call, and matters most at small batches, whatever the
model's size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

SIGNATURE = "serving_default"
DEFAULT_GRAPH_MODE_MAX_BYTES = 16 << 20

logger = logging.getLogger(__name__)
_runtime = {"graph_mode_max_bytes": DEFAULT_GRAPH_MODE_MAX_BYTES, "intra_op": 1}


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools (0 lets TensorFlow choose). Must run before the first op."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: the first setting stands.


def start_runtime(
    intra_op: int, inter_op: int, graph_mode_max_bytes: int = DEFAULT_GRAPH_MODE_MAX_BYTES
) -> None:
    """Size TensorFlow's thread pools and create them now, on the calling thread; choose the call path.

    TensorFlow creates its pools' threads with its first op, and they inherit the niceness of the thread
    that ran it: left to the first model load, they would run at the loader's nice 10 for good.
    SavedModels loaded from now on run as frozen graphs when their variables take at most
    `graph_mode_max_bytes` (0: never).
    """
    configure_threads(intra_op, inter_op)
    _runtime.update(graph_mode_max_bytes=graph_mode_max_bytes, intra_op=intra_op)
    tf.constant(0.0).numpy()


class SignatureRunner:
    """One loaded SavedModel signature: numpy arrays in, numpy arrays out."""

    def __init__(self, path: Path, signature: str = SIGNATURE) -> None:
        self.path = path
        self._loaded = tf.saved_model.load(str(path))  # keeps the variables alive
        self._function = self._loaded.signatures[signature]
        self.input_specs: dict[str, tf.TensorSpec] = self._function.structured_input_signature[1]
        self.output_names: list[str] = sorted(self._function.structured_outputs)
        self._numpy_dtypes = {name: spec.dtype.as_numpy_dtype for name, spec in self.input_specs.items()}
        self._flat_order = _flat_parameter_order(self._function, set(self.input_specs))
        self._graph = _frozen_graph(self._function, self.input_specs, self.output_names, path)
        if self._graph is not None:  # the graph holds its own copy of every variable
            self._loaded = self._function = None

    @property
    def graph_mode(self) -> bool:
        """Whether calls run as a frozen graph on the calling thread (else through the concrete function)."""
        return self._graph is not None

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the signature; every input is converted to the signature's dtype.

        Raises:
            TypeError: an input is missing or not one of the signature's.
        """
        if inputs.keys() != self.input_specs.keys():
            raise TypeError(f"{self.path.name} takes inputs {sorted(self.input_specs)}, got {sorted(inputs)}")
        if self._graph is not None:
            return self._graph(inputs)
        if self._flat_order is None:
            arrays = {
                name: np.asarray(value, dtype=self._numpy_dtypes[name]) for name, value in inputs.items()
            }
            outputs = self._function(**arrays)
        else:
            tensors = [tf.constant(inputs[name], dtype=self._numpy_dtypes[name]) for name in self._flat_order]
            outputs = self._function._call_flat(tensors, self._function.captured_inputs)
        return {name: tensor.numpy() for name, tensor in outputs.items()}


def _flat_parameter_order(function: Any, input_names: set[str]) -> list[str] | None:
    """The signature's parameters in call order, or None when the flat entry point is not there to use."""
    function_type = getattr(function, "function_type", None)
    if function_type is None or not callable(getattr(function, "_call_flat", None)):
        return None
    order = list(function_type.parameters)
    return order if set(order) == input_names else None


class _FrozenGraph:
    """A signature frozen into a GraphDef, run by a TF1 session on the calling thread."""

    def __init__(
        self, graph_def: Any, feeds: dict[str, str], fetches: dict[str, str], input_specs: dict
    ) -> None:
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(
            inter_op_parallelism_threads=-1,  # every op on the calling thread
            intra_op_parallelism_threads=_runtime["intra_op"],
        )
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        self._inputs = sorted(feeds)
        self._outputs = sorted(fetches)
        self._dtypes = [input_specs[name].dtype.as_numpy_dtype for name in self._inputs]
        self._run = self._session.make_callable(
            [fetches[name] for name in self._outputs], [feeds[name] for name in self._inputs]
        )

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [
            np.asarray(inputs[name], dtype=dtype)
            for name, dtype in zip(self._inputs, self._dtypes, strict=True)
        ]
        return dict(zip(self._outputs, self._run(*arrays), strict=True))


def _frozen_graph(
    function: Any, input_specs: dict, output_names: list[str], path: Path
) -> _FrozenGraph | None:
    """`function` as a frozen graph, or None: over the size limit, or it does not freeze (logged)."""
    limit = _runtime["graph_mode_max_bytes"]
    variable_bytes = sum(v.shape.num_elements() * v.dtype.size for v in function.variables)
    if variable_bytes > limit:
        if limit:
            logger.info(
                "%s: %d MiB of variables, over the graph mode's limit: through its concrete function",
                path,
                variable_bytes >> 20,
            )
        return None
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        frozen = convert_variables_to_constants_v2(function)
        feeds = {tensor.op.name: tensor.name for tensor in frozen.inputs}
        if set(feeds) != set(input_specs) or len(frozen.outputs) != len(output_names):
            raise ValueError("the frozen graph's inputs or outputs differ from the signature's")
        # The flat outputs come in tf.nest's order of the signature's dict: its sorted keys.
        fetches = {name: tensor.name for name, tensor in zip(output_names, frozen.outputs, strict=True)}
        return _FrozenGraph(frozen.graph.as_graph_def(), feeds, fetches, input_specs)
    except Exception as error:  # noqa: BLE001 - any failure leaves the (slower) concrete function in use
        logger.warning(
            "%s does not run as a frozen graph (%s: %s): through its concrete function",
            path,
            type(error).__name__,
            error,
        )
        return None
