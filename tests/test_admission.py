"""Admission under overload: the batcher and a real server refuse at once what they cannot serve in time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from recserve.client import RecommenderClient
from recserve.server.admission import QueueWaitEstimator
from recserve.server.batching import DynamicBatcher
from recserve.server.exceptions import OverloadedError, QueueFullError
from recserve.server.frontend import native_available
from recserve.server.settings import BatchingSettings, ServerSettings, StateSettings
from recserve.v1 import recommender_pb2, recommender_pb2_grpc
from tests.repositories import configured_like
from tests.serving import ServerProcess, ServerThread

HUGE_DELAY_US = 60_000_000
RECOMMEND = "recserve.v1.Recommender.Recommend"


class SlowStage:
    """Takes `per_item_s` per item of a batch, like a model whose cost grows with the batch."""

    def __init__(self, per_item_s: float) -> None:
        self.per_item_s = per_item_s
        self.items = 0

    def __call__(self, items: list[int]) -> list[int]:
        time.sleep(self.per_item_s * len(items))
        self.items += len(items)
        return items


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_the_estimate_counts_full_batches_ahead_at_their_measured_cost() -> None:
    estimator = QueueWaitEstimator(BatchingSettings(max_batch_size=8, instance_count=2))
    assert estimator.wait_ns(100, 0, 0) == 0.0, "nothing measured yet: nothing is refused"
    for _ in range(20):
        estimator.on_batch(1, 2_000_000)  # 1 ms fixed + 1 ms per request
        estimator.on_batch(8, 9_000_000)
    assert estimator.batch_ns(7) == pytest.approx(9e6, rel=0.01)
    # 100 queued: 12 full batches ahead, 9 ms each, over 2 instances.
    assert estimator.wait_ns(100, 0, 0) == pytest.approx(12 * 9e6 / 2, rel=0.01)
    # Both instances busy, one started 4 ms ago on a batch of 8: ~5 ms more before a slot frees.
    estimator.on_batch_start(8, 0)
    assert estimator.wait_ns(0, 2, 4_000_000) == pytest.approx(5e6, rel=0.01)


def test_a_batch_of_one_does_not_make_a_burst_look_expensive() -> None:
    estimator = QueueWaitEstimator(BatchingSettings(max_batch_size=64))
    estimator.on_batch(1, 4_000_000)  # one size seen: all of it counts as fixed
    assert estimator.wait_ns(63, 0, 0) == 0.0
    assert estimator.batch_ns(63) == pytest.approx(4e6)


async def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=0)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))  # learn: ~2 ms per request
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]  # ~80 ms of work
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(OverloadedError, match=r"after its deadline \(20 ms left\)") as refused:
        await batcher.submit(99, timeout_s=0.020)
    assert time.perf_counter() - started < 0.05, "refused without waiting for the ~80 ms queued ahead"
    assert isinstance(refused.value, QueueFullError)  # RESOURCE_EXHAUSTED, like a full queue
    assert await batcher.submit(100, timeout_s=10) == 100, "a deadline that fits is queued"
    assert len(await asyncio.gather(*queued)) == 40
    assert batcher.statistics.overloaded_count == 1
    await batcher.close()


async def test_the_queue_is_bounded_by_time_for_requests_without_a_deadline(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=30_000)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError, match=r"more than the 30 ms this server queues a request"):
        await batcher.submit(99)
    await asyncio.gather(*queued, return_exceptions=True)
    assert await batcher.submit(100) == 100, "once the queue drained, requests are admitted again"
    await batcher.close()


async def test_deadline_admission_can_be_turned_off(executor) -> None:
    stage = SlowStage(0.002)
    settings = BatchingSettings(max_batch_size=4, max_queue_wait_microseconds=0, deadline_admission=False)
    batcher = DynamicBatcher(stage, settings, executor, name="test")
    batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(40)]
    late = asyncio.ensure_future(batcher.submit(99, timeout_s=0.020))
    results = await asyncio.gather(*queued, late, return_exceptions=True)
    assert type(results[-1]).__name__ == "DeadlineExceededError", "queued, then expired: the old way"
    await batcher.close()


# --- against a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bounded_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model with a 5 ms queue-wait bound, so one slow batch makes the queue too long."""
    target = tmp_path_factory.mktemp("bounded")
    return configured_like(model_repository, target, "batching", {"max_queue_wait_microseconds": 5_000})


