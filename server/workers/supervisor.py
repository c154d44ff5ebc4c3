"""The supervisor of `recserve serve --workers N`: starts, watches, restarts and stops the workers.

It holds the port (a bound, never listening SO_REUSEPORT socket: port 0 becomes one concrete port every
worker binds, and a port taken by another program fails here, clearly), serves the merged `/metrics`,
forwards SIGTERM and SIGINT to every worker (each drains as a single server does) and restarts a worker
that dies. A worker that cannot start before any has served stops them all: exit code 2, as a single
server's bad start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client import start_http_server as start_prometheus_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from recserve.server.exceptions import StartupError
from recserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

POLL_S = 0.1
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
"""A worker that ran this long before dying is restarted after the first backoff again."""
KILL_AFTER_S = 30.0
"""Beyond the drain and grace periods, how long a stopping worker gets before SIGKILL."""


@dataclass
class Worker:
    """One worker slot: the process now in it, and how it has fared."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_read: int | None = None
    ready: bool = False
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = FIRST_BACKOFF_S
    restarts: int = 0

    @property
    def alive(self) -> bool:
        """Whether a process is in the slot and running."""
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    """Runs `settings.workers` workers of `settings` until a signal stops them."""

    settings: ServerSettings
    metrics_dir: Path
    workers: list[Worker] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    stopping_since: float | None = None
    ever_ready: bool = False

    def run(self) -> int:
        """Start every worker, keep them running until stopped; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: self.signals.append(number))
        self.workers = [Worker(index) for index in range(self.settings.workers)]
        for worker in self.workers:
            self._start(worker)
        while True:
            self._handle_signals()
            failed = self._reap()
            if failed is not None:
                return failed
            if self.stopping_since is not None and all(worker.process is None for worker in self.workers):
                return 0  # every worker reaped (and logged); `alive` could see one exit before _reap did
            self._restart_due()
            self._note_ready()
            time.sleep(POLL_S)

    def _start(self, worker: Worker) -> None:
        read_end, write_end = os.pipe()
        spec = {
            "settings": self.settings.model_dump(mode="json"),
            "index": worker.index,
            "metrics_dir": str(self.metrics_dir),
            "ready_fd": write_end,
            "supervisor_pid": os.getpid(),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "recserve.server.workers.worker"],
            stdin=subprocess.PIPE,
            pass_fds=(write_end,),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only, which forwards it
        )
        os.close(write_end)
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
        os.set_blocking(read_end, False)
        worker.process, worker.ready_read, worker.ready = process, read_end, False
        worker.started_at, worker.restart_at = time.monotonic(), None
        logger.info("worker %d started (pid %d)", worker.index, process.pid)

    def _handle_signals(self) -> None:
        while self.signals:
            number = self.signals.pop(0)
            first = self.stopping_since is None
            if first:
                self.stopping_since = time.monotonic()
                logger.info("%s: stopping %d workers", signal.Signals(number).name, len(self.workers))
            else:
                logger.warning("second signal: workers stop now")
            for worker in self.workers:
                if worker.alive:
                    worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        if self.stopping_since is not None:
            limit = self.settings.shutdown_drain_seconds + self.settings.shutdown_grace_seconds + KILL_AFTER_S
            if time.monotonic() - self.stopping_since > limit:
                for worker in self.workers:
                    if worker.alive:
                        logger.error("worker %d did not stop in %.0fs: SIGKILL", worker.index, limit)
                        worker.process.kill()  # type: ignore[union-attr]

    def _reap(self) -> int | None:
        """Note workers that exited; the supervisor's exit code when one failed to start, else None."""
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            self._note_ready()
            worker.process = None
            self._close_ready_pipe(worker)
            mark_process_dead(process.pid, str(self.metrics_dir))
            code = process.returncode
            if self.stopping_since is not None:
                logger.info("worker %d (pid %d) stopped (exit code %d)", worker.index, process.pid, code)
                continue
            if not worker.ready and not self.ever_ready:
                logger.error("worker %d could not start (exit code %d): stopping", worker.index, code)
                self._stop_all()
                return 2
            self._schedule_restart(worker, code, process.pid)
        return None

    def _schedule_restart(self, worker: Worker, code: int, pid: int) -> None:
        if time.monotonic() - worker.started_at > STABLE_AFTER_S:
            worker.backoff_s = FIRST_BACKOFF_S
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        logger.error(
            "worker %d (pid %d) died (%s): restarting in %.0fs", worker.index, pid, how, worker.backoff_s
        )
        worker.restart_at = time.monotonic() + worker.backoff_s
        worker.backoff_s = min(worker.backoff_s * 2, MAX_BACKOFF_S)

    def _restart_due(self) -> None:
        if self.stopping_since is not None:
            return  # a worker started now would miss the SIGTERM its siblings got
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                worker.restarts += 1
                self._start(worker)

    def _note_ready(self) -> None:
        for worker in self.workers:
            if worker.ready_read is None or worker.ready:
                continue
            try:
                signalled = os.read(worker.ready_read, 1)
            except BlockingIOError:
                continue
            if signalled:
                worker.ready = self.ever_ready = True
                self._close_ready_pipe(worker)

    def _close_ready_pipe(self, worker: Worker) -> None:
        if worker.ready_read is not None:
            os.close(worker.ready_read)
            worker.ready_read = None

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.process.terminate()  # type: ignore[union-attr]
        for worker in self.workers:
            if worker.process is not None:
                worker.process.wait()
                mark_process_dead(worker.process.pid, str(self.metrics_dir))


