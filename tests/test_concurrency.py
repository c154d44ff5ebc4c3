"""Concurrent calls are batched together and answered exactly as the same calls made one at a time."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc

CALLS = 200
NEAR_TIE = 1e-5


def requests() -> list[pb.RecommendRequest]:
    built = []
    for n in range(CALLS):
        recent = [f"item-{(n * 37 + j) % 2500}" for j in range(n % 4)]
        user = f"user-{n * 7 % 1500}" if n % 5 else f"stranger-{n}"
        built.append(pb.RecommendRequest(user_id=user, recent_item_ids=recent, k=10 + n % 3))
    return built


def assert_same_up_to_near_ties(concurrent: pb.RecommendResponse, sequential: pb.RecommendResponse) -> None:
    assert len(concurrent.items) == len(sequential.items)
    for got, want in zip(concurrent.items, sequential.items, strict=True):
        assert got.score == pytest.approx(want.score, abs=NEAR_TIE)
        if got.item_id != want.item_id:  # only allowed where two scores tie within float noise
            tied = [item.item_id for item in sequential.items if abs(item.score - got.score) <= NEAR_TIE]
            assert got.item_id in tied, (got, want)
    assert concurrent.cold_start == sequential.cold_start


async def test_concurrent_calls_match_sequential_calls_and_share_batches(server_address, server) -> None:
    stats = server.running.service.batcher.statistics
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        sequential = [await stub.Recommend(request, timeout=30) for request in requests()]
        rows_before, batches_before = stats.inference_count, stats.execution_count
        concurrent = await asyncio.gather(*(stub.Recommend(request, timeout=60) for request in requests()))
    rows = stats.inference_count - rows_before
    batches = stats.execution_count - batches_before
    assert rows == CALLS
    assert batches < CALLS / 2, f"{CALLS} concurrent requests ran in {batches} forward passes"
    assert max(stats.batch_size_counts) > 1
    for got, want in zip(concurrent, sequential, strict=True):
        assert_same_up_to_near_ties(got, want)


async def test_concurrent_score_and_recommend_share_a_batch(server_address, server) -> None:
    stats = server.running.service.batcher.statistics
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        alone = await stub.Score(pb.ScoreRequest(user_id="user-9", item_ids=["item-1", "item-2"]), timeout=30)
        calls = [
            stub.Score(pb.ScoreRequest(user_id="user-9", item_ids=["item-1", "item-2"]), timeout=30)
            for _ in range(50)
        ]
        calls += [stub.Recommend(pb.RecommendRequest(user_id=f"user-{n}"), timeout=30) for n in range(50)]
        batches_before = stats.execution_count
        results = await asyncio.gather(*calls)
    assert stats.execution_count - batches_before < 100
    for score in results[:50]:
        assert list(score.scores) == pytest.approx(list(alone.scores), abs=NEAR_TIE)
