"""The write path of live state, top to bottom: validate, store, apply, acknowledge.

Store means the backend: the log (fsync per policy) or Redis, durable before anything is acknowledged.
Apply means visible to the next request: history is read from the backend by every batch, catalog changes
are committed to the live catalog of the model version being served. A call that fails validation changes
nothing; one that the backend cannot store fails UNAVAILABLE and changes nothing either.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import Tracer

from recserve.server.catalog.live import LiveCatalog, PreparedChanges, Version
from recserve.server.exceptions import InvalidArgumentError, NotFoundError, UnavailableError
from recserve.server.state.events import CatalogChange, UserEvent
from recserve.server.state.history import UserProfile
from recserve.server.state.validation import (
    RawEvent,
    WriteLimits,
    check_id,
    checked_deletes,
    checked_events,
    checked_upserts,
)
from recserve.server.statistics import Histogram
from recserve.server.telemetry.tracing import child_span

VISIBILITY_LAG_BUCKETS_MS = (1, 5, 10, 50, 100, 500, 1_000, 5_000, 60_000, 3_600_000)


class StateBackend(Protocol):
    """Where history and catalog changes are kept (`memory` or `redis_backend`)."""

    async def record_events(self, events: Sequence[UserEvent]) -> None: ...  # noqa: D102
    async def user_history(self, user_id: str) -> list[UserEvent]: ...  # noqa: D102
    async def forget_user(self, user_id: str) -> int: ...  # noqa: D102
    async def record_catalog_changes(self, changes: Sequence[CatalogChange]) -> Version | None: ...  # noqa: D102
    def profiles(self, user_ids: Sequence[str]) -> list[UserProfile]: ...  # noqa: D102


class ServedCatalog(Protocol):
    """The live catalog of the version being served, and what to tell when it changed."""

    catalog: LiveCatalog

    def catalog_changed(self) -> None: ...  # noqa: D102


@dataclass
class WriteStatistics:
    """Writes by outcome (accepted, rejected: invalid call, failed: not stored), for metrics."""

    events: Counter[str] = field(default_factory=Counter)
    catalog: Counter[tuple[str, str]] = field(default_factory=Counter)
    """By (operation, outcome): operation upsert or delete."""
    visibility_lag_ms: Histogram = field(default_factory=lambda: Histogram(VISIBILITY_LAG_BUCKETS_MS))
    """From an event's time to its acknowledgement, when the next request can see it."""


@dataclass(frozen=True)
class RecordedEvents:
    """What RecordEvents answers."""

    accepted: int
    unknown_item_ids: list[str]


