"""What the server recorded since its version was built: every user's events and the catalog changes.

Read from the state the server keeps, without disturbing a server that is running on it: the memory
backend's directory is only read (the snapshot and log segments it would replay, decoded by the backend's
own record format; a record still being written is left out), Redis only read (the histories by SCAN, the
catalog through the backend's own reader). Each user's events are those the server retains
(`state.max_history_events`, the latest), as `GetUserHistory` would return them.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.exceptions import RedisError

from recserve.server.exceptions import UnavailableError
from recserve.server.settings import StateSettings
from recserve.server.state.events import EventType, ItemUpsert, UserEvent
from recserve.server.state.history import StoredEvent, stored
from recserve.server.state.log import SEGMENT, SNAPSHOT, CorruptLogError, read_records
from recserve.server.state.memory import CatalogChanges, Events, Forget, decode
from recserve.server.state.redis_backend import RedisBackend, decode_event

Catalog = dict[str, tuple[str, ...] | None]
"""Item id -> its tags as last upserted, or None when its last change deleted it."""
READ_ATTEMPTS = 3  # a compaction may delete a segment between listing and reading it
SCAN_BATCH = 1000


class StateReadError(Exception):
    """The recorded state cannot be read; the message says where and why."""


@dataclass(frozen=True)
class RecordedState:
    """Every retained event (each user's in the order they arrived) and the catalog's changes."""

    events: tuple[UserEvent, ...]
    catalog: Catalog
    where: str  # the state directory or Redis URL, for messages


def read_recorded_state(settings: StateSettings) -> RecordedState:
    """The state of the backend `settings` name, as a server starting on it would rebuild it.

    Raises:
        StateReadError: the directory is missing, not readable or damaged; Redis does not answer.
    """
    if settings.backend == "redis":
        return _read_redis(settings)
    return _read_state_dir(settings.state_dir, settings.max_history_events)


def _read_state_dir(directory: Path, max_history_events: int) -> RecordedState:
    if not directory.exists():
        raise StateReadError(
            f"no state directory at {directory} (the server's state.state_dir, --state-dir): nothing recorded"
        )
    if not directory.is_dir():
        raise StateReadError(f"the state directory {directory} is not a directory")
    for attempt in range(READ_ATTEMPTS):
        try:
            payloads = _replayed_payloads(directory)
            break
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise StateReadError(f"the state under {directory} kept changing while it was read") from None
            time.sleep(0.1)
        except CorruptLogError as error:
            raise StateReadError(str(error)) from error
        except OSError as error:
            raise StateReadError(f"cannot read the state directory {directory} ({error.strerror})") from error
    histories: dict[str, list[StoredEvent]] = {}
    catalog: Catalog = {}
    for payload in payloads:
        _apply(decode(payload), histories, catalog)
    return RecordedState(_events(histories, max_history_events), catalog, f"state directory {directory}")


def _replayed_payloads(directory: Path) -> list[bytes]:
    """The records start-up replays: the newest snapshot, then every segment from its generation on.

    Unlike the server's own start-up this changes nothing on disk: a torn last record (perhaps one being
    written right now) is left out, not cut off.
    """
    names = [path.name for path in directory.iterdir()]
    snapshots = sorted(int(match.group(1)) for name in names if (match := SNAPSHOT.match(name)))
    base = snapshots[-1] if snapshots else None
    records: list[bytes] = []
    if base is not None:
        records += read_records(directory / f"snapshot-{base:08d}.bin")[0]
    segments = sorted(int(match.group(1)) for name in names if (match := SEGMENT.match(name)))
    segments = [generation for generation in segments if base is None or generation >= base]
    for position, generation in enumerate(segments):
        path = directory / f"log-{generation:08d}.bin"
        segment_records, end = read_records(path)
        if end < path.stat().st_size and position != len(segments) - 1:
            raise CorruptLogError(f"{path} is damaged at byte {end}; the state cannot be read")
        records += segment_records
    return records


def _apply(
    record: Events | Forget | CatalogChanges, histories: dict[str, list[StoredEvent]], catalog: Catalog
) -> None:
    """One record, applied as the memory backend applies it."""
    if isinstance(record, Events):
        for event in record.events:
            histories.setdefault(event.user_id, []).append(stored(event))
    elif isinstance(record, Forget):
        histories.pop(record.user_id, None)
    else:
        for change in record.changes:
            catalog[change.item_id] = change.tags if isinstance(change, ItemUpsert) else None


def _events(histories: dict[str, list[StoredEvent]], keep: int) -> tuple[UserEvent, ...]:
    """The retained events (the latest `keep` per user, as the backends trim), user by user."""
    return tuple(
        UserEvent(user_id, item_id, EventType(kind), time_ms)
        for user_id, stored in histories.items()
        for item_id, kind, time_ms in stored[-keep:]
    )


def _read_redis(settings: StateSettings) -> RecordedState:
    url = settings.redis_url
    try:
        histories = _redis_histories(settings)
        catalog = asyncio.run(_redis_catalog(settings))
    except (RedisError, UnavailableError, OSError) as error:
        raise StateReadError(f"cannot read the recorded state from Redis at {url} ({error})") from error
    return RecordedState(_events(histories, settings.max_history_events), catalog, f"Redis at {url}")


def _redis_histories(settings: StateSettings) -> dict[str, list[StoredEvent]]:
    """Every `<prefix>h:<user>` list (the backend's layout), read in pipelined batches."""
    prefix = f"{settings.redis_key_prefix}h:"
    timeout = max(settings.redis_timeout_seconds, 5.0)  # one reader going through every key: not a hot path
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
    )
    histories: dict[str, list[StoredEvent]] = {}
    try:
        keys = list(client.scan_iter(match=_glob_escaped(prefix) + "*", count=SCAN_BATCH))
        for start in range(0, len(keys), SCAN_BATCH):
            chunk = keys[start : start + SCAN_BATCH]
            with client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.lrange(key, 0, -1)
                entries = pipe.execute()
            for key, values in zip(chunk, entries, strict=True):
                if values:
                    histories[key[len(prefix) :]] = [decode_event(value) for value in values]
    finally:
        client.close()
    return histories


async def _redis_catalog(settings: StateSettings) -> Catalog:
    """The catalog changes as the backend loads them at start-up: the last write of each item."""
    backend = RedisBackend(
        settings.redis_url,
        settings.redis_key_prefix,
        settings.redis_timeout_seconds,
        settings.max_history_events,
        max_context=settings.max_history_events,
    )
    try:
        changes = await backend.open()
    finally:
        await backend.close()
    return {change.item_id: change.tags if isinstance(change, ItemUpsert) else None for change, _ in changes}


def _glob_escaped(text: str) -> str:
    """`text` matched literally by a Redis SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
