"""The Redis state backend against a real redis-server: shared by replicas, and it outlives Redis outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from recserve.server.exceptions import UnavailableError
from recserve.server.state.events import EventType, ItemDelete, ItemUpsert, UserEvent
from recserve.server.state.redis_backend import READ_RETRY_S, RedisBackend, VersionedChange
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def replica(server: RedisServer) -> RedisBackend:
    return RedisBackend(server.url, "test:", timeout_s=0.5, max_history_events=4, max_context=50)


@pytest_asyncio.fixture(loop_scope="function")
async def replicas(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    first, second = replica(redis_server), replica(redis_server)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


def views(user: str, *items: str) -> list[UserEvent]:
    return [UserEvent(user, item, EventType.VIEW, n) for n, item in enumerate(items)]


async def test_one_replicas_events_are_the_next_read_of_another(
    replicas: tuple[RedisBackend, RedisBackend],
) -> None:
    first, second = replicas
    assert second.profiles(["u"])[0].context == ()
    await first.record_events(views("u", "a", "b"))
    assert second.profiles(["u"])[0].context == ("a", "b")
    await first.record_events([UserEvent("u", "a", EventType.DISLIKE, 9)])
    profile = second.profiles(["u", "other"])
    assert profile[0].context == ("b",) and profile[0].disliked == {"a"}
    assert profile[1].context == ()


async def test_history_is_trimmed_and_forgotten(replicas: tuple[RedisBackend, RedisBackend]) -> None:
    first, second = replicas
    await first.record_events(views("u", *"abcdef"))
    assert [e.item_id for e in await second.user_history("u")] == list("cdef")
    assert second.profiles(["u"])[0].context == tuple("cdef")
    assert await second.forget_user("u") == 4
    assert await first.user_history("u") == []
    assert first.profiles(["u"])[0].context == ()


async def test_catalog_changes_reach_every_replica_in_order(
    replicas: tuple[RedisBackend, RedisBackend],
) -> None:
    first, second = replicas
    received: list[VersionedChange] = []
    arrived = asyncio.Event()

    async def on_changes(changes: list[VersionedChange]) -> None:
        received.extend(changes)
        arrived.set()

    second.follow_catalog(on_changes)
    version = await first.record_catalog_changes([ItemUpsert("x", ("t1",)), ItemDelete("y")])
    started = time.monotonic()
    await asyncio.wait_for(arrived.wait(), 5)
    assert time.monotonic() - started < 1.0
    assert received == [(ItemUpsert("x", ("t1",)), version), (ItemDelete("y"), version)]

    later = replica_from(first)
    assert sorted(await later.open(), key=lambda change: change[0].item_id) == received
    await later.close()


def replica_from(backend: RedisBackend) -> RedisBackend:
    return RedisBackend(backend.url, "test:", timeout_s=0.5, max_history_events=4, max_context=50)


async def test_redis_down_fails_writes_and_serves_reads_without_history(
    redis_server: RedisServer, replicas: tuple[RedisBackend, RedisBackend]
) -> None:
    first, second = replicas
    received: list[VersionedChange] = []
    second.follow_catalog(lambda changes: _collect(received, changes))
    await first.record_events(views("u", "a"))
    redis_server.kill()

    with pytest.raises(UnavailableError, match="did not answer"):
        await first.record_events(views("u", "b"))
    started = time.monotonic()
    assert first.profiles(["u"])[0].context == ()
    assert first.profiles(["u"])[0].context == ()  # paused: answered at once, not after another timeout
    assert time.monotonic() - started < 1.0
    assert first.read_fallbacks == 2 and not first.available

    redis_server.start()
    await asyncio.sleep(READ_RETRY_S + 0.1)
    await first.record_events(views("u", "b"))
    assert first.profiles(["u"])[0].context == ("a", "b")
    assert first.available
    version = await first.record_catalog_changes([ItemUpsert("after", ())])
    for _ in range(50):
        if received:
            break
        await asyncio.sleep(0.1)
    assert received == [(ItemUpsert("after", ()), version)], "the follower did not reconnect"


async def test_reads_skip_a_redis_that_fails_its_ping_until_it_answers_again(
    redis_server: RedisServer, replicas: tuple[RedisBackend, RedisBackend]
) -> None:
    first, _ = replicas
    await first.record_events(views("u", "a"))
    control = redis.Redis.from_url(redis_server.url)
    control.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # a Redis too slow to answer in time
    assert await first.probe() is not None
    errors = first.errors
    assert first.profiles(["u"])[0].context == (), "answered without history"
    assert first.errors == errors, "without asking Redis: it would hold the batch for the whole timeout"
    await asyncio.sleep(1.6)  # the pause is over
    assert await first.probe() is None
    assert first.profiles(["u"])[0].context == ("a",)
    control.close()


async def _collect(into: list[VersionedChange], changes: list[VersionedChange]) -> None:
    into.extend(changes)


async def test_close_stops_a_follower_that_swallowed_its_cancellation(redis_server: RedisServer) -> None:
    backend = replica(redis_server)
    await backend.open()
    real_xread = backend._follower.xread
    swallowed = []

    async def xread_that_swallows_one_cancel(*args: object, **kwargs: object) -> object:
        try:
            return await real_xread(*args, **kwargs)
        except asyncio.CancelledError:  # what redis-py does when its socket timeout fires at the same moment
            if swallowed:
                raise
            swallowed.append(True)
            return await real_xread(*args, **kwargs)

    backend._follower.xread = xread_that_swallows_one_cancel  # type: ignore[method-assign]

    async def ignore(changes: list[VersionedChange]) -> None:
        pass

    backend.follow_catalog(ignore)
    await asyncio.sleep(0.2)  # blocked in XREAD now
    started = time.monotonic()
    await asyncio.wait_for(backend.close(), 5)
    assert swallowed, "the first cancellation reached the XREAD and was swallowed"
    assert time.monotonic() - started < 1
