"""Builds, runs and stops the gRPC server.

The server starts answering at once (health NOT_SERVING, API calls UNAVAILABLE) while the model loads
and warms up off the event loop; health turns SERVING only when the first batch would be fast.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from recserve.server.auth import Authorizer, RoleCheck
from recserve.server.errors import unary_handlers
from recserve.server.exceptions import StartupError
from recserve.server.frontend import bind_and_start, build_grpc_server, resolve_frontend
from recserve.server.frontend.health_port import start_health_port
from recserve.server.live_state import LiveState
from recserve.server.model_control.manager import ModelManager
from recserve.server.model_control.slot import ServiceSlot
from recserve.server.recommender import RecommenderService
from recserve.server.repository import VersionRejectedError, resolve_version_dir
from recserve.server.runtime.tf_model import start_runtime
from recserve.server.servicers.catalog import SERVICE as CATALOG_SERVICE
from recserve.server.servicers.events import SERVICE as EVENTS_SERVICE
from recserve.server.servicers.health import HealthServicer, health_handlers
from recserve.server.servicers.inference import MODEL_CONTROL_METHODS, InferenceServicer
from recserve.server.servicers.inference import SERVICE as INFERENCE_SERVICE
from recserve.server.servicers.inference import stream_handlers as inference_stream_handlers
from recserve.server.servicers.recommender import SERVICE as RECOMMENDER_SERVICE
from recserve.server.servicers.recommender import RecommenderServicer
from recserve.server.servicers.reflection import add_reflection
from recserve.server.settings import (
    ServerSettings,
    effective_model_config,
    load_model_config,
)
from recserve.server.statistics import RpcStatistics
from recserve.server.telemetry.grpc_tracing import RpcTracing
from recserve.server.telemetry.metrics import MetricsServer, build_registry, start_metrics_server
from recserve.server.telemetry.tracing import INSTRUMENTATION_NAME, build_tracer_provider
from recserve.server.telemetry.tracing import describe as describe_tracing
from recserve.server.threads import start_thread_starter
from recserve.server.version_loading import describe_batching, freeze_long_lived_objects
from recserve.server.workers import WorkerRole
from recserve.server.workers.metrics_export import MultiprocessExporter

logger = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME
# The calls that queue in the batcher: under overload the native front end refuses them before decoding.
BATCHED_METHODS = (
    f"/{RECOMMENDER_SERVICE.full_name}/Recommend",
    f"/{RECOMMENDER_SERVICE.full_name}/Score",
    f"/{INFERENCE_SERVICE.full_name}/ModelInfer",
)


@dataclass
class RunningServer:
    """A started gRPC server and the pieces that change while it runs."""

    server: grpc.aio.Server
    port: int
    settings: ServerSettings
    health: health.aio.HealthServicer
    slot: ServiceSlot = field(default_factory=ServiceSlot)
    models: ModelManager | None = None
    """Loads, swaps and unloads versions; set once the live state is open."""
    model_poll: asyncio.Task[None] | None = None
    rpc_statistics: RpcStatistics = field(default_factory=RpcStatistics)
    tracer_provider: TracerProvider | None = None
    owns_tracer_provider: bool = False
    metrics: MetricsServer | None = None
    state: LiveState | None = None
    health_port_server: grpc.aio.Server | None = None
    """The plaintext health-only server (tls.plaintext_health_port), when there is one."""
    health_port: int | None = None
    worker: WorkerRole | None = None
    """Set when this process is one worker of `recserve serve --workers N`."""
    metrics_export: MultiprocessExporter | None = None
    """A worker's metrics, written for the supervisor's `/metrics` (instead of a port of its own)."""

    @property
    def service(self) -> RecommenderService | None:
        """The default version's service, or None while nothing serves."""
        return self.slot.current

    @property
    def tracer(self) -> Tracer | None:
        """The tracer for spans, or None when tracing is off."""
        if self.tracer_provider is None:
            return None
        return self.tracer_provider.get_tracer(INSTRUMENTATION_NAME)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server as a whole and for each API service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        state_services = self.state.enabled_services if self.state is not None else []
        for name in ("", RECOMMENDER_SERVICE.full_name, INFERENCE_SERVICE.full_name, *state_services):
            await self.health.set(name, status)


