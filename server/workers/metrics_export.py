"""Each worker's metrics, merged into one `/metrics` with prometheus_client's multiprocess mode.

recserve's metrics are read from live statistics at scrape time (`telemetry.metrics`), not kept in
prometheus_client metric objects, so a worker cannot let prometheus_client write its mmap files as it counts.
Instead a worker snapshots its registry every `interval_s` into files of the same format
(`<type>_<pid>.db`, one per type and gauge mode), each replaced atomically so a snapshot never mixes old
and new values. The supervisor's `MultiProcessCollector` merges them: counters and histograms add up across
workers (a dead worker's counts stay, so totals never go back), gauges merge by the mode below.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)

# How a gauge of several workers merges ("live": a dead worker's value is dropped). Unlisted: livemax
# (versions, states, configured sizes and timestamps: the same in every worker, or the newest).
GAUGE_MODES = {
    "recserve_queue_depth": "livesum",
    "recserve_batches_in_flight": "livesum",
    "process_resident_memory_bytes": "livesum",
    "process_virtual_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "recserve_state_backend_up": "livemin",
    "process_start_time_seconds": "livemin",
}
DEFAULT_GAUGE_MODE = "livemax"
WORKER_RPCS = "recserve_worker_rpc"
# Samples the collector derives itself (a histogram's count is its +Inf bucket) or does not merge.
SKIPPED_SUFFIXES = {"histogram": ("_created", "_count", "_gcount", "_gsum")}


class MultiprocessExporter:
    """Writes a registry's samples into `directory` as this process's multiprocess files, every interval."""

    def __init__(
        self,
        registry: CollectorRegistry,
        directory: Path,
        worker_index: int,
        interval_s: float = 0.5,
        process_id: int | None = None,
    ) -> None:
        self._registry = registry
        self._directory = directory
        self._worker = str(worker_index)
        self._interval_s = interval_s
        self._pid = os.getpid() if process_id is None else process_id
        self._written: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-export", daemon=True)

    def start(self) -> None:
        """Write now, then every interval on a thread of its own."""
        self.flush()
        self._thread.start()

    def stop(self) -> None:
        """Write one last time (the calls finished during shutdown count) and stop."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.flush()

    def flush(self) -> None:
        """Replace this process's files with a snapshot of the registry."""
        files: dict[str, list[tuple[str, float]]] = defaultdict(list)
        families = list(self._registry.collect())
        for family in [*families, self._worker_family(families)]:
            prefix = _file_prefix(family)
            if prefix is not None:
                files[prefix].extend(_entries(family))
        for prefix, entries in files.items():
            self._replace(prefix, entries)
        for stale in self._written - files.keys():
            (self._directory / f"{stale}_{self._pid}.db").unlink(missing_ok=True)
        self._written = set(files)

    def _worker_family(self, families: list[Metric]) -> Metric:
        """Calls this worker finished, labelled by worker: shows how evenly the kernel spreads connections."""
        total = sum(
            sample.value
            for family in families
            if family.name == "recserve_rpc"
            for sample in family.samples
            if sample.name == "recserve_rpc_total"
        )
        family = CounterMetricFamily(
            WORKER_RPCS, "Finished gRPC calls by worker (recserve serve --workers).", labels=["worker"]
        )
        family.add_metric([self._worker], total)
        return family

    def _replace(self, prefix: str, entries: Iterable[tuple[str, float]]) -> None:
        final = self._directory / f"{prefix}_{self._pid}.db"
        partial = final.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        values = MmapedDict(str(partial))
        try:
            for key, value in entries:
                values.write_value(key, value, 0.0)
        finally:
            values.close()
        os.replace(partial, final)

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # a full disk must not end the export for good
                logger.exception("could not write this worker's metrics")


def _file_prefix(family: Metric) -> str | None:
    if family.type == "gauge":
        return f"gauge_{GAUGE_MODES.get(family.name, DEFAULT_GAUGE_MODE)}"
    if family.type in ("counter", "histogram"):
        return family.type
    return None  # no other type is exported by the server


def _entries(family: Metric) -> Iterator[tuple[str, float]]:
    """(mmap key, value) per sample; histogram buckets per bucket, as the collector accumulates them."""
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        if sample.name.endswith(SKIPPED_SUFFIXES.get(family.type, ("_created",))):
            continue
        value = sample.value
        if family.type == "histogram" and sample.name.endswith("_bucket"):
            series = tuple((k, v) for k, v in sorted(sample.labels.items()) if k != "le")
            value, previous[series] = value - previous.get(series, 0.0), value
        yield _key(family, sample), value


def _key(family: Metric, sample: Sample) -> str:
    labels = sample.labels
    return mmap_key(family.name, sample.name, list(labels), list(labels.values()), family.documentation)
