"""The Prometheus endpoint, scraped over real HTTP from a real server and parsed as Prometheus would."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recserve.client import RecommenderClient
from recserve.server.settings import ServerSettings
from tests.serving import ServerThread

LABELS = {"model": "recommender", "version": "1"}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_follow_requests_and_match_the_statistics(server, server_address) -> None:
    before = scrape(server.metrics_url)
    with RecommenderClient(server_address, timeout_s=30) as client:
        for n in range(5):
            client.recommend(f"user-{n + 1}")
        with pytest.raises(grpc.RpcError):
            client.recommend("user-1", k=100_000)
        statistics = client.model_statistics()
    after = scrape(server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, tuple(sorted(labels.items()))), 0.0)

    assert delta("recserve_request_success_total", **LABELS) >= 5
    assert delta("recserve_rpc_total", method="recserve.v1.Recommender/Recommend", code="OK") == 5
    assert (
        delta("recserve_rpc_total", method="recserve.v1.Recommender/Recommend", code="INVALID_ARGUMENT") == 1
    )
    # One source of truth: the same numbers as GetModelStatistics (no batch ran between the two reads).
    assert value(after, "recserve_execution_count_total", **LABELS) == statistics.execution_count
    assert value(after, "recserve_inference_count_total", **LABELS) == statistics.inference_count
    assert value(after, "recserve_batch_size_count", **LABELS) == statistics.execution_count
    assert value(after, "recserve_batch_size_sum", **LABELS) == statistics.inference_count
    assert value(after, "recserve_queue_duration_us_count", **LABELS) == statistics.inference_count
    assert (
        value(after, "recserve_request_failure_total", **LABELS, reason="backend") == statistics.failure_count
    )
    for stage in ("user_tower", "ann", "ranker"):
        assert value(after, "recserve_compute_duration_us_total", **LABELS, stage=stage) > 0
        assert delta("recserve_stage_execution_count_total", **LABELS, stage=stage) >= 1


def test_histograms_are_cumulative_and_end_at_the_count(server) -> None:
    samples = scrape(server.metrics_url)
    for name in ("recserve_request_duration_us", "recserve_queue_duration_us", "recserve_batch_size"):
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (sample, labels), v in samples.items()
            if sample == f"{name}_bucket" and dict(labels).get("model") == "recommender"
        )
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{name} buckets must be cumulative"
        assert buckets[-1] == (float("inf"), value(samples, f"{name}_count", **LABELS))


def test_gauges_and_model_state(server) -> None:
    samples = scrape(server.metrics_url)
    assert value(samples, "recserve_model_ready", **LABELS) == 1
    assert value(samples, "recserve_model_state", model="recommender", state="ready") == 1
    assert value(samples, "recserve_model_state", model="recommender", state="loading") == 0
    assert value(samples, "recserve_queue_depth", **LABELS) == 0
    assert value(samples, "recserve_batches_in_flight", **LABELS) == 0
    assert value(samples, "recserve_max_batch_size", **LABELS) == 64
    assert ("process_cpu_seconds_total", ()) in samples


def test_metrics_answer_while_the_model_loads(server_settings: ServerSettings) -> None:
    loading = ServerThread(server_settings).start(load_model=False)
    try:
        samples = scrape(loading.metrics_url)
        assert value(samples, "recserve_model_ready", model="recommender", version="") == 0
        assert value(samples, "recserve_model_state", model="recommender", state="loading") == 1
        assert not any(name == "recserve_request_success_total" for name, _ in samples)
    finally:
        loading.stop()


def test_metrics_can_be_turned_off(server_settings: ServerSettings) -> None:
    quiet = ServerThread(server_settings.model_copy(update={"metrics_enabled": False})).start(
        load_model=False
    )
    try:
        assert quiet.running.metrics is None
    finally:
        quiet.stop()


def test_dashboard_and_documented_queries_use_only_exported_metrics(server) -> None:
    """The Grafana dashboard and docs/observability.md name only metrics a real scrape has."""
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    dashboard = json.loads((docs / "grafana" / "recserve-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    documented = (docs / "observability.md").read_text()
    referenced = set(re.findall(r"recserve_[a-z_]+", " ".join(queries) + documented))
    with RecommenderClient(server.address, timeout_s=30) as client:
        client.recommend("user-1")  # so the per-method RPC series exist
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    exported = {f.name for f in families} | {sample.name for f in families for sample in f.samples}
    missing = sorted(name for name in referenced if name not in exported)
    assert not missing, f"referenced but not exported: {missing}"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