async def start_server(
    settings: ServerSettings, tracer_provider: TracerProvider | None = None, worker: WorkerRole | None = None
) -> RunningServer:
    """Bind and start the gRPC server and the metrics endpoint (model not loaded yet).

    Port 0 binds a free port, returned. `tracer_provider` overrides the one `settings.tracing` describes
    (tests pass one with an in-memory exporter); the caller then owns it. A `worker` binds nothing yet:
    `open_ports` once its model serves, so the kernel never hands a connection to a worker still loading.
    """
    authorizer = Authorizer(settings.auth)  # first: a bad tokens file stops start-up before a port opens
    # Before any version loads: threads created here keep this thread's priority, not the loader's nice 10.
    start_thread_starter()
    start_runtime(
        settings.tf_intra_op_threads,
        settings.tf_inter_op_threads,
        settings.tf_graph_mode_max_variable_mb << 20,
    )
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        tracer_provider = build_tracer_provider(settings.tracing)
    server = build_grpc_server(settings.frontend, _channel_options(settings), settings.max_concurrent_rpcs)
    health_servicer = HealthServicer()
    running = RunningServer(
        server,
        0,
        settings,
        health_servicer,
        tracer_provider=tracer_provider,
        owns_tracer_provider=owns_provider and tracer_provider is not None,
        worker=worker,
    )
    running.state = LiveState.from_settings(settings, running.slot, running.tracer)
    model_dir = settings.model_repository / settings.model_name
    running.models = ModelManager(
        model_dir,
        effective_model_config(settings, load_model_config(model_dir)),
        running.slot,
        running.state.backend,
        running.state.writes,
        running.tracer,
        settings.warmup_rounds,
        settings.model_version,
    )
    running.slot.model_name = settings.model_name
    rpc_tracing = RpcTracing.from_provider(tracer_provider) if tracer_provider is not None else None
    statistics, reads = running.rpc_statistics, authorizer.reads()
    server.add_generic_rpc_handlers(
        (
            unary_handlers(
                RECOMMENDER_SERVICE, RecommenderServicer(running.slot), statistics, rpc_tracing, reads
            ),
            # The KServe v2 / Triton protocol beside our own API: same port, same batcher.
            unary_handlers(
                INFERENCE_SERVICE,
                InferenceServicer(running.slot, running.models, settings.model_control_mode),
                statistics,
                rpc_tracing,
                reads,
                _model_control_checks(settings, authorizer),
            ),
            inference_stream_handlers(),
            *running.state.handlers(statistics, rpc_tracing, authorizer),
        )
    )
    server.add_generic_rpc_handlers((health_handlers(health_servicer),))
    services = [RECOMMENDER_SERVICE, INFERENCE_SERVICE, EVENTS_SERVICE, CATALOG_SERVICE]
    add_reflection(server, [*(service.full_name for service in services), HEALTH_SERVICE])
    await running.set_serving(False)
    if worker is None:
        await open_ports(running)
    if settings.metrics_enabled:
        _start_metrics(running)
    logger.info(
        "%s",
        describe_tracing(settings.tracing) if owns_provider else "tracing: provider given by the caller",
    )
    return running


async def open_ports(running: RunningServer) -> None:
    """Bind and start the gRPC port (and the plaintext health port, when configured)."""
    settings = running.settings
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    running.port = await bind_and_start(running.server, address, settings.tls)
    if settings.tls.plaintext_health_port is not None:
        running.health_port_server, running.health_port = await start_health_port(
            running.health,
            settings.grpc_host,
            settings.tls.plaintext_health_port,
            shared=running.worker is not None,
        )
        logger.info(
            "plaintext health port (grpc.health.v1 only) on %s:%d", settings.grpc_host, running.health_port
        )
    logger.info(
        "gRPC server (%s front end) listening on %s:%d%s",
        resolve_frontend(settings.frontend),
        settings.grpc_host,
        running.port,
        "" if running.worker is not None else " (health NOT_SERVING until the model is ready)",
    )


