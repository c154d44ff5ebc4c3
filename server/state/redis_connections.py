"""Redis clients whose pooled connections find out about a Redis restart before a command does.

After Redis restarts, every connection in a pool is dead, and the first command on each fails ("Connection
closed by server"). A connection idle for over `IDLE_PING_S` PINGs before its next command (redis-py's
health check); here a failed PING reconnects once, and the command goes out on the new connection. Commands
themselves are never re-sent: a transaction whose reply was lost may have run, and its events would be
stored twice.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

IDLE_PING_S = 1.0


class _AsyncReconnectingConnection:
    """Mixed into the pool's asyncio connection class."""

    async def check_health(self) -> None:
        try:
            await super().check_health()  # type: ignore[misc]
        except RedisConnectionError:
            await self.connect()  # type: ignore[attr-defined]  # Redis still down: this raises, nothing was sent


class _ReconnectingConnection:
    """Mixed into the pool's blocking connection class."""

    def check_health(self) -> None:
        try:
            super().check_health()  # type: ignore[misc]
        except RedisConnectionError:
            self.connect()  # type: ignore[attr-defined]


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client of `url` (redis://, rediss://, unix://) whose connections check themselves."""
    client = redis.asyncio.Redis.from_url(url, health_check_interval=IDLE_PING_S, **options)
    _reconnecting(client.connection_pool, _AsyncReconnectingConnection)
    return client


def blocking_client(url: str, **options: Any) -> redis.Redis:
    """A blocking, thread-safe client of `url` whose connections check themselves."""
    client = redis.Redis.from_url(url, health_check_interval=IDLE_PING_S, **options)
    _reconnecting(client.connection_pool, _ReconnectingConnection)
    return client


def _reconnecting(pool: Any, mixin: type) -> None:
    """Make `pool` build its connections (of the class the URL's scheme chose) with `mixin` in front."""
    base = pool.connection_class
    pool.connection_class = type(f"Reconnecting{base.__name__}", (mixin, base), {})
