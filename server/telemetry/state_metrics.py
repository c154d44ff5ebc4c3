"""Prometheus metrics of live state: writes by outcome, freshness, the live catalog, its index, Redis.

Read at scrape time from the write path's statistics, the backend's counters and the catalog being served,
like every other recserve metric (see docs/observability.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from recserve.server.live_state import LiveState
from recserve.server.recommender import RecommenderService
from recserve.server.state.redis_backend import RedisBackend
from recserve.server.telemetry.buckets import prometheus_buckets

MODEL_LABELS = ["model", "version"]


def state_metrics(state: LiveState, service: RecommenderService | None) -> Iterator[Metric]:
    """Every live-state metric family; catalog ones only once a version is served."""
    yield from _write_metrics(state)
    yield from _backend_metrics(state)
    if service is not None:
        yield from _catalog_metrics(service, [service.model.name, service.model.version])


def _write_metrics(state: LiveState) -> Iterator[Metric]:
    statistics = state.writes.statistics
    events = CounterMetricFamily(
        "recserve_events",
        "Events by outcome: accepted (stored), rejected (invalid call), failed (could not be stored).",
        labels=["outcome"],
    )
    for outcome in ("accepted", "rejected", "failed"):
        events.add_metric([outcome], statistics.events[outcome])
    yield events
    catalog = CounterMetricFamily(
        "recserve_catalog_changes",
        "Items upserted or deleted, by operation and outcome (accepted, rejected, failed).",
        labels=["operation", "outcome"],
    )
    for operation in ("upsert", "delete"):
        for outcome in ("accepted", "rejected", "failed"):
            catalog.add_metric([operation, outcome], statistics.catalog[operation, outcome])
    yield catalog
    lag = HistogramMetricFamily(
        "recserve_event_visibility_lag_ms",
        "From an event's time to its acknowledgement (from then on the next request sees it), ms.",
    )
    lag.add_metric([], prometheus_buckets(statistics.visibility_lag_ms), statistics.visibility_lag_ms.total)
    yield lag


def _backend_metrics(state: LiveState) -> Iterator[Metric]:
    backend = state.backend
    up = GaugeMetricFamily(
        "recserve_state_backend_up",
        "1 when the state backend stores writes (Redis answers; the memory backend's disk takes them).",
        labels=["backend"],
    )
    is_redis = isinstance(backend, RedisBackend)
    up.add_metric([state.settings.state.backend], float(backend.available))
    yield up
    errors = CounterMetricFamily("recserve_redis_errors", "Redis commands that failed (redis backend).")
    errors.add_metric([], backend.errors if is_redis else 0)
    yield errors
    fallbacks = CounterMetricFamily(
        "recserve_history_read_fallbacks",
        "Batches served without stored history because Redis did not answer (request context only).",
    )
    fallbacks.add_metric([], backend.read_fallbacks if is_redis else 0)
    yield fallbacks


def _catalog_metrics(service: RecommenderService, labels: list[str]) -> Iterator[Metric]:
    catalog, rebuilds = service.catalog, service.rebuilder.statistics
    for name, value, help_text in (
        ("recserve_catalog_items", len(catalog), "Live items: the base catalog plus upserts, less deletes."),
        ("recserve_catalog_delta_items", catalog.delta_size, "Rows searched exactly beside the index."),
        (
            "recserve_catalog_index_dead_items",
            catalog.dead_in_index,
            "Index entries of deleted or changed items.",
        ),
        (
            "recserve_catalog_index_generation",
            catalog.index_generation,
            "Index rebuilds since the version loaded.",
        ),
        (
            "recserve_index_rebuild_last_duration_seconds",
            rebuilds.last_duration_s,
            "The last rebuild's duration.",
        ),
    ):
        gauge = GaugeMetricFamily(name, help_text, labels=MODEL_LABELS)
        gauge.add_metric(labels, value)
        yield gauge
    outcome = CounterMetricFamily(
        "recserve_index_rebuilds", "Background index rebuilds by outcome.", labels=[*MODEL_LABELS, "outcome"]
    )
    outcome.add_metric([*labels, "completed"], rebuilds.completed)
    outcome.add_metric([*labels, "failed"], rebuilds.failed)
    yield outcome
    duration = CounterMetricFamily(
        "recserve_index_rebuild_duration_seconds", "Time spent in completed rebuilds.", labels=MODEL_LABELS
    )
    duration.add_metric(labels, rebuilds.total_duration_s)
    yield duration