def _start_metrics(running: RunningServer) -> None:
    """A single server serves `/metrics`; a worker writes its metrics for the supervisor's."""
    settings = running.settings
    registry_sources = (running.slot, running.rpc_statistics, settings.model_name, running.state)
    if running.worker is not None:
        registry, worker = build_registry(*registry_sources), running.worker
        running.metrics_export = MultiprocessExporter(registry, worker.metrics_dir, worker.index)
        running.metrics_export.start()
        return
    try:
        running.metrics = start_metrics_server(
            settings.metrics_host, settings.metrics_port, *registry_sources
        )
    except OSError as error:
        address = f"{settings.metrics_host}:{settings.metrics_port}"
        raise StartupError(f"cannot bind the metrics port {address}: {error.strerror or error}") from error
    logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, running.metrics.port)


def _model_control_checks(settings: ServerSettings, authorizer: Authorizer) -> dict[str, RoleCheck | None]:
    """Load and unload need an admin token where model control is on; elsewhere they are refused anyway.

    A server with tokens authenticates them first in every mode, so an anonymous caller learns nothing more.
    """
    if settings.model_control_mode == "explicit":
        check = authorizer.admin(INFERENCE_SERVICE.full_name + " model control")
    else:
        check = authorizer.admin_if_configured()
    return dict.fromkeys(MODEL_CONTROL_METHODS, check)


def _channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.so_reuseport", int(settings.workers > 1)),  # workers share the port; else: in use = error
    ]


async def load_and_serve_model(running: RunningServer) -> RecommenderService:
    """Open the live state, load and warm up the versions the policy picks, then report SERVING.

    The policy picks the newest complete version by default; with model_control_mode poll the repository
    is followed from then on. Every version's catalog gets every stored catalog change before it serves.

    Raises:
        VersionRejectedError: no version could be served; the message says why each failed.
    """
    settings, state, manager = running.settings, running.state, running.models
    assert state is not None and manager is not None
    config = manager.config
    started = time.perf_counter()
    try:
        resolve_version_dir(manager.model_dir, settings.model_version)  # none at all: say so plainly
        await state.open()
        manager.carried_changes = state.stored_changes or []
        if not await manager.reconcile():
            reasons = "; ".join(f"version {v}: {why}" for v, why in running.slot.rejected.items())
            raise VersionRejectedError(f"no version of the model could be served: {reasons}")
    except Exception:
        running.slot.state = "failed"
        raise
    service = running.slot.get()
    model, batching = service.model, config.batching
    freeze_long_lived_objects()
    _admit_in_frontend(running, service)
    manager.on_install.append(lambda default: _on_install(running, default))
    state.follow()
    await running.set_serving(True)
    state.watch(lambda problem: _report_state(running, problem))
    if settings.model_control_mode == "poll":
        running.model_poll = asyncio.get_running_loop().create_task(
            manager.poll(settings.repository_poll_seconds), name="model-poll"
        )
    logger.info(
        "model %s version %s ready in %.1fs: %d users, %d items, dim %d, index %d trees (search_k %d); "
        "batching %s; versions %s (version_policy %s, model_control_mode %s)",
        model.name,
        model.version,
        time.perf_counter() - started,
        len(model.users),
        len(model.items),
        model.embedding_dim,
        model.index.n_trees,
        model.index.search_k,
        describe_batching(batching),
        ", ".join(sorted(running.slot.served, key=int)),
        manager.policy.describe(),
        settings.model_control_mode,
    )
    return service


async def _on_install(running: RunningServer, default: RecommenderService | None) -> None:
    """After a swap: admission follows the new default version, health whether anything serves."""
    if default is not None:
        _publish_costs_from(running, default)
    if running.slot.state != "stopping":
        await running.set_serving(default is not None)


async def _report_state(running: RunningServer, problem: str | None) -> None:
    """The write services' health follows their backend: NOT_SERVING while it cannot store writes."""
    if running.slot.state != "ready" or running.state is None:
        return
    status = health_pb2.HealthCheckResponse.NOT_SERVING if problem else health_pb2.HealthCheckResponse.SERVING
    for name in running.state.enabled_services:
        await running.health.set(name, status)