class StateWrites:
    """Every write of live state, and the reads that go with them (GetUserHistory, GetItem)."""

    def __init__(
        self,
        backend: StateBackend,
        limits: WriteLimits,
        served: Callable[[], Sequence[ServedCatalog]],
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        tracer: Tracer | None = None,
    ) -> None:
        """`served` returns every version served now, the default first (UnavailableError while loading).

        Each version has its own live catalog, embedded by its own item tower; every change goes to all.

        With `tracer`, storing and embedding are child spans of a traced write's server span.
        """
        self._backend = backend
        self._limits = limits
        self._served = served
        self._now_ms = now_ms
        self._tracer = tracer
        self.ready = False
        """Set once the backend is open; until then every call is UNAVAILABLE."""
        self.statistics = WriteStatistics()
        self.catalog_lock = asyncio.Lock()
        """Held by every catalog change from before it is embedded until it is visible, and by a version
        swap while it brings the new version's catalog up to date: no change can miss the new version."""

    def _check_ready(self) -> None:
        if not self.ready:
            raise UnavailableError(
                "live state is still loading (reading the log or reaching Redis); retry shortly"
            )

    async def record_events(self, raw: Sequence[RawEvent]) -> RecordedEvents:
        """Store events; the next batch reads them."""
        self._check_ready()
        counts = self.statistics.events
        try:
            events = checked_events(raw, self._limits, self._now_ms())
        except InvalidArgumentError:
            counts["rejected"] += len(raw)
            raise
        try:
            with self._span("store", len(events)):
                await self._backend.record_events(events)
        except UnavailableError:
            counts["failed"] += len(events)
            raise
        counts["accepted"] += len(events)
        now_ms = self._now_ms()
        for event in events:
            self.statistics.visibility_lag_ms.observe(max(0, now_ms - event.time_ms))
        return RecordedEvents(len(events), self._unknown_items(event.item_id for event in events))

    async def user_history(self, user_id: str) -> list[UserEvent]:
        """The user's stored events, oldest first."""
        self._check_ready()
        return await self._backend.user_history(check_id(user_id, "user_id"))

    async def forget_user(self, user_id: str) -> int:
        """Delete everything stored about the user (on disk too); returns the events deleted."""
        self._check_ready()
        return await self._backend.forget_user(check_id(user_id, "user_id"))

    async def upsert_items(self, items: Sequence[tuple[str, Sequence[str]]]) -> int:
        """Add items or give them new features; the next request can return them."""
        self._check_ready()
        try:
            upserts = checked_upserts(items, self._limits)
        except InvalidArgumentError:
            self.statistics.catalog["upsert", "rejected"] += len(items)
            raise
        async with self.catalog_lock:
            served = self._served()
            with self._span("embed", len(upserts)):
                prepared = await _prepare_all(served, [(upsert, None) for upsert in upserts])
            await self._publish(served, prepared, "upsert")
        return len(upserts)

    async def delete_items(self, item_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Remove items; returns how many were in the catalog and the ids that were not."""
        self._check_ready()
        try:
            deletes = checked_deletes(item_ids, self._limits)
        except InvalidArgumentError:
            self.statistics.catalog["delete", "rejected"] += len(item_ids)
            raise
        async with self.catalog_lock:
            served = self._served()
            catalog = served[0].catalog
            known = [delete for delete in deletes if catalog.row_of(delete.item_id)]
            unknown = [delete.item_id for delete in deletes if not catalog.row_of(delete.item_id)]
            prepared = [each.catalog.prepare([(delete, None) for delete in known]) for each in served]
            await self._publish(served, prepared, "delete")
        return len(known), unknown

    def item_tags(self, item_id: str) -> tuple[str, ...]:
        """The item's tags.

        Raises:
            NotFoundError: unknown or deleted.
        """
        tags = self._served()[0].catalog.tags_of(check_id(item_id, "item_id"))
        if tags is None:
            raise NotFoundError(f"unknown item id {item_id!r}: not in the catalog (never added, or deleted)")
        return tags

    async def apply_stored(self, changes: list[tuple[CatalogChange, Version | None]]) -> None:
        """Apply changes stored already: another replica's, or what start-up read back."""
        async with self.catalog_lock:
            served = self._served()
            for each, prepared in zip(served, await _prepare_all(served, changes), strict=True):
                if each.catalog.commit(prepared):
                    each.catalog_changed()

    async def _publish(
        self, served: Sequence[ServedCatalog], prepared: Sequence[PreparedChanges], operation: str
    ) -> None:
        """Store prepared changes (one set per served version), then make them visible in every version."""
        changes = prepared[0].changes
        if not changes:
            return
        count = len(changes)
        try:
            with self._span("store", count):
                version = await self._backend.record_catalog_changes([change for change, _ in changes])
        except UnavailableError:
            self.statistics.catalog[operation, "failed"] += count
            raise
        for each, ready in zip(served, prepared, strict=True):
            each.catalog.commit(ready.versioned(version))
            each.catalog_changed()
        self.statistics.catalog[operation, "accepted"] += count

    def _span(self, name: str, records: int) -> AbstractContextManager[None]:
        return child_span(self._tracer, name, {"recserve.state.records": records})

    def _unknown_items(self, item_ids: Iterable[str]) -> list[str]:
        """Ids the served catalog does not know (none while the model loads: nothing to compare with)."""
        try:
            catalog = self._served()[0].catalog
        except UnavailableError:
            return []
        return list(dict.fromkeys(item_id for item_id in item_ids if not catalog.row_of(item_id)))


async def _prepare_all(
    served: Sequence[ServedCatalog], changes: Sequence[tuple[CatalogChange, Version | None]]
) -> list[PreparedChanges]:
    """`changes` embedded for every served version, off the event loop (each by its own item tower)."""
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(None, each.catalog.prepare, changes) for each in served]
