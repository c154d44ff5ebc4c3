"""Prometheus metrics over HTTP (`/metrics`), read at scrape time from the server's own statistics.

Nothing is counted twice: the batcher's, the stages' and the RPC statistics are the one source of truth
that `GetModelStatistics`, the inference protocol and these metrics all read. Names follow Triton's
spirit with a `recserve_` prefix; durations are in microseconds, like Triton's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import start_http_server as start_prometheus_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from recserve.server.live_state import LiveState
from recserve.server.model_control.slot import MODEL_STATES, ServiceSlot
from recserve.server.recommender import RecommenderService
from recserve.server.statistics import BatchStatistics, RpcStatistics
from recserve.server.telemetry.buckets import prometheus_buckets
from recserve.server.telemetry.state_metrics import state_metrics

logger = logging.getLogger(__name__)

MODEL_LABELS = ["model", "version"]


class ServerCollector(Collector):
    """Turns the live statistics into metric families on every scrape."""

    def __init__(
        self, slot: ServiceSlot, rpc_statistics: RpcStatistics, model_name: str, state: LiveState | None
    ) -> None:
        self._slot = slot
        self._rpc = rpc_statistics
        self._model_name = model_name
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Every metric family, in a stable order."""
        service = self._slot.current
        yield from self._model_state(service)
        yield from self._rpc_metrics()
        if service is not None:
            labels = [service.model.name, service.model.version]
            stats = service.batcher.statistics.snapshot()
            yield from _request_metrics(stats, labels)
            yield from _batch_metrics(service, stats, labels)
            yield from _stage_metrics(service, labels)
        if self._state is not None:
            yield from state_metrics(self._state, service)

    def _model_state(self, service: RecommenderService | None) -> Iterator[Metric]:
        version = service.model.version if service is not None else ""
        ready = GaugeMetricFamily(
            "recserve_model_ready", "1 when the model answers requests, else 0.", labels=MODEL_LABELS
        )
        ready.add_metric([self._model_name, version], 1.0 if service is not None else 0.0)
        yield ready
        state = GaugeMetricFamily(
            "recserve_model_state",
            "The model's load state (1 for the current one).",
            labels=["model", "state"],
        )
        for name in MODEL_STATES:
            state.add_metric([self._model_name, name], 1.0 if self._slot.state == name else 0.0)
        yield state
        rejected = GaugeMetricFamily(
            "recserve_model_version_rejected",
            "1 for each version that did not load or failed its smoke batch at start-up (the log says why); "
            "an older version serves instead.",
            labels=MODEL_LABELS,
        )
        for rejected_version in sorted(self._slot.rejected, key=int):
            rejected.add_metric([self._model_name, rejected_version], 1.0)
        yield rejected

    def _rpc_metrics(self) -> Iterator[Metric]:
        calls, durations = self._rpc.snapshot()
        total = CounterMetricFamily(
            "recserve_rpc", "Finished gRPC calls by method and status code.", labels=["method", "code"]
        )
        for (method, code), count in sorted(calls.items()):
            total.add_metric([method, code], count)
        yield total
        duration = HistogramMetricFamily(
            "recserve_rpc_duration_us", "gRPC call handling time (decode to response), µs.", labels=["method"]
        )
        for method, histogram in sorted(durations.items()):
            duration.add_metric([method], prometheus_buckets(histogram), histogram.total)
        yield duration


def _request_metrics(stats: BatchStatistics, labels: list[str]) -> Iterator[Metric]:
    success = CounterMetricFamily(
        "recserve_request_success", "Requests answered by an executed batch.", labels=MODEL_LABELS
    )
    success.add_metric(labels, stats.success_count)
    yield success
    failure = CounterMetricFamily(
        "recserve_request_failure",
        "Requests that failed in the batcher: rejected (queue full), overloaded (refused at once: the "
        "queue could not serve it in time), expired (deadline passed while queued), cancelled (caller "
        "left), backend (the batch failed).",
        labels=[*MODEL_LABELS, "reason"],
    )
    for reason, count in (
        ("rejected", stats.rejected_count),
        ("overloaded", stats.overloaded_count),
        ("expired", stats.expired_count),
        ("cancelled", stats.cancelled_count),
        ("backend", stats.failure_count),
    ):
        failure.add_metric([*labels, reason], count)
    yield failure
    for name, histogram, help_text in (
        ("recserve_queue_duration_us", stats.queue_duration_us, "Time a request waited for its batch, µs."),
        (
            "recserve_request_duration_us",
            stats.request_duration_us,
            "Time from a request entering the queue to its result, µs.",
        ),
    ):
        family = HistogramMetricFamily(name, help_text, labels=MODEL_LABELS)
        family.add_metric(labels, prometheus_buckets(histogram), histogram.total)
        yield family
    last = GaugeMetricFamily(
        "recserve_last_inference_timestamp_seconds", "When the last batch finished.", labels=MODEL_LABELS
    )
    last.add_metric(labels, stats.last_inference_ns / 1e9)
    yield last