@contextlib.contextmanager
def slow_ranker(server: ServerThread, seconds: float) -> Iterator[None]:
    """Make every batch of the running server take `seconds` longer, until the block ends."""
    model = server.running.service.pipeline.model
    real_ranker = model.ranker

    def slow(**inputs: object) -> object:
        time.sleep(seconds)
        return real_ranker(**inputs)

    model.ranker = slow
    try:
        yield
    finally:
        model.ranker = real_ranker


async def burst(address: str, calls: int) -> collections.Counter[str]:
    """`calls` Recommends at once; their final statuses."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.RecommendRequest(user_id="user-4", k=3)
        results = await asyncio.gather(
            *(stub.Recommend(request, timeout=30) for _ in range(calls)), return_exceptions=True
        )
    return collections.Counter(r.code().name if isinstance(r, grpc.RpcError) else "OK" for r in results)


@pytest.mark.parametrize("frontend", ["native", "aio"])
def test_a_server_refuses_overload_at_once_and_counts_it(
    server_settings: ServerSettings, bounded_repository: Path, tmp_path: Path, frontend: str
) -> None:
    if frontend == "native" and not native_available():
        pytest.skip("the grpc++ front end is not built")  # under CI it is (tests/test_frontend.py)
    settings = server_settings.model_copy(
        update={
            "model_repository": bounded_repository,
            "frontend": frontend,
            "state": StateSettings(state_dir=tmp_path),
        }
    )
    with ServerThread(settings) as server, RecommenderClient(server.address, timeout_s=30) as client:
        with slow_ranker(server, 0.2):
            for _ in range(5):
                client.recommend("user-1", k=3)  # the cost model learns: a batch takes ~0.2 s now
            first = threading.Thread(target=client.recommend, args=("user-2",), kwargs={"k": 3})
            first.start()
            time.sleep(0.05)  # its batch is executing: anything queued now waits ~0.15 s, far past 5 ms
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as refused:
                client.recommend("user-3", k=3)
            refused_after_s = time.perf_counter() - started
            first.join(10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than the 5 ms this server queues a request" in refused.value.details()
        assert refused_after_s < 0.1, "refused on arrival, not after waiting"
        assert len(client.recommend("user-3", k=3).items) == 3, "admitted again once the queue drained"
        if frontend == "native":  # a burst far past what executes at once: refused on grpc's threads
            with slow_ranker(server, 0.2):
                statuses = asyncio.run(burst(server.address, 400))
            refused_here = server.running.server.admission_refused()
            assert refused_here["/recserve.v1.Recommender/Recommend", "RESOURCE_EXHAUSTED"] >= 1
            assert statuses["OK"] >= 1 and statuses["RESOURCE_EXHAUSTED"] >= 1
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    wanted = ('method="recserve.v1.Recommender/Recommend"', 'code="RESOURCE_EXHAUSTED"')
    counted = [line for line in metrics.splitlines() if all(part in line for part in wanted)]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, metrics


def test_refusals_racing_expiring_deadlines_keep_the_server_up(
    model_repository: Path, tmp_path: Path
) -> None:
    """Thousands of calls whose 1 ms deadline expires while the front end refuses them (a refusal at the
    first read once raced Python's answer to the cancellation, and grpc aborted the process on the second
    Finish)."""
    command = [sys.executable, "-m", "recserve", "loadtest", "--insecure", "--call", RECOMMEND]
    command += ["-d", '{"user_id": "user-1", "k": 10}', "-c", "64", "--connections", "8", "-t", "1ms"]
    with ServerProcess(model_repository, tmp_path / "server.log") as server:
        ran = subprocess.run(
            [*command, "-n", "40000", "-O", "json", server.address],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
        statuses = json.loads(ran.stdout)["statusCodeDistribution"]
        assert server.process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        with RecommenderClient(server.address, timeout_s=30) as client:
            assert client.health() == "SERVING"
            assert len(client.recommend("user-1", k=3).items) == 3
    assert set(statuses) <= {"DeadlineExceeded", "ResourceExhausted", "OK"}, statuses
    assert statuses.get("DeadlineExceeded", 0) > 30000, statuses
