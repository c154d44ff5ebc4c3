"""Live state in a running server: its backend, the write services (or their refusal), catalog catch-up.

Start-up opens the backend (replaying the log, or reading Redis; retried until Redis answers, health saying
NOT_SERVING meanwhile) while the model loads, then applies every stored catalog change to the new version's
live catalog before it takes traffic, and with Redis follows the other replicas' changes from there on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry.trace import Tracer

from recserve.server.auth import Authorizer
from recserve.server.catalog.live import Version
from recserve.server.errors import disabled_handlers, unary_handlers
from recserve.server.exceptions import StartupError, UnavailableError
from recserve.server.model_control.slot import ServiceSlot
from recserve.server.servicers.catalog import SERVICE as CATALOG_SERVICE
from recserve.server.servicers.catalog import CatalogServicer
from recserve.server.servicers.events import SERVICE as EVENTS_SERVICE
from recserve.server.servicers.events import EventsServicer
from recserve.server.settings import ServerSettings
from recserve.server.state import backend_from_settings, write_limits
from recserve.server.state.events import CatalogChange
from recserve.server.state.log import CorruptLogError, StateDirInUseError
from recserve.server.state.memory import MemoryBackend
from recserve.server.state.redis_backend import RedisBackend
from recserve.server.state.writes import StateWrites
from recserve.server.statistics import RpcStatistics
from recserve.server.tasks import stop_task
from recserve.server.telemetry.grpc_tracing import RpcTracing

logger = logging.getLogger(__name__)

OPEN_RETRY_S = 1.0
WATCH_INTERVAL_S = 1.0
SERVICE_NAMES = (EVENTS_SERVICE.full_name, CATALOG_SERVICE.full_name)


@dataclass
class LiveState:
    """The backend and write path of one server process."""

    settings: ServerSettings
    backend: MemoryBackend | RedisBackend
    writes: StateWrites
    stored_changes: list[tuple[CatalogChange, Version | None]] | None = None
    watcher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings, slot: ServiceSlot, tracer: Tracer | None) -> LiveState:
        """Not opened yet: writes answer UNAVAILABLE until `open` has run."""
        backend = backend_from_settings(settings.state)
        writes = StateWrites(backend, write_limits(settings.state), slot.serving, tracer=tracer)
        return cls(settings, backend, writes)

    @property
    def enabled_services(self) -> list[str]:
        """Full names of the write services this server serves (health reports them)."""
        enabled = (self.settings.events_enabled, self.settings.catalog_enabled)
        return [name for name, on in zip(SERVICE_NAMES, enabled, strict=True) if on]

    def handlers(
        self, statistics: RpcStatistics, tracing: RpcTracing | None, authorizer: Authorizer
    ) -> Sequence[grpc.GenericRpcHandler]:
        """The Events and Catalog services, or handlers refusing them (PERMISSION_DENIED) where disabled.

        Raises:
            StartupError: a write service is enabled without tokens (see `Authorizer.writes`).
        """
        events = (
            unary_handlers(
                EVENTS_SERVICE,
                EventsServicer(self.writes),
                statistics,
                tracing,
                authorizer.writes(EVENTS_SERVICE.full_name),
            )
            if self.settings.events_enabled
            else disabled_handlers(EVENTS_SERVICE, "events_enabled", "--enable-events")
        )
        catalog = (
            unary_handlers(
                CATALOG_SERVICE,
                CatalogServicer(self.writes),
                statistics,
                tracing,
                authorizer.writes(CATALOG_SERVICE.full_name),
            )
            if self.settings.catalog_enabled
            else disabled_handlers(CATALOG_SERVICE, "catalog_enabled", "--enable-catalog")
        )
        return events, catalog

    async def open(self) -> None:
        """Open the backend, retrying while it is unreachable; writes are accepted from then on."""
        while True:
            try:
                changes = await self.backend.open()
                break
            except UnavailableError as error:
                logger.warning("state: %s; retrying in %.0fs", error, OPEN_RETRY_S)
                await asyncio.sleep(OPEN_RETRY_S)
            except CorruptLogError as error:
                raise StartupError(
                    f"{error}: restore it from a backup, or move it away to start empty"
                ) from error
            except StateDirInUseError as error:
                raise StartupError(
                    f"{error}: give each server its own state.state_dir (--state-dir), or share state "
                    "through the redis backend (state.backend: redis)"
                ) from error
            except OSError as error:
                directory = self.settings.state.state_dir.resolve()
                raise StartupError(
                    f"cannot open the state directory {directory} ({error.strerror or error}): set "
                    "state.state_dir (--state-dir, RECSERVE_STATE__STATE_DIR) to a writable directory"
                ) from error
        self.stored_changes = list(changes)
        self.writes.ready = True
        logger.info(
            "state: %s backend open, %d catalog changes since the base catalog",
            self.settings.state.backend,
            len(self.stored_changes),
        )

    def follow(self) -> None:
        """Apply other replicas' catalog changes as they are published (Redis; none in memory)."""
        if isinstance(self.backend, RedisBackend):
            self.backend.follow_catalog(self.writes.apply_stored)

    def watch(self, report: Callable[[str | None], Awaitable[None]]) -> None:
        """Check the backend every second and `report(problem)` at each change.

        The problem is the cause (Redis does not answer a PING, the state disk is full), or None once the
        backend is usable again: found by itself either way, without waiting for a write to fail or succeed.
        """
        self.watcher = asyncio.get_running_loop().create_task(self._watch(report), name="state-watch")

    async def _watch(self, report: Callable[[str | None], Awaitable[None]]) -> None:
        reported: str | None = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            problem = await self.backend.probe()
            if (problem is None) == (reported is None):
                continue
            if problem is None:
                logger.info("state: the %s backend works again", self.settings.state.backend)
            else:
                logger.warning("state: %s; writes answer UNAVAILABLE until it recovers", problem)
            reported = problem
            await report(problem)

    async def close(self) -> None:
        """Stop watching, flush and close the backend."""
        if self.watcher is not None:
            await stop_task(self.watcher, "state: the backend watcher")
        await self.backend.close()
