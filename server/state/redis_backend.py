"""The shared backend: user history and catalog changes in Redis, so every replica reads the same state.

Keys, under the configured prefix:
- `h:<user>`: the user's events, a list (newest last, trimmed to max_history_events); `v:<user>` counts the
  writes to it, so a batch asks one MGET whether its cached profiles are still current and reads (one
  pipeline) only the histories that changed;
- `catalog`: item id -> "<stream id> <tags as JSON, or null when deleted>", the catalog changes as of now;
- `catalog:stream`: every catalog write, in order; each replica follows it and applies what others wrote.

A catalog write is one Lua script (append to the stream, update the hash, atomically), and the stream id is
its version: a replica applies a change only if it is newer than what it has for that item, so its own writes
(applied at once) and the stream's copy of them agree, and replicas converge to the same last write.

When Redis does not answer, writes fail UNAVAILABLE; reads answer with no history at once (counted in
`read_fallbacks`) instead of waiting on every batch, for a second after a failed read and for as long as the
watcher's PINGs fail, then try again; the follower reconnects
and, if the stream was trimmed past what it had read, reloads the whole `catalog` hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import redis
import redis.asyncio
from redis.exceptions import RedisError

from recserve.server.exceptions import UnavailableError
from recserve.server.state.events import CatalogChange, ItemDelete, ItemUpsert, UserEvent
from recserve.server.state.history import EMPTY_PROFILE, StoredEvent, UserProfile, derive_profile, user_events
from recserve.server.state.redis_connections import async_client, blocking_client
from recserve.server.tasks import stop_task

logger = logging.getLogger(__name__)

StreamId = tuple[int, int]
VersionedChange = tuple[CatalogChange, StreamId]
ChangeHandler = Callable[[list[VersionedChange]], Awaitable[None]]

STREAM_MAX_ENTRIES = 100_000
FOLLOW_BLOCK_MS = 1000
FOLLOW_BATCH = 1000
READ_RETRY_S = 1.0
PROFILE_CACHE_USERS = 200_000

CATALOG_WRITE = """
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'c', ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], id .. ' ' .. ARGV[i + 1])
end
return id
"""


def stream_id(text: str) -> StreamId:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def encode_event(event: UserEvent) -> str:
    """An event as a list entry (its user is the key): type|time|item."""
    return f"{int(event.type)}|{event.time_ms}|{event.item_id}"


def decode_event(entry: str) -> StoredEvent:
    """The event of a list entry."""
    kind, time_ms, item_id = entry.split("|", 2)
    return item_id, int(kind), int(time_ms)


def _tags_json(change: CatalogChange) -> str:
    return json.dumps(list(change.tags) if isinstance(change, ItemUpsert) else None, ensure_ascii=False)


def _change(item_id: str, tags: list[str] | None) -> CatalogChange:
    return ItemUpsert(item_id, tuple(tags)) if tags is not None else ItemDelete(item_id)


class RedisBackend:
    """History and catalog changes in one Redis server. `open()` before use, `close()` at the end."""

    def __init__(
        self, url: str, key_prefix: str, timeout_s: float, max_history_events: int, max_context: int
    ) -> None:
        self.url = url
        self._prefix = key_prefix
        self._max_history_events = max_history_events
        self._max_context = max_context
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "decode_responses": True}
        self._writer = async_client(url, **options)
        self._follower = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s + FOLLOW_BLOCK_MS / 1000, decode_responses=True
        )
        self._reader = blocking_client(url, **options)  # batch threads: blocking, thread-safe pool
        self._catalog_write = self._writer.register_script(CATALOG_WRITE)
        self._profiles: dict[str, tuple[int, UserProfile]] = {}
        self._profiles_lock = threading.Lock()
        self._reads_paused_until = 0.0
        self._last_stream_id = "0-0"
        self._follow_task: asyncio.Task[None] | None = None
        self._closing = False
        self.read_fallbacks = 0
        """Batches that were served without history because Redis did not answer."""
        self.errors = 0
        """Redis commands that failed."""
        self.available = True
        """Whether the last Redis command answered."""
        self.problem: str | None = None
        """Why the last Redis command failed; None once one answers again."""

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}{name}"

    async def open(self) -> list[VersionedChange]:
        """The catalog changes as of now (each with its version); following starts from there.

        Raises:
            UnavailableError: Redis does not answer.
        """
        async with self._writing("read the catalog changes"):
            async with self._writer.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key("catalog"))
                pipe.xrevrange(self._key("catalog:stream"), count=1)
                current, last = await pipe.execute()
        self._last_stream_id = last[0][0] if last else "0-0"
        return self._decode_catalog(current)

    def follow_catalog(self, on_changes: ChangeHandler) -> None:
        """Apply every later catalog write, this replica's and the others', through `on_changes`."""
        self._follow_task = asyncio.get_running_loop().create_task(self._follow(on_changes))

    async def close(self) -> None:
        """Stop following and close the connections."""
        self._closing = True
        if self._follow_task is not None:
            await stop_task(self._follow_task, "state: the catalog follower")
        for client in (self._writer, self._follower):
            await client.aclose()
        self._reader.close()

    async def record_events(self, events: Sequence[UserEvent]) -> None:
        """Append events to their users' lists (one transaction); visible to every replica on return."""
        if not events:
            return
        by_user: dict[str, list[str]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(encode_event(event))
        async with self._writing("store the events"):
            async with self._writer.pipeline(transaction=True) as pipe:
                for user_id, entries in by_user.items():
                    history = self._key("h:", user_id)
                    pipe.rpush(history, *entries)
                    pipe.ltrim(history, -self._max_history_events, -1)
                    pipe.incr(self._key("v:", user_id))
                await pipe.execute()

    async def user_history(self, user_id: str) -> list[UserEvent]:
        """The user's stored events, oldest first."""
        async with self._writing("read the history"):
            entries = await self._writer.lrange(self._key("h:", user_id), 0, -1)
        return user_events(user_id, map(decode_event, entries))

    async def forget_user(self, user_id: str) -> int:
        """Delete the user's events; returns how many there were."""
        async with self._writing("delete the history"):
            async with self._writer.pipeline(transaction=True) as pipe:
                pipe.llen(self._key("h:", user_id))
                pipe.delete(self._key("h:", user_id))
                pipe.incr(self._key("v:", user_id))
                count, _, _ = await pipe.execute()
        return int(count)

    async def record_catalog_changes(self, changes: Sequence[CatalogChange]) -> StreamId | None:
        """Publish catalog changes to every replica; returns their version (the stream id)."""
        if not changes:
            return None
        payload = json.dumps([[c.item_id, json.loads(_tags_json(c))] for c in changes], ensure_ascii=False)
        arguments: list[str | int] = [STREAM_MAX_ENTRIES, payload]
        for change in changes:
            arguments += [change.item_id, _tags_json(change)]
        keys = [self._key("catalog"), self._key("catalog:stream")]
        async with self._writing("publish the catalog changes"):
            entry_id = await self._catalog_write(keys=keys, args=arguments)
        return stream_id(entry_id)

    def profiles(self, user_ids: Sequence[str]) -> list[UserProfile]:
        """Each user's profile; no history for anyone while Redis does not answer (counted)."""
        if not user_ids:
            return []
        if time.monotonic() < self._reads_paused_until:
            self.read_fallbacks += 1
            return [EMPTY_PROFILE] * len(user_ids)
        try:
            return self._read_profiles(user_ids)
        except RedisError as error:
            self.errors += 1
            self.read_fallbacks += 1
            self.available = False
            self.problem = f"Redis at {self.url} does not answer ({error})"
            self._reads_paused_until = time.monotonic() + READ_RETRY_S
            logger.warning("state: Redis did not answer a history read (%s); serving without history", error)
            return [EMPTY_PROFILE] * len(user_ids)

    def _read_profiles(self, user_ids: Sequence[str]) -> list[UserProfile]:
        versions = self._reader.mget([self._key("v:", user_id) for user_id in user_ids])
        self.available, self.problem = True, None
        with self._profiles_lock:
            cached = [self._profiles.get(user_id) for user_id in user_ids]
        stale = [
            row
            for row, (version, hit) in enumerate(zip(versions, cached, strict=True))
            if version is not None and (hit is None or hit[0] != int(version))
        ]
        fresh: dict[int, UserProfile] = {}
        if stale:
            with self._reader.pipeline(transaction=False) as pipe:
                for row in stale:
                    pipe.lrange(self._key("h:", user_ids[row]), 0, -1)
                histories = pipe.execute()
            for row, entries in zip(stale, histories, strict=True):
                fresh[row] = derive_profile(list(map(decode_event, entries)), self._max_context)
            self._remember({user_ids[row]: (int(versions[row]), fresh[row]) for row in stale})
        return [
            fresh[row]
            if row in fresh
            else (hit[1] if version is not None and hit is not None else EMPTY_PROFILE)
            for row, (version, hit) in enumerate(zip(versions, cached, strict=True))
        ]

    def _remember(self, profiles: dict[str, tuple[int, UserProfile]]) -> None:
        with self._profiles_lock:
            if len(self._profiles) + len(profiles) > PROFILE_CACHE_USERS:
                self._profiles.clear()  # crude but bounded: the next batches refill what is in use
            self._profiles.update(profiles)

    @contextlib.asynccontextmanager
    async def _writing(self, what: str):  # noqa: ANN202
        """Turn Redis failures into UNAVAILABLE for the caller, and count them."""
        try:
            yield
        except RedisError as error:
            self.errors += 1
            self.available = False
            self.problem = f"Redis at {self.url} does not answer ({error})"
            raise UnavailableError(
                f"could not {what}: Redis at {self.url} did not answer ({error}); retry later"
            ) from error
        self.available, self.problem = True, None

    async def probe(self) -> str | None:
        """Whether Redis answers a PING now: the problem, or None."""
        try:
            await self._writer.ping()
        except RedisError as error:
            self.available = False
            self.problem = f"Redis at {self.url} does not answer ({error})"
            # Reads answer without history until a PING succeeds: a slow Redis would otherwise hold a batch
            # for the whole timeout every READ_RETRY_S. Past the next probe, which clears it.
            self._reads_paused_until = time.monotonic() + 2 * READ_RETRY_S
            return self.problem
        self.available, self.problem = True, None
        self._reads_paused_until = 0.0
        return None

    async def _follow(self, on_changes: ChangeHandler) -> None:
        """Read the stream from the last entry seen; after an outage, reload the hash if entries were lost."""
        stream = self._key("catalog:stream")
        lost_connection = False
        while not self._closing:
            try:
                if lost_connection:
                    await self._resync_if_trimmed(on_changes)
                    lost_connection = False
                reply = await self._follower.xread(
                    {stream: self._last_stream_id}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS
                )
            except RedisError as error:
                self.errors += 1
                if not lost_connection:
                    logger.warning("state: lost the catalog stream (%s); reconnecting", error)
                lost_connection = True
                await asyncio.sleep(READ_RETRY_S)
                continue
            if reply:
                entries = reply[0][1]
                changes = [
                    (_change(item_id, tags), stream_id(entry_id))
                    for entry_id, fields in entries
                    for item_id, tags in json.loads(fields["c"])
                ]
                await on_changes(changes)
                self._last_stream_id = entries[-1][0]

    async def _resync_if_trimmed(self, on_changes: ChangeHandler) -> None:
        first = await self._follower.xrange(self._key("catalog:stream"), count=1)
        if first and stream_id(first[0][0]) > stream_id(self._last_stream_id):
            logger.warning("state: the catalog stream was trimmed past this replica; reloading every change")
            await on_changes(await self.open())

    @staticmethod
    def _decode_catalog(current: dict[str, str]) -> list[VersionedChange]:
        changes = []
        for item_id, value in current.items():
            version, _, tags = value.partition(" ")
            changes.append((_change(item_id, json.loads(tags)), stream_id(version)))
        return changes
