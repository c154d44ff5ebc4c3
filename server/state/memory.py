"""The in-process backend: user history and catalog changes in memory, durable through an append-only log.

Every change is one log record, and one function applies a record whether it was just written or is read
back at start-up: what replay rebuilds is exactly what the writes built. Forgetting a user compacts the log
before it returns, so the user's events are gone from disk too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recserve.server.exceptions import UnavailableError
from recserve.server.state.events import CatalogChange, EventType, ItemDelete, ItemUpsert, UserEvent
from recserve.server.state.history import (
    EMPTY_PROFILE,
    StoredEvent,
    UserProfile,
    derive_profile,
    stored,
    user_events,
)
from recserve.server.state.log import AppendLog

logger = logging.getLogger(__name__)
# Below this much free space the state disk counts as full (a write of a 1,000-event call is ~100 KiB), or
# below a tenth of a smaller volume: on a 1 MiB volume, a fixed 1 MiB would call it full however empty.
PROBE_FREE_BYTES = 1024 * 1024


def full_below(volume_bytes: int) -> int:
    """Free bytes under which a volume of `volume_bytes` counts as full."""
    return min(PROBE_FREE_BYTES, volume_bytes // 10)


SNAPSHOT_CHUNK = 1000  # users or items per snapshot record


@dataclass(frozen=True, slots=True)
class Events:
    """Events stored."""

    events: tuple[UserEvent, ...]


@dataclass(frozen=True, slots=True)
class Forget:
    """Every event of a user removed."""

    user_id: str


@dataclass(frozen=True, slots=True)
class CatalogChanges:
    """Items upserted or deleted."""

    changes: tuple[CatalogChange, ...]


Record = Events | Forget | CatalogChanges


def encode(record: Record) -> bytes:
    """A record as a log payload (compact JSON)."""
    if isinstance(record, Events):
        document: dict[str, Any] = {
            "events": [[e.user_id, e.item_id, int(e.type), e.time_ms] for e in record.events]
        }
    elif isinstance(record, Forget):
        document = {"forget": record.user_id}
    else:
        document = {
            "catalog": [
                [c.item_id, list(c.tags) if isinstance(c, ItemUpsert) else None] for c in record.changes
            ]
        }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def encode_stored(users: Iterable[tuple[str, tuple[StoredEvent, ...]]]) -> bytes:
    """Stored events of several users as one events record (what a snapshot holds)."""
    rows = [[user_id, item, kind, time_ms] for user_id, events in users for item, kind, time_ms in events]
    return json.dumps({"events": rows}, ensure_ascii=False, separators=(",", ":")).encode()


def decode(payload: bytes) -> Record:
    """The record a payload holds."""
    document = json.loads(payload)
    if "events" in document:
        return Events(tuple(UserEvent(u, i, EventType(t), ms) for u, i, t, ms in document["events"]))
    if "forget" in document:
        return Forget(document["forget"])
    return CatalogChanges(tuple(_change(item_id, tags) for item_id, tags in document["catalog"]))


def _change(item_id: str, tags: list[str] | None) -> CatalogChange:
    return ItemUpsert(item_id, tuple(tags)) if tags is not None else ItemDelete(item_id)


class _User:
    """One user's retained events (arrival order, appended in place) and their profile once derived.

    A write appends and bumps `version`; a reader on another thread copies the list (one step under the
    GIL) and keeps the profile it derived only if no write came in between, so a profile never lags.
    """

    __slots__ = ("events", "profile", "version")

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.profile: UserProfile | None = None
        self.version = 0

    def add(self, added: list[StoredEvent], keep: int) -> None:
        self.events += added
        if len(self.events) > keep:
            del self.events[: len(self.events) - keep]
        self.version += 1
        self.profile = None

    def current_profile(self, max_context: int) -> UserProfile:
        profile = self.profile
        if profile is None:
            version = self.version
            profile = derive_profile(self.events.copy(), max_context)
            if self.version == version:
                self.profile = profile
        return profile


class MemoryBackend:
    """History and catalog changes of this process. `open()` before use, `close()` at the end.

    Writes run on the event loop; `profiles` may run on batch threads at the same time (they read
    immutable per-user records that writes replace).
    """

    def __init__(
        self, state_dir: Path, fsync: str, max_history_events: int, max_context: int, compact_log_bytes: int
    ) -> None:
        self._log = AppendLog(state_dir, fsync)
        self._max_history_events = max_history_events
        self._max_context = max_context
        self._compact_log_bytes = compact_log_bytes
        self._users: dict[str, _User] = {}
        self._catalog: dict[str, tuple[str, ...] | None] = {}  # item id -> tags, or None when deleted
        self._compaction: asyncio.Task[None] | None = None
        self._state_dir = state_dir
        self.problem: str | None = None
        """Why the last write failed (a full disk, an I/O error); None once one succeeds again."""

    @property
    def available(self) -> bool:
        """Whether writes succeed (as far as the last one and `probe` know)."""
        return self.problem is None

    async def probe(self) -> str | None:
        """The problem now (the state directory unreadable, the disk all but full), or None.

        Checked every second whether or not writes come; a failed write's cause stays until the disk has room.
        """
        try:
            status = await asyncio.get_running_loop().run_in_executor(None, os.statvfs, self._state_dir)
        except OSError as error:
            return f"cannot read the state directory ({error.strerror})"
        free = status.f_bavail * status.f_frsize
        if free < full_below(status.f_blocks * status.f_frsize):
            self.problem = self.problem or "the state disk is full"
            return f"{self.problem} ({free // 1024} KiB free under {self._state_dir})"
        self.problem = None
        return None

    async def open(self) -> list[tuple[CatalogChange, None]]:
        """Rebuild the state from disk; returns the catalog changes since the base catalog (unversioned)."""
        replay = await asyncio.get_running_loop().run_in_executor(None, self._log.open)
        for payload in replay.records:
            self._apply(decode(payload))
        self._log.start()
        logger.info(
            "state: %d records replayed (snapshot %s, %d log segments): %d users, %d catalog changes",
            len(replay.records),
            replay.snapshot_generation,
            replay.segments,
            len(self._users),
            len(self._catalog),
        )
        return [(_change(item_id, tags), None) for item_id, tags in self._catalog.items()]

    async def close(self) -> None:
        """Finish a compaction under way, flush and close the log."""
        if self._compaction is not None:
            await asyncio.gather(self._compaction, return_exceptions=True)
        await self._log.close()

    async def record_events(self, events: Sequence[UserEvent]) -> None:
        """Store events durably (per the fsync policy); readers see them when this returns."""
        if events:
            await self._write(Events(tuple(events)))

    async def record_catalog_changes(self, changes: Sequence[CatalogChange]) -> None:
        """Store catalog changes durably."""
        if changes:
            await self._write(CatalogChanges(tuple(changes)))

    async def forget_user(self, user_id: str) -> int:
        """Delete every event of the user, in memory and on disk; returns how many there were."""
        user = self._users.get(user_id)
        if user is None:
            return 0
        await self._write(Forget(user_id))
        await self._log.compact(self._snapshot)
        return len(user.events)

    async def user_history(self, user_id: str) -> list[UserEvent]:
        """The user's stored events, oldest first."""
        user = self._users.get(user_id)
        return user_events(user_id, user.events) if user is not None else []

    def profiles(self, user_ids: Sequence[str]) -> list[UserProfile]:
        """Each user's profile (empty for users without history); safe on any thread."""
        found = []
        for user_id in user_ids:
            user = self._users.get(user_id)
            if user is None:
                found.append(EMPTY_PROFILE)
                continue
            found.append(user.current_profile(self._max_context))
        return found

    async def _write(self, record: Record) -> None:
        """The write path of this backend: log the record, apply it, wait for the fsync policy."""
        try:
            self._log.append(encode(record))
            self._apply(record)
            await self._log.flushed()
        except UnavailableError as error:
            self.problem = str(error)
            raise
        self.problem = None
        if self._compaction_due() and (self._compaction is None or self._compaction.done()):
            self._compaction = asyncio.get_running_loop().create_task(self._log.compact(self._snapshot))

    def _compaction_due(self) -> bool:
        """Whether the log has passed both compact_log_bytes and the last snapshot's size.

        A snapshot costs as much to write as the state it holds: compacting every 64 MB of a 1 GB state
        would never end, so the log may grow as large as the snapshot first (as Redis rewrites its AOF).
        """
        return self._log.size_bytes > max(self._compact_log_bytes, self._log.snapshot_bytes)

    def _apply(self, record: Record) -> None:
        """Apply one record to the state: the same for a new write and for replay."""
        if isinstance(record, Events):
            self._apply_events(record.events)
        elif isinstance(record, Forget):
            self._users.pop(record.user_id, None)
        else:
            for change in record.changes:
                self._catalog[change.item_id] = change.tags if isinstance(change, ItemUpsert) else None

    def _apply_events(self, events: Iterable[UserEvent]) -> None:
        by_user: dict[str, list[StoredEvent]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(stored(event))
        for user_id, added in by_user.items():
            user = self._users.get(user_id)
            if user is None:
                user = self._users[user_id] = _User()
            user.add(added, self._max_history_events)

    def _snapshot(self) -> Iterator[bytes]:
        """The records of the state as it is now (copied at once; encoded lazily, on any thread)."""
        users = [(user_id, tuple(user.events)) for user_id, user in self._users.items()]
        catalog = list(self._catalog.items())

        def records() -> Iterator[bytes]:
            for start in range(0, len(users), SNAPSHOT_CHUNK):
                yield encode_stored(users[start : start + SNAPSHOT_CHUNK])
            for start in range(0, len(catalog), SNAPSHOT_CHUNK):
                chunk = catalog[start : start + SNAPSHOT_CHUNK]
                yield encode(CatalogChanges(tuple(_change(item_id, tags) for item_id, tags in chunk)))

        return records()
