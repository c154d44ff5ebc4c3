"""The client package against a real server: the sync and asyncio clients, error surfacing, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recserve.client import AsyncRecommenderClient, Recommendation, RecommenderClient
from recserve.client.cli import TARGET_ENV, build_client_parser

REPO_ROOT = Path(__file__).resolve().parent.parent
USER = "user-3"
UNKNOWN_USER = "user-that-does-not-exist"
UNKNOWN_ITEM = "item-that-does-not-exist"
RECENT = ["item-1", "item-2", "item-3"]
# Nothing listens on port 1, so connecting fails at once with UNAVAILABLE.
DEAD_TARGET = "127.0.0.1:1"


@pytest.fixture(scope="module")
def client(server_address: str) -> Iterator[RecommenderClient]:
    with RecommenderClient(server_address, timeout_s=30) as recommender:
        yield recommender


def item_ids(result: Recommendation) -> list[str]:
    return [item.item_id for item in result.items]


def assert_ranked(result: Recommendation, k: int) -> None:
    """k distinct items, probabilities in (0, 1), best first."""
    scores = [item.score for item in result.items]
    assert len(result.items) == k
    assert len(set(item_ids(result))) == k
    assert all(0 < score < 1 for score in scores)
    assert scores == sorted(scores, reverse=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_client_parser().parse_args(argv)
    exit_code = args.func(args)
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


# --- sync client ---------------------------------------------------------------------------------------


def test_recommend_honours_k_and_ranks_best_first(client: RecommenderClient) -> None:
    result = client.recommend(USER, k=7)

    assert_ranked(result, 7)
    assert result.model_version
    assert result.cold_start is False
    assert result.unknown_item_ids == []


def test_recommend_k_zero_means_server_default(client: RecommenderClient) -> None:
    assert len(client.recommend(USER).items) == client.model_info().default_k


def test_recent_items_are_excluded_unless_included(client: RecommenderClient) -> None:
    # The user's own favourites as context: with the context allowed back, some of them rank in the top.
    recent = item_ids(client.recommend(USER, k=3))
    k = client.model_info().max_k

    excluded = client.recommend(USER, k=k, recent_item_ids=recent)
    included = client.recommend(USER, k=k, recent_item_ids=recent, include_recent_items=True)

    assert not set(recent) & set(item_ids(excluded))
    assert set(recent) & set(item_ids(included))
    assert_ranked(included, k)


def test_exclude_item_ids_are_never_returned(client: RecommenderClient) -> None:
    top = item_ids(client.recommend(USER, k=5))

    result = client.recommend(USER, k=5, exclude_item_ids=top[:2])

    assert not set(top[:2]) & set(item_ids(result))
    assert_ranked(result, 5)


def test_unknown_context_ids_are_listed_not_fatal(client: RecommenderClient) -> None:
    result = client.recommend(USER, k=5, recent_item_ids=["item-1", UNKNOWN_ITEM])

    assert result.unknown_item_ids == [UNKNOWN_ITEM]
    assert_ranked(result, 5)


def test_unknown_user_without_context_is_cold_start(client: RecommenderClient) -> None:
    result = client.recommend(UNKNOWN_USER, k=5)

    assert result.cold_start is True
    assert_ranked(result, 5)
    assert client.score(UNKNOWN_USER, ["item-1"]).cold_start is True


def test_score_answers_in_request_order_and_agrees_with_recommend(client: RecommenderClient) -> None:
    recommended = client.recommend(USER, k=10, recent_item_ids=RECENT)
    ids = item_ids(recommended)

    scored = client.score(USER, ids, recent_item_ids=RECENT)
    reversed_scores = client.score(USER, ids[::-1], recent_item_ids=RECENT).scores

    assert scored.model_version == recommended.model_version
    assert scored.cold_start is False
    assert scored.scores == pytest.approx([item.score for item in recommended.items], abs=1e-5)
    assert reversed_scores == pytest.approx(scored.scores[::-1], abs=1e-5)


def test_similar_items_excludes_the_query_item(client: RecommenderClient) -> None:
    result = client.similar_items("item-7", k=5)
    similarities = [item.score for item in result.items]

    assert len(result.items) == 5
    assert "item-7" not in {item.item_id for item in result.items}
    assert len({item.item_id for item in result.items}) == 5
    assert similarities == sorted(similarities, reverse=True)
    assert result.model_version


def test_model_info_describes_the_loaded_model(client: RecommenderClient) -> None:
    info = client.model_info()

    assert info.model_version == client.recommend(USER, k=1).model_version
    assert info.model_name
    assert info.num_users >= 1000
    assert info.num_items >= 2000
    assert info.embedding_dim > 0
    assert 1 <= info.default_k <= info.max_k
    assert info.max_score_items >= 1
    assert info.max_recent_items >= 1
    assert info.index.library
    assert info.index.candidate_count >= 1
    assert all(isinstance(value, float) for value in info.evaluation.values())


def test_health_and_wait_until_serving(client: RecommenderClient) -> None:
    assert client.health() == "SERVING"
    client.wait_until_serving(timeout_s=5)


def test_wait_until_serving_times_out_when_nothing_listens() -> None:
    with RecommenderClient(DEAD_TARGET) as dead, pytest.raises(TimeoutError, match="UNAVAILABLE"):
        dead.wait_until_serving(timeout_s=0.5)


def test_client_uses_a_given_channel_and_leaves_it_open(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        with RecommenderClient(channel=channel) as borrowed:
            assert borrowed.health() == "SERVING"
        assert RecommenderClient(channel=channel).health() == "SERVING"


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_item_in_score_is_not_found_naming_the_id(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.score(USER, ["item-1", UNKNOWN_ITEM])

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert UNKNOWN_ITEM in raised.value.details()


def test_unknown_item_in_similar_is_not_found(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.similar_items(UNKNOWN_ITEM)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_negative_k_is_invalid_argument(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.recommend(USER, k=-1)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bare_string_of_ids_is_refused_before_sending(client: RecommenderClient) -> None:
    with pytest.raises(TypeError, match="item_ids"):
        client.score(USER, "item-1")


# --- asyncio client ----------------------------------------------------------------------------------------


async def test_async_client_gives_the_same_answers(client: RecommenderClient, server_address: str) -> None:
    expected = client.recommend(USER, k=10, recent_item_ids=RECENT)

    async with AsyncRecommenderClient(server_address, timeout_s=30) as async_client:
        await async_client.wait_until_serving(timeout_s=5)
        result = await async_client.recommend(USER, k=10, recent_item_ids=RECENT)
        scores = await async_client.score(USER, item_ids(expected), recent_item_ids=RECENT)
        similar = await async_client.similar_items("item-7", k=5)
        info = await async_client.model_info()
        status = await async_client.health()

    assert item_ids(result) == item_ids(expected)
    assert [item.score for item in result.items] == pytest.approx([i.score for i in expected.items], abs=1e-5)
    assert scores.scores == pytest.approx([item.score for item in expected.items], abs=1e-5)
    assert similar == client.similar_items("item-7", k=5)
    assert info == client.model_info()
    assert status == "SERVING"


async def test_async_client_surfaces_rpc_errors(server_address: str) -> None:
    async with AsyncRecommenderClient(server_address) as async_client:
        with pytest.raises(grpc.RpcError) as raised:
            await async_client.score(USER, [UNKNOWN_ITEM])

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert UNKNOWN_ITEM in raised.value.details()


async def test_async_wait_until_serving_times_out_when_nothing_listens() -> None:
    async with AsyncRecommenderClient(DEAD_TARGET) as dead:
        with pytest.raises(TimeoutError, match="UNAVAILABLE"):
            await dead.wait_until_serving(timeout_s=0.5)


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_recommend_table(
    client: RecommenderClient, server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = client.recommend(USER, k=5)

    exit_code, out, err = run_cli(
        ["recommend", "--user", USER, "-k", "5", "--target", server_address], capsys
    )

    assert (exit_code, err) == (0, "")
    assert f"model version {expected.model_version}" in out
    assert "cold start" not in out
    for item in expected.items:
        assert item.item_id in out
        assert f"{item.score:.4f}" in out


def test_cli_recommend_table_notes_cold_start_and_unknown_context(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recommend", "--user", UNKNOWN_USER, "--recent", UNKNOWN_ITEM, "--target", server_address]

    exit_code, out, _ = run_cli(argv, capsys)

    assert exit_code == 0
    assert "cold start" in out
    assert UNKNOWN_ITEM in out


def test_cli_recommend_json(
    client: RecommenderClient, server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recommend", "--user", USER, "-k", "5", "--recent", *RECENT, "--json", "--target", server_address]
    expected = client.recommend(USER, k=5, recent_item_ids=RECENT)

    exit_code, out, _ = run_cli(argv, capsys)
    answer = json.loads(out)

    assert exit_code == 0
    assert set(answer) == {"model_version", "cold_start", "items", "unknown_item_ids"}
    assert answer["model_version"] == expected.model_version
    assert answer["cold_start"] is False
    assert answer["unknown_item_ids"] == []
    assert [item["item_id"] for item in answer["items"]] == item_ids(expected)
    assert [item["score"] for item in answer["items"]] == pytest.approx(
        [i.score for i in expected.items], abs=1e-5
    )


def test_cli_score_json_keeps_request_order(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    items = ["item-9", "item-4", "item-6"]

    exit_code, out, _ = run_cli(
        ["score", "--user", USER, "--items", *items, "--json", "--target", server_address], capsys
    )
    answer = json.loads(out)

    assert exit_code == 0
    assert [item["item_id"] for item in answer["items"]] == items
    assert all(0 < item["score"] < 1 for item in answer["items"])


def test_cli_score_table(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, out, _ = run_cli(
        ["score", "--user", USER, "--items", "item-9", "item-4", "--target", server_address], capsys
    )

    assert exit_code == 0
    assert "item-9" in out and "item-4" in out


def test_cli_similar_json_and_table(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, out, _ = run_cli(
        ["similar", "--item", "item-7", "-k", "4", "--json", "--target", server_address], capsys
    )
    answer = json.loads(out)

    assert exit_code == 0
    assert answer["item_id"] == "item-7"
    assert len(answer["items"]) == 4
    assert "item-7" not in {item["item_id"] for item in answer["items"]}

    exit_code, out, _ = run_cli(
        ["similar", "--item", "item-7", "-k", "4", "--target", server_address], capsys
    )
    assert exit_code == 0
    assert all(item["item_id"] in out for item in answer["items"])


def test_cli_model_info_json_and_table(
    client: RecommenderClient, server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    info = client.model_info()

    exit_code, out, _ = run_cli(["model-info", "--json", "--target", server_address], capsys)
    answer = json.loads(out)

    assert exit_code == 0
    assert answer["model_version"] == info.model_version
    assert answer["num_items"] == info.num_items
    assert answer["index"]["library"] == info.index.library
    assert answer["index"]["exact_search"] is False and answer["index"]["exact_search_max_items"] == 0
    assert answer["evaluation"] == pytest.approx(info.evaluation)

    exit_code, out, _ = run_cli(["model-info", "--target", server_address], capsys)
    assert exit_code == 0
    assert info.model_version in out
    assert info.index.library in out
    assert "through the index" in out


def test_cli_health(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, out, _ = run_cli(["health", "--target", server_address], capsys)
    assert (exit_code, out.strip()) == (0, "SERVING")

    exit_code, out, _ = run_cli(["health", "--json", "--target", server_address], capsys)
    assert (exit_code, json.loads(out)) == (0, {"service": "", "status": "SERVING"})


def test_cli_reports_rpc_errors_on_stderr_with_exit_code_1(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["score", "--user", USER, "--items", UNKNOWN_ITEM, "--target", server_address]

    exit_code, out, err = run_cli(argv, capsys)

    assert exit_code == 1
    assert out == ""
    assert err.startswith("error: NOT_FOUND: ")
    assert UNKNOWN_ITEM in err
    assert "Traceback" not in err


def test_cli_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, _, err = run_cli(["health", "--target", DEAD_TARGET, "--timeout", "5"], capsys)

    assert exit_code == 1
    assert err.startswith("error: UNAVAILABLE: ")


def test_cli_target_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TARGET_ENV, "example.test:1234")
    assert build_client_parser().parse_args(["health"]).target == "example.test:1234"

    monkeypatch.delenv(TARGET_ENV)
    assert build_client_parser().parse_args(["health"]).target == "localhost:8001"


def test_cli_refuses_a_non_positive_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_client_parser().parse_args(["health", "--timeout", "0"])
    assert "positive" in capsys.readouterr().err


def test_console_script_recommend_json(server_address: str) -> None:
    argv = [
        sys.executable,
        "-m",
        "recserve",
        "recommend",
        "--user",
        USER,
        "--json",
        "--target",
        server_address,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    finished = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert finished.returncode == 0, finished.stderr
    answer = json.loads(finished.stdout)
    assert answer["model_version"]
    assert answer["items"]


def test_model_statistics_count_this_clients_requests(client: RecommenderClient) -> None:
    before = client.model_statistics()
    client.recommend("user-3", priority=1)
    client.score("user-3", ["item-1"], priority=0)
    after = client.model_statistics()
    assert after.inference_count - before.inference_count == 2
    assert after.mean_batch_size >= 1
    assert [stage.name for stage in after.stages] == ["history", "user_tower", "ann", "ranker"]
    assert sum(after.batch_size_counts.values()) == after.execution_count


def test_priority_out_of_range_is_invalid_argument(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.recommend("user-3", priority=2)  # the committed config has one priority level
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in caught.value.details()


def test_cli_stats_json_and_table(server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["stats", "--json", "--target", server_address], capsys)
    assert code == 0
    stats = json.loads(out)
    assert stats["model_name"] == "recommender" and stats["inference_count"] > 0
    assert stats["mean_batch_size"] >= 1
    code, out, _ = run_cli(["stats", "--target", server_address], capsys)
    assert code == 0 and "mean batch size" in out and "stage ann" in out
