"""Workers' metrics merge into one exposition through prometheus_client's multiprocess collector."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from recserve.server.workers.metrics_export import MultiprocessExporter


class Figures:
    """A collector whose figures a test sets."""

    def __init__(self, rpcs: float, buckets: list[tuple[str, float]], depth: float, version: str) -> None:
        self.rpcs, self.buckets, self.depth, self.version = rpcs, buckets, depth, version

    def collect(self) -> Iterator[Metric]:
        rpc = CounterMetricFamily("recserve_rpc", "calls", labels=["method", "code"])
        rpc.add_metric(["Recommend", "OK"], self.rpcs)
        yield rpc
        total = self.buckets[-1][1]
        histogram = HistogramMetricFamily("recserve_batch_size", "sizes", labels=["model"])
        histogram.add_metric(["recommender"], self.buckets, sum_value=total * 3)
        yield histogram
        depth = GaugeMetricFamily("recserve_queue_depth", "waiting", labels=["version"])
        depth.add_metric([self.version], self.depth)
        yield depth
        size = GaugeMetricFamily("recserve_max_batch_size", "configured", labels=[])
        size.add_metric([], 64)
        yield size


def exporter(directory: Path, figures: Figures, index: int) -> MultiprocessExporter:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(figures)
    return MultiprocessExporter(registry, directory, index, process_id=1000 + index)


def merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, str(directory))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_histograms_add_up_and_gauges_merge_by_mode(tmp_path: Path) -> None:
    one = Figures(5, [("1", 2.0), ("4", 4.0), ("+Inf", 5.0)], depth=3, version="1")
    two = Figures(7, [("1", 1.0), ("4", 6.0), ("+Inf", 7.0)], depth=4, version="1")
    exporter(tmp_path, one, 0).flush()
    exporter(tmp_path, two, 1).flush()
    values = merged(tmp_path)
    assert values[("recserve_rpc_total", (("code", "OK"), ("method", "Recommend")))] == 12
    model = (("model", "recommender"),)
    assert values[("recserve_batch_size_bucket", (("le", "1.0"), *model))] == 3
    assert values[("recserve_batch_size_bucket", (("le", "4.0"), *model))] == 10
    assert values[("recserve_batch_size_bucket", (("le", "+Inf"), *model))] == 12
    assert values[("recserve_batch_size_count", model)] == 12
    assert values[("recserve_batch_size_sum", model)] == 36
    assert values[("recserve_queue_depth", (("version", "1"),))] == 7, "queue depths add up"
    assert values[("recserve_max_batch_size", ())] == 64, "a configured size is not multiplied"
    assert values[("recserve_worker_rpc_total", (("worker", "0"),))] == 5
    assert values[("recserve_worker_rpc_total", (("worker", "1"),))] == 7


def test_a_flush_replaces_the_snapshot_and_a_dead_workers_counts_stay(tmp_path: Path) -> None:
    figures = Figures(5, [("+Inf", 5.0)], depth=3, version="1")
    first = exporter(tmp_path, figures, 0)
    first.flush()
    figures.rpcs, figures.version = 9, "2"  # a new version serves: the old one's gauge must go
    first.flush()
    exporter(tmp_path, Figures(1, [("+Inf", 1.0)], depth=2, version="2"), 1).flush()
    values = merged(tmp_path)
    assert values[("recserve_rpc_total", (("code", "OK"), ("method", "Recommend")))] == 10
    assert ("recserve_queue_depth", (("version", "1"),)) not in values
    assert values[("recserve_queue_depth", (("version", "2"),))] == 5
    mark_process_dead(1000, str(tmp_path))  # worker 0 died: its live gauges go, its counts stay
    values = merged(tmp_path)
    assert values[("recserve_queue_depth", (("version", "2"),))] == 2
    assert values[("recserve_rpc_total", (("code", "OK"), ("method", "Recommend")))] == 10
