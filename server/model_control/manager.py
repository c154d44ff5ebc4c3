"""Loads, swaps and unloads model versions while the server serves (Triton's model control modes).

A version is loaded and warmed up beside the serving ones, off the event loop (its loading thread at a
lower CPU priority, so serving keeps its latency), checked (`repository.load_checked`: signatures, shapes,
index dimension against the towers) and run once at every batch size. Then, holding the catalog lock so
no catalog change can slip between, it takes every change the serving catalog has since its base
(re-embedded by its own item tower) and the slot's mapping is replaced in one step. Requests already
queued on a version that leaves finish there: its batcher drains before it is closed and freed. A version
that fails any step is rejected with its reason, shown in RepositoryIndex and the log, and what serves
goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from opentelemetry.trace import Tracer

from recserve.server.catalog.live import Version
from recserve.server.model_control.slot import ServiceSlot
from recserve.server.model_control.throttle import DutyCycle, quick_gil_handoff
from recserve.server.recommender import RecommenderService
from recserve.server.repository import VersionRejectedError, complete_versions, load_checked
from recserve.server.settings import ModelConfig
from recserve.server.state.events import CatalogChange
from recserve.server.state.writes import StateBackend, StateWrites
from recserve.server.version_loading import warm_up

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOADER_NICENESS = 10  # a loading version's thread gets ~1/10 of a busy core against serving threads
LOAD_SHARE = 0.3  # of the wall time a version loading beside serving ones may work (throttle.py)
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"

Changes = list[tuple[CatalogChange, Version | None]]


@dataclass(frozen=True)
class VersionStatus:
    """A version's state as RepositoryIndex reports it (Triton's names) and why."""

    state: str
    reason: str = ""


class ModelManager:
    """The versions of one model: which should serve (the version policy), loading and unloading them."""

    def __init__(
        self,
        model_dir: Path,
        config: ModelConfig,
        slot: ServiceSlot,
        backend: StateBackend,
        writes: StateWrites,
        tracer: Tracer | None,
        warmup_rounds: int,
        pinned_version: str | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.config = config
        self.slot = slot
        self.policy = (
            config.version_policy.pinned(pinned_version) if pinned_version else config.version_policy
        )
        self._backend = backend
        self._writes = writes
        self._tracer = tracer
        self._warmup_rounds = max(warmup_rounds, 1)
        self._loading: set[str] = set()
        self._unloading: set[str] = set()
        self._rejected_at: dict[str, float] = {}
        """The manifest's mtime of each rejected version (its reason is in `slot.rejected`): a version
        rebuilt since is tried again."""
        self._lock = asyncio.Lock()  # one reconcile, load or unload at a time
        self._loader = ThreadPoolExecutor(1, "model-load", initializer=_lower_priority)
        self._closing: set[asyncio.Task[None]] = set()
        self.carried_changes: Changes = []
        """Catalog changes for the next version when none serves to copy them from (start-up's stored
        changes, or the catalog of the last version unloaded)."""
        self.on_install: list[Callable[[RecommenderService | None], Awaitable[None]]] = []
        """Called after every change of what serves, with the new default (None: nothing serves)."""

    # --- what should serve ---
    def wanted(self) -> list[str]:
        """The versions the policy picks among the complete, not rejected ones on disk now."""
        return self._chosen(complete_versions(self.model_dir)[0])

    def statuses(self) -> dict[str, VersionStatus]:
        """Every version known on disk or in memory, with its state and reason."""
        complete, incomplete = complete_versions(self.model_dir)
        served, wanted = self.slot.served, set(self._chosen(complete))
        known = {*complete, *incomplete, *served, *self.slot.rejected}
        return {v: self._status(v, served, wanted, incomplete) for v in sorted(known, key=int)}

    def _chosen(self, complete: list[str]) -> list[str]:
        """What the policy picks among `complete`, leaving out rejected versions not rebuilt since."""
        self._forget_rebuilt_rejections()
        return self.policy.select([version for version in complete if version not in self.slot.rejected])

    def _status(
        self,
        version: str,
        served: Mapping[str, RecommenderService],
        wanted: set[str],
        incomplete: dict[str, str],
    ) -> VersionStatus:
        if version in self._unloading:
            return VersionStatus(UNLOADING, "draining its queued requests")
        if version in self._loading:
            return VersionStatus(LOADING)
        if version in served:
            return VersionStatus(READY)
        if version in self.slot.rejected:
            return VersionStatus(UNAVAILABLE, f"rejected: {self.slot.rejected[version]}")
        if version in incomplete:
            return VersionStatus(UNAVAILABLE, incomplete[version])
        if self.slot.state == "unloaded":
            return VersionStatus(UNAVAILABLE, "unloaded")
        if version in wanted:
            if self.slot.state == "loading":  # start-up: its turn comes
                return VersionStatus(LOADING, "waiting to load")
            return VersionStatus(UNAVAILABLE, "not loaded yet")
        return VersionStatus(UNAVAILABLE, f"not served under version_policy {self.policy.describe()}")

    # --- changing what serves ---
    async def reconcile(self) -> bool:
        """Load what the policy wants and is not served, then unload what it no longer wants.

        Returns whether anything serves afterwards. New versions load one at a time, newest first; one that
        fails is rejected and, under `latest`, the next older complete version takes its place.
        """
        async with self._lock:
            self.slot.state = "ready" if self.slot.served else "loading"
            while True:
                wanted = self.wanted()
                missing = [version for version in reversed(wanted) if version not in self.slot.served]
                if not missing:
                    break
                await self._load(missing[0])
            await self._unload([version for version in self.slot.served if version not in wanted])
            if not self.slot.served:
                self.slot.state = "failed"
            return bool(self.slot.served)

    async def unload_all(self) -> None:
        """Serve nothing (RepositoryModelUnload); the versions drain, then are freed."""
        async with self._lock:
            await self._unload(list(self.slot.served))
            self.slot.state = "unloaded"

    async def close(self) -> None:
        """Drain and close every version (shutdown); waits for a load in progress to end first."""
        async with self._lock:
            services = list(self.slot.served.values())
            self.slot.install({})
            self.slot.state = "stopping"
        await asyncio.gather(*(service.close() for service in services), *self._closing)
        self._loader.shutdown(wait=True)

    async def _load(self, version: str) -> None:
        started = time.perf_counter()
        self._loading.add(version)
        logger.info("model %s version %s loading", self.model_dir.name, version)
        service: RecommenderService | None = None
        try:
            service = await self._prepare(version)
            async with self._writes.catalog_lock:  # no catalog change between catching up and serving
                await self._catch_up(service)
                current = self.slot.current
                if current is not None:  # admission's estimate: see QueueWaitEstimator.start_from
                    service.batcher.admission.estimator.start_from(current.batcher.admission.estimator)
                service.start()
                self.slot.install({**self.slot.served, version: service})
        except asyncio.CancelledError:  # shutdown while it loaded: it never served
            if service is not None:
                await service.close()
            raise
        except Exception as error:  # noqa: BLE001 - a version's damage shows in many ways
            reason = (
                str(error) if isinstance(error, VersionRejectedError) else f"{type(error).__name__}: {error}"
            )
            self._reject(version, reason)
            if service is not None:
                await service.close()
            return
        finally:
            self._loading.discard(version)
        self._rejected_at.pop(version, None)
        self.slot.rejected.pop(version, None)
        logger.info("model %s version %s serving (loaded in %.1fs)", self.model_dir.name, version,
                    time.perf_counter() - started)  # fmt: skip
        await self._notify()

    async def _prepare(self, version: str) -> RecommenderService:
        """Load, check and warm up `version` beside what serves (off the event loop, at low priority)."""
        loop = asyncio.get_running_loop()
        version_dir = self.model_dir / version
        beside = bool(self.slot.served)  # alone, nothing to yield to: full speed
        duty = DutyCycle(LOAD_SHARE) if beside else None
        between = duty.pause if duty is not None else _no_pause
        search_k = self.config.retrieval.search_k
        with quick_gil_handoff() if beside else contextlib.nullcontext():  # see throttle.py
            model = await loop.run_in_executor(
                self._loader, _paced(duty, load_checked), version_dir, search_k, between
            )
        service = RecommenderService(model, self.config, self.config.batching, self._backend, self._tracer)
        try:
            # Beside serving, one round pays every first-call cost; more only steady the start-up timing.
            rounds = 1 if beside else self._warmup_rounds
            size = self.config.batching.max_batch_size
            await loop.run_in_executor(
                self._loader, _paced(duty, warm_up), service.pipeline, size, rounds, between
            )
        except BaseException:
            await service.close()
            raise
        return service

    async def _catch_up(self, service: RecommenderService) -> None:
        """Apply every catalog change since the base to the new version (caller holds the catalog lock)."""
        current = self.slot.current
        changes = current.catalog.changes() if current is not None else self.carried_changes
        if not changes:
            return
        catalog = service.catalog
        prepared = await asyncio.get_running_loop().run_in_executor(self._loader, catalog.prepare, changes)
        applied = catalog.commit(prepared)
        service.catalog_changed()
        logger.info("model %s version %s: %d catalog changes applied; %d items live",
                    self.model_dir.name, service.model.version, applied, len(catalog))  # fmt: skip

    async def _unload(self, versions: list[str]) -> None:
        """Stop serving `versions`; each drains its queue in the background, then is closed."""
        if not versions:
            return
        leaving = {version: self.slot.served[version] for version in versions}
        remaining = {v: s for v, s in self.slot.served.items() if v not in leaving}
        if not remaining:
            self.carried_changes = next(iter(leaving.values())).catalog.changes()
        self.slot.install(remaining)
        self._unloading.update(leaving)
        for version, service in leaving.items():
            task = asyncio.get_running_loop().create_task(self._drain(version, service))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await self._notify()

    async def _drain(self, version: str, service: RecommenderService) -> None:
        try:
            await service.close()
        finally:
            self._unloading.discard(version)
        logger.info("model %s version %s unloaded", self.model_dir.name, version)

    async def _notify(self) -> None:
        for callback in self.on_install:
            await callback(self.slot.current)

    def _reject(self, version: str, reason: str) -> None:
        self._rejected_at[version] = _manifest_stamp(self.model_dir / version)
        self.slot.rejected[version] = reason
        logger.error("model version %s rejected: %s", self.model_dir / version, reason)

    def _forget_rebuilt_rejections(self) -> None:
        for version, stamp in list(self._rejected_at.items()):
            if _manifest_stamp(self.model_dir / version) != stamp:
                del self._rejected_at[version]
                self.slot.rejected.pop(version, None)

    # --- poll mode ---
    async def poll(self, interval_s: float) -> None:
        """Reconcile every `interval_s` seconds, until cancelled (model_control_mode poll)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if set(self.wanted()) != set(self.slot.served):
                    await self.reconcile()
            except Exception:  # noqa: BLE001 - a bad look at the repository must not end polling
                logger.exception("model repository poll failed; trying again in %.0fs", interval_s)


def _manifest_stamp(version_dir: Path) -> float:
    try:
        return (version_dir / "manifest.json").stat().st_mtime
    except OSError:
        return 0.0


def _lower_priority() -> None:
    """Run the loading thread (and the threads it starts) below the serving threads."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
    except OSError:
        logger.debug("cannot lower the model loader's priority")


def _paced(duty: DutyCycle | None, function: Callable[..., T]) -> Callable[..., T]:
    """`function`, cut into slices by `duty` (throttle.DutyCycle.sliced); as it is without one."""
    if duty is None:
        return function
    return functools.partial(duty.sliced, function)


def _no_pause() -> None:
    """Loading with nothing serving: no request to yield to."""
