"""The Recommender API against a real server with a real (tiny) model: answers and error statuses."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from recserve.server.settings import load_model_config
from recserve.v1 import recommender_pb2 as pb
from tests.serving import broken_ranker

USER = "user-3"


def recommend(stub, **fields) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(**fields), timeout=30)


def ids(response) -> list[str]:
    return [item.item_id for item in response.items]


def assert_status(call, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()


def test_recommend_returns_k_sorted_probabilities(stub) -> None:
    response = recommend(stub, user_id=USER)
    assert len(response.items) == 10
    assert response.model_version == "1"
    assert not response.cold_start
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < score < 1.0 for score in scores)
    assert len(set(ids(response))) == 10
    assert len(recommend(stub, user_id=USER, k=25).items) == 25


def test_recent_items_are_excluded_unless_asked(stub) -> None:
    recent = ids(recommend(stub, user_id=USER, k=5))
    default = recommend(stub, user_id=USER, recent_item_ids=recent, k=50)
    assert not set(recent) & set(ids(default))
    included = recommend(stub, user_id=USER, recent_item_ids=recent, k=50, include_recent_items=True)
    assert set(recent) & set(ids(included))


def test_excluded_items_never_come_back(stub) -> None:
    top = ids(recommend(stub, user_id=USER, k=20))
    response = recommend(stub, user_id=USER, k=20, exclude_item_ids=top[:10])
    assert not set(top[:10]) & set(ids(response))
    assert len(response.items) == 20


def test_real_time_context_changes_the_recommendation(stub, version_dir) -> None:
    embeddings = np.load(version_dir / "item_embeddings.npy")
    row = {item_id: r for r, item_id in enumerate((version_dir / "item_ids.txt").read_text().splitlines())}

    def closeness(items: list[str], anchor: str) -> float:
        return float(np.mean([embeddings[row[item]] @ embeddings[row[anchor]] for item in items]))

    contexts = {}
    for anchor in ("item-5", "item-1500"):
        contexts[anchor] = [anchor, *ids(stub.SimilarItems(pb.SimilarItemsRequest(item_id=anchor, k=4)))]
    a = ids(recommend(stub, user_id=USER, recent_item_ids=contexts["item-5"]))
    b = ids(recommend(stub, user_id=USER, recent_item_ids=contexts["item-1500"]))
    assert a != b
    assert closeness(a, "item-5") > closeness(b, "item-5")
    assert closeness(b, "item-1500") > closeness(a, "item-1500")


def test_unknown_user_without_context_gets_cold_start(stub) -> None:
    response = recommend(stub, user_id="nobody", recent_item_ids=["no-such-item"])
    assert response.cold_start
    assert len(response.items) == 10
    assert list(response.unknown_item_ids) == ["no-such-item"]
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


def test_unknown_user_with_context_is_personalised(stub) -> None:
    response = recommend(stub, user_id="nobody", recent_item_ids=["item-5", "bogus", "item-6"])
    assert not response.cold_start
    assert list(response.unknown_item_ids) == ["bogus"]
    assert not {"item-5", "item-6"} & set(ids(response))


def test_ids_longer_than_any_id_can_be_are_invalid_argument(stub) -> None:
    assert_status(
        lambda: recommend(stub, user_id="u" * 257), grpc.StatusCode.INVALID_ARGUMENT, "user_id is 257 bytes"
    )
    assert_status(
        lambda: recommend(stub, user_id=USER, recent_item_ids=["item-5", "i" * 100_000]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "an entry of recent_item_ids is 100000 bytes long; ids are at most 256 bytes",
    )
    assert recommend(stub, user_id="u" * 256).cold_start, "256 bytes is still an id"


@pytest.mark.parametrize("k", [-1, 201])
def test_k_out_of_range_is_invalid_argument(stub, k: int) -> None:
    assert_status(
        lambda: recommend(stub, user_id=USER, k=k), grpc.StatusCode.INVALID_ARGUMENT, "k must be", str(k)
    )


def test_score_matches_recommend_in_request_order(stub) -> None:
    top = recommend(stub, user_id=USER, k=5)
    wanted = list(reversed(ids(top)))
    response = stub.Score(pb.ScoreRequest(user_id=USER, item_ids=wanted))
    expected = list(reversed([item.score for item in top.items]))
    np.testing.assert_allclose(response.scores, expected, atol=1e-5)
    assert response.model_version == "1"


def test_score_with_context_differs_from_without(stub) -> None:
    items = ["item-1", "item-2", "item-3"]
    plain = stub.Score(pb.ScoreRequest(user_id=USER, item_ids=items)).scores
    with_context = stub.Score(
        pb.ScoreRequest(user_id=USER, item_ids=items, recent_item_ids=["item-1"])
    ).scores
    assert not np.allclose(plain, with_context)


def test_only_the_latest_recent_items_count_beyond_the_limit(stub) -> None:
    limit = stub.GetModelInfo(pb.GetModelInfoRequest()).max_recent_items
    latest = [f"item-{n}" for n in range(100, 100 + limit)]
    older = [f"item-{n}" for n in range(10, 30)]
    items = ["item-1", "item-2", "item-3"]

    def scores(recent: list[str]) -> list[float]:
        request = pb.ScoreRequest(user_id=USER, item_ids=items, recent_item_ids=recent, ignore_history=True)
        return list(stub.Score(request).scores)

    np.testing.assert_allclose(scores(older + latest), scores(latest), atol=1e-6)
    assert not np.allclose(scores(older[-1:] + latest[:-1]), scores(latest))


def test_score_unknown_item_is_not_found_naming_it(stub) -> None:
    request = pb.ScoreRequest(user_id=USER, item_ids=["item-1", "item-does-not-exist"])
    assert_status(lambda: stub.Score(request), grpc.StatusCode.NOT_FOUND, "item-does-not-exist")


def test_score_too_many_items_is_invalid_argument(stub) -> None:
    request = pb.ScoreRequest(user_id=USER, item_ids=["item-1"] * 1001)
    assert_status(lambda: stub.Score(request), grpc.StatusCode.INVALID_ARGUMENT, "1001", "1000")


def test_score_with_no_items_is_empty(stub) -> None:
    assert list(stub.Score(pb.ScoreRequest(user_id=USER)).scores) == []


def test_similar_items_excludes_itself_and_matches_exact_cosine(stub, version_dir) -> None:
    response = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=5))
    assert len(response.items) == 5
    assert "item-7" not in ids(response)
    embeddings = np.load(version_dir / "item_embeddings.npy")
    item_ids = (version_dir / "item_ids.txt").read_text().splitlines()
    row = {item_id: r for r, item_id in enumerate(item_ids)}
    for item in response.items:
        exact = float(embeddings[row["item-7"]] @ embeddings[row[item.item_id]])
        assert item.score == pytest.approx(exact, abs=1e-3)
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


def test_similar_items_unknown_is_not_found(stub) -> None:
    request = pb.SimilarItemsRequest(item_id="ghost")
    assert_status(lambda: stub.SimilarItems(request), grpc.StatusCode.NOT_FOUND, "ghost")


def test_model_info_describes_the_loaded_version(stub, model_repository) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    config = load_model_config(model_repository / "recommender")
    assert (info.model_name, info.model_version) == ("recommender", "1")
    assert info.num_users == 1500 and info.num_items == 2500
    assert info.embedding_dim == 32
    assert (info.index.library, info.index.metric) == ("annoy", "angular")
    assert info.index.n_trees > 0 and info.index.search_k == config.retrieval.search_k
    assert info.max_k == config.limits.max_k
    assert {"recall@10", "ndcg@10", "popular_recall@10", "ann_recall@100"} <= set(info.evaluation)


def test_undecodable_request_is_invalid_argument(channel) -> None:
    raw = channel.unary_unary("/recserve.v1.Recommender/Recommend")  # bytes in, bytes out
    assert_status(
        lambda: raw(b"\xff\xff\xff\xff", timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a valid recserve.v1.RecommendRequest",
    )
    assert recommend(pb_stub_for(channel), user_id=USER).items  # and the server keeps serving


def test_oversized_request_is_resource_exhausted(stub) -> None:
    huge = pb.RecommendRequest(user_id=USER, recent_item_ids=["x" * 1000] * 5000)  # ~5 MB > 4 MiB limit
    assert_status(lambda: stub.Recommend(huge, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert recommend(stub, user_id=USER).items


def test_model_failure_fails_only_that_batch_with_internal(stub, server) -> None:
    with broken_ranker(server):
        assert_status(lambda: recommend(stub, user_id=USER), grpc.StatusCode.INTERNAL, "ranker exploded")
    assert len(recommend(stub, user_id=USER).items) == 10


def pb_stub_for(channel):
    from recserve.v1 import recommender_pb2_grpc

    return recommender_pb2_grpc.RecommenderStub(channel)


def test_model_statistics_count_requests_batches_and_stages(stub) -> None:
    before = stub.GetModelStatistics(pb.GetModelStatisticsRequest())
    recommend(stub, user_id=USER)
    stub.Score(pb.ScoreRequest(user_id=USER, item_ids=["item-1", "item-2", "item-3"]))
    after = stub.GetModelStatistics(pb.GetModelStatisticsRequest())
    assert (after.model_name, after.model_version) == ("recommender", "1")
    assert after.inference_count - before.inference_count == 2
    assert after.success_count - before.success_count == 2
    assert after.execution_count - before.execution_count == 2
    assert sum(after.batch_size_counts.values()) == after.execution_count
    assert after.compute_duration_us > before.compute_duration_us
    stages = {stage.name: stage for stage in after.stages}
    assert set(stages) == {"history", "user_tower", "ann", "ranker"}
    old = {stage.name: stage for stage in before.stages}
    assert stages["user_tower"].inference_count - old["user_tower"].inference_count == 2
    assert stages["ranker"].inference_count - old["ranker"].inference_count >= 3 + 10


@pytest.mark.parametrize("item_id", ["x" * 100_000, "é" * 50_000])
def test_an_error_quoting_a_long_id_still_arrives(stub, item_id: str) -> None:
    # The message quoted the whole id: its grpc-message header was over the client's metadata limit, and the
    # client saw RESOURCE_EXHAUSTED instead of NOT_FOUND (found by tests/test_fuzz.py).
    with pytest.raises(grpc.RpcError) as caught:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert caught.value.details().startswith("unknown item id '")
    assert len(caught.value.details().encode()) <= 1024