class SupervisorCollector(Collector):
    """The supervisor's own figures beside the workers' merged ones."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        """Workers configured and ready, and restarts per worker slot."""
        workers = self._supervisor.workers
        configured = GaugeMetricFamily("recserve_workers", "Worker processes configured (--workers).")
        configured.add_metric([], len(workers))
        yield configured
        ready = GaugeMetricFamily("recserve_workers_ready", "Worker processes running and serving.")
        ready.add_metric([], sum(worker.alive and worker.ready for worker in workers))
        yield ready
        restarts = CounterMetricFamily(
            "recserve_worker_restarts", "Workers restarted after they died.", labels=["worker"]
        )
        for worker in workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield restarts


def run_workers(settings: ServerSettings) -> int:
    """Serve with `settings.workers` processes on one port; returns the exit code.

    Raises:
        StartupError: the gRPC, health or metrics port cannot be bound.
    """
    held = [_hold_port(settings.grpc_host, settings.grpc_port, "gRPC")]
    updates = {"grpc_port": held[0].getsockname()[1]}
    health_port = settings.tls.plaintext_health_port
    if health_port is not None:
        held.append(_hold_port(settings.grpc_host, health_port, "plaintext health"))
        updates["tls"] = settings.tls.model_copy(update={"plaintext_health_port": held[1].getsockname()[1]})
    metrics_dir = Path(tempfile.mkdtemp(prefix="recserve-metrics-"))
    supervisor = Supervisor(settings.model_copy(update=updates), metrics_dir)
    httpd = None
    try:
        if settings.metrics_enabled:
            httpd = _serve_metrics(settings, supervisor)
        logger.info(
            "listening on %s:%d with %d workers (SO_REUSEPORT; each joins once its model is ready)",
            settings.grpc_host,
            updates["grpc_port"],
            settings.workers,
        )
        return supervisor.run()
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _hold_port(host: str, port: int, what: str) -> socket.socket:
    """Bind (not listen) `host:port` with SO_REUSEPORT: workers can join it, other programs cannot."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot bind the {what} port {host}:{port}: {error.strerror}") from error
    return sock


def _serve_metrics(settings: ServerSettings, supervisor: Supervisor) -> WSGIServer:
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, str(supervisor.metrics_dir))
    registry.register(SupervisorCollector(supervisor))
    try:
        httpd, thread = start_prometheus_http_server(settings.metrics_port, settings.metrics_host, registry)
    except OSError as error:
        raise StartupError(
            f"cannot bind the metrics port {settings.metrics_host}:{settings.metrics_port}: {error.strerror}"
        ) from error
    thread.name = "metrics-http"
    logger.info("metrics on http://%s:%d/metrics (every worker's)", settings.metrics_host, httpd.server_port)
    return httpd
