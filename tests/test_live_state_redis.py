"""Two servers sharing one real Redis: they converge, a new one catches up, and Redis can die and return."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from recserve.client import Event, Item, RecommenderClient
from recserve.server.settings import ServerSettings, StateSettings
from tests.redis_server import RedisServer
from tests.serving import ServerThread
from tests.tokens import Tokens, bearer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def redis_settings(server_settings: ServerSettings, redis: RedisServer, tokens: Tokens) -> ServerSettings:
    return server_settings.model_copy(
        update={
            "events_enabled": True,
            "catalog_enabled": True,
            "auth": tokens.settings(),
            "state": StateSettings(backend="redis", redis_url=redis.url, redis_timeout_seconds=0.3),
        }
    )


def eventually(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until `check()` held; fails after `within_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        time.sleep(0.01)
    return time.monotonic() - started


def ids(recommendation) -> list[str]:  # noqa: ANN001
    return [item.item_id for item in recommendation.items]


def test_two_servers_converge_and_a_new_one_catches_up(
    server_settings: ServerSettings, redis_server: RedisServer, tokens: Tokens
) -> None:
    settings = redis_settings(server_settings, redis_server, tokens)
    writer = bearer(tokens.write)
    with ServerThread(settings) as first, ServerThread(settings) as second:
        with (
            RecommenderClient(first.address, metadata=writer) as one,
            RecommenderClient(second.address, metadata=writer) as two,
        ):
            one.record_events([Event("shared-user", item) for item in ids(two.recommend("user-4", k=3))])
            assert len(two.user_history("shared-user")) == 3, "history is read from Redis by every replica"
            assert not two.recommend("shared-user").cold_start

            gone = ids(one.recommend("user-4", k=1))[0]
            one.upsert_items([Item("fresh-item", ("tag-7",))])
            one.delete_items([gone])
            seconds = eventually(lambda: _has_item(two, "fresh-item") and not _has_item(two, gone), 1.0)
            assert seconds < 1.0
            assert gone not in ids(two.recommend("user-4", k=200))

    with ServerThread(settings) as late, RecommenderClient(late.address, metadata=writer) as three:
        assert three.get_item("fresh-item").tags == ("tag-7",), "a new replica catches up at start"
        assert not _has_item(three, gone)


def _has_item(client: RecommenderClient, item_id: str) -> bool:
    try:
        client.get_item(item_id)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True


def test_redis_down_then_back(
    server_settings: ServerSettings, redis_server: RedisServer, tokens: Tokens
) -> None:
    with ServerThread(redis_settings(server_settings, redis_server, tokens)) as server:
        with RecommenderClient(server.address, timeout_s=10, metadata=bearer(tokens.write)) as client:
            client.record_events([Event("outage-user", "item-8")])
            redis_server.kill()

            answer = client.recommend("outage-user", k=5)  # served from the request's own context
            assert len(answer.items) == 5
            with pytest.raises(grpc.RpcError) as refused:
                client.record_events([Event("outage-user", "item-9")])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert server.running.state.backend.read_fallbacks > 0

            redis_server.start()
            eventually(lambda: _records(client), 10.0)
            assert [e.item_id for e in client.user_history("outage-user")] == ["item-8", "item-9"]
            eventually(lambda: not client.recommend("outage-user", k=5).cold_start, 5.0)


def _records(client: RecommenderClient) -> bool:
    try:
        client.record_events([Event("outage-user", "item-9")])
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        return False
    return True