def _admit_in_frontend(running: RunningServer, service: RecommenderService) -> None:
    """Let the native front end refuse overload before Python sees it (see NativeServer.set_admission)."""
    server = running.server
    if not hasattr(server, "set_admission"):
        return  # grpc.aio: the batcher refuses on its own
    batching = service.batcher.settings
    server.set_admission(
        BATCHED_METHODS, batching.max_queue_wait_microseconds * 1000, batching.deadline_admission
    )
    _publish_costs_from(running, service)
    running.rpc_statistics.add_source(
        lambda: {(method[1:], code): n for (method, code), n in server.admission_refused().items() if n}
    )


def _publish_costs_from(running: RunningServer, default: RecommenderService) -> None:
    """The front end's admission estimates from the default version's batcher (the one most calls use)."""
    if not hasattr(running.server, "publish_costs"):
        return
    for service in running.slot.served.values():
        service.batcher.on_estimate = None
    default.batcher.on_estimate = running.server.publish_costs


async def stop_server(running: RunningServer, grace_s: float, drain_s: float = 0.0) -> None:
    """Shut down without failing an accepted request.

    Health turns NOT_SERVING at once; new RPCs are still accepted for `drain_s` (time for load balancers to
    notice); then the server refuses new RPCs, in-flight ones get up to `grace_s` to finish, and the batcher
    executes everything still queued before it stops.
    """
    await running.set_serving(False)
    if running.slot.state == "ready":
        running.slot.state = "stopping"
    if drain_s > 0:
        await asyncio.sleep(drain_s)
    if running.model_poll is not None:
        running.model_poll.cancel()
        await asyncio.gather(running.model_poll, return_exceptions=True)
    await running.server.stop(grace_s)
    if running.models is not None:
        await running.models.close()
    if running.state is not None:
        await running.state.close()
    if running.metrics is not None:
        running.metrics.stop()
    if running.metrics_export is not None:
        running.metrics_export.stop()
    if running.owns_tracer_provider and running.tracer_provider is not None:
        running.tracer_provider.shutdown()  # flushes spans still buffered for the exporter
    if running.health_port_server is not None:  # last: probes see NOT_SERVING until the end
        await running.health_port_server.stop(0)


async def serve(settings: ServerSettings, worker: WorkerRole | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully (a second signal skips the drain)."""
    running = await start_server(settings, worker=worker)
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    loading = asyncio.ensure_future(
        load_and_serve_model(running) if worker is None else _load_then_join(running, worker)
    )
    first_signal = asyncio.ensure_future(signals.get())
    await asyncio.wait({loading, first_signal}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        logger.error(
            "could not start serving model %s from %s: %s",
            settings.model_name,
            settings.model_repository,
            loading.exception(),
        )
        first_signal.cancel()
        await stop_server(running, 0)
        raise loading.exception()  # type: ignore[misc]  # checked just above
    received = await first_signal
    logger.info(
        "%s: NOT_SERVING; accepting new requests for %.1fs more, then finishing in-flight ones (grace %.1fs)",
        signal.Signals(received).name,
        settings.shutdown_drain_seconds,
        settings.shutdown_grace_seconds,
    )
    drain = asyncio.ensure_future(
        stop_server(running, settings.shutdown_grace_seconds, settings.shutdown_drain_seconds)
    )
    second_signal = asyncio.ensure_future(signals.get())
    await asyncio.wait({drain, second_signal}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        logger.warning("second signal: stopping now")
        await running.server.stop(0)
        await drain
    second_signal.cancel()
    logger.info("stopped")


async def _load_then_join(running: RunningServer, worker: WorkerRole) -> RecommenderService:
    """A worker joins the shared port only once it serves, then tells the supervisor."""
    service = await load_and_serve_model(running)
    await open_ports(running)
    worker.report_ready()
    return service


def run(settings: ServerSettings, worker: WorkerRole | None = None) -> None:
    """Serve on the configured event loop until stopped (as one of several workers when `worker` is set)."""
    if settings.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if settings.event_loop == "uvloop":
                raise
        else:
            logger.debug("using uvloop")
            uvloop.run(serve(settings, worker))
            return
    asyncio.run(serve(settings, worker))