def _batch_metrics(
    service: RecommenderService, stats: BatchStatistics, labels: list[str]
) -> Iterator[Metric]:
    for name, value, help_text in (
        ("recserve_inference_count", stats.inference_count, "Requests (rows) executed in batches."),
        ("recserve_execution_count", stats.execution_count, "Batches executed (one forward pass each)."),
        (
            "recserve_batch_loop_restarts",
            service.batcher.restarts,
            "Times the batch loop ended unexpectedly and was started again (queued requests kept).",
        ),
        (
            "recserve_batch_compute_duration_us",
            stats.compute_duration_ns / 1000,
            "Time batches spent executing, µs.",
        ),
    ):
        family = CounterMetricFamily(name, help_text, labels=MODEL_LABELS)
        family.add_metric(labels, value)
        yield family
    sizes = HistogramMetricFamily("recserve_batch_size", "Requests per executed batch.", labels=MODEL_LABELS)
    sizes.add_metric(
        labels,
        _batch_size_buckets(stats, service.batcher.settings.max_batch_size),
        float(stats.inference_count),
    )
    yield sizes
    for name, value, help_text in (
        ("recserve_queue_depth", service.batcher.queue_depth, "Requests waiting for a batch."),
        ("recserve_batches_in_flight", service.batcher.batches_in_flight, "Batches executing now."),
        (
            "recserve_expected_queue_wait_seconds",
            service.batcher.expected_wait_s,
            "How long a request queued now would wait for its batch (what admission compares with deadlines "
            "and batching.max_queue_wait_microseconds): a queue-delay signal to autoscale on.",
        ),
        ("recserve_max_batch_size", service.batcher.settings.max_batch_size, "Configured max_batch_size."),
    ):
        gauge = GaugeMetricFamily(name, help_text, labels=MODEL_LABELS)
        gauge.add_metric(labels, value)
        yield gauge


def _stage_metrics(service: RecommenderService, labels: list[str]) -> Iterator[Metric]:
    stage_labels = [*MODEL_LABELS, "stage"]
    compute = CounterMetricFamily(
        "recserve_compute_duration_us",
        "Time spent in each pipeline stage (history, user_tower, ann, ranker), µs.",
        labels=stage_labels,
    )
    executions = CounterMetricFamily(
        "recserve_stage_execution_count", "Calls of each pipeline stage (one per batch).", labels=stage_labels
    )
    rows = CounterMetricFamily(
        "recserve_stage_inference_count",
        "Rows each stage processed (users, ANN queries, ranked pairs).",
        labels=stage_labels,
    )
    for stage, stats in service.pipeline.stages.items():
        compute.add_metric([*labels, stage], stats.compute_duration_ns / 1000)
        executions.add_metric([*labels, stage], stats.execution_count)
        rows.add_metric([*labels, stage], stats.inference_count)
    yield from (compute, executions, rows)


def _batch_size_buckets(stats: BatchStatistics, max_batch_size: int) -> list[tuple[str, float]]:
    """Cumulative counts at powers of two up to max_batch_size, then +Inf."""
    bounds, size = [], 1
    while size < max_batch_size:
        bounds.append(size)
        size *= 2
    bounds.append(max_batch_size)
    counts = stats.batch_size_counts
    cumulative = [(f"{bound}", float(sum(n for s, n in counts.items() if s <= bound))) for bound in bounds]
    return [*cumulative, ("+Inf", float(stats.execution_count))]


@dataclass
class MetricsServer:
    """The running `/metrics` endpoint."""

    httpd: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def build_registry(
    slot: ServiceSlot, rpc_statistics: RpcStatistics, model_name: str, state: LiveState | None = None
) -> CollectorRegistry:
    """The server's metrics plus process, platform and GC metrics, read at collection time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(slot, rpc_statistics, model_name, state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def start_metrics_server(
    host: str,
    port: int,
    slot: ServiceSlot,
    rpc_statistics: RpcStatistics,
    model_name: str,
    state: LiveState | None = None,
) -> MetricsServer:
    """Serve the server's metrics plus process, platform and GC metrics; port 0 picks a free one."""
    registry = build_registry(slot, rpc_statistics, model_name, state)
    httpd, thread = start_prometheus_http_server(port, host, registry)
    thread.name = "metrics-http"
    return MetricsServer(httpd, thread, httpd.server_port)
