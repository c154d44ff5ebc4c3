"""recserve's own BatchPipeline served by Triton (PyTriton), for bench/peers.py: the peer to beat.

Triton's dynamic batcher groups ModelInfer calls on `recommender` (the inputs and outputs of recserve's
KServe model: `user_id` BYTES [1], `k` INT32 [1] -> `item_ids` BYTES [-1], `scores` FP32 [-1]) and hands
each batch to one of `--instances` copies of a Python callable that runs recserve's BatchPipeline on the
same model version recserve serves. So both servers run the same TensorFlow graphs, the same Annoy index
and the same ranking code; what differs is everything around it: the front end, the batcher, the path
from the wire to numpy and back.

It runs in a virtualenv of its own (`.venv-peers`: nvidia-pytriton 0.7 needs numpy < 2), made by
`make bench-peers`:

    .venv-peers/bin/python bench/pytriton_server.py --model-repository models --grpc-port 8101 \
        --instances 2 --max-queue-delay-us 0

It prints `READY <grpc port>` once Triton serves the model, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as for recserve: no spin thread taking a core

import numpy as np  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # noqa: E402

from recserve.server.catalog.from_model import live_catalog  # noqa: E402
from recserve.server.context import NO_ROWS, UserQuery  # noqa: E402
from recserve.server.pipeline import BatchPipeline, RankedItems, RecommendQuery  # noqa: E402
from recserve.server.repository import load_model, resolve_version_dir  # noqa: E402
from recserve.server.runtime.tf_model import configure_threads  # noqa: E402
from recserve.server.settings import load_model_config  # noqa: E402

MODEL = "recommender"
# Everything PyTriton guards by default except `statistics`, which perf_analyzer reads.
RESTRICTED = ["shared-memory", "model-repository", "trace", "logging"]


def recommend_function(model_dir: Path):  # noqa: ANN201 - PyTriton's decorated callable
    """A batched callable: rows of (user_id, k) -> padded item ids and scores, as recserve answers them."""
    config = load_model_config(model_dir)
    model = load_model(resolve_version_dir(model_dir), config.retrieval.search_k)
    catalog = live_catalog(model, config.retrieval.exact_search_max_items)
    pipeline = BatchPipeline(model, catalog, config.retrieval, config.limits)
    users = model.users.index_by_id
    default_k = config.limits.default_k
    lock = threading.Lock()  # one pipeline, one batch at a time, as one recserve batch thread

    @batch
    def recommend(user_id: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
        ids = [row[0].decode() if isinstance(row[0], bytes) else str(row[0]) for row in user_id]
        ks = [int(value) or default_k for value in k.reshape(-1)]
        queries = [
            RecommendQuery(UserQuery(uid, users.get(uid, 0), NO_ROWS, False), wanted)
            for uid, wanted in zip(ids, ks, strict=True)
        ]
        with lock:
            results = pipeline.run_batch(queries)
        item_ids = catalog.view().ids
        width = max(ks)
        names = np.full((len(results), width), b"", dtype=object)
        scores = np.zeros((len(results), width), dtype=np.float32)
        for row, result in enumerate(results):
            assert isinstance(result, RankedItems)
            count = len(result.rows)
            names[row, :count] = [item_ids[r].encode() for r in result.rows.tolist()]
            scores[row, :count] = result.scores
        return {"item_ids": names, "scores": scores}

    return recommend


def main() -> None:
    """Bind the callable(s) and serve until a signal."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, default=0, help="0: grpc port + 1")
    parser.add_argument("--metrics-port", type=int, default=0, help="0: grpc port + 2")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    args = parser.parse_args()
    configure_threads(1, 1)
    model_dir = args.model_repository / MODEL
    functions = [recommend_function(model_dir) for _ in range(args.instances)]
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port or args.grpc_port + 1,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port or args.grpc_port + 2,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Triton(
        config=config, security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED)
    ) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=functions,
            inputs=[
                Tensor(name="user_id", dtype=bytes, shape=(1,)),
                Tensor(name="k", dtype=np.int32, shape=(1,)),
            ],
            outputs=[
                Tensor(name="item_ids", dtype=bytes, shape=(-1,)),
                Tensor(name="scores", dtype=np.float32, shape=(-1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.run()  # in the background; this thread waits for the signal
        print(f"READY {args.grpc_port}", flush=True)
        stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
