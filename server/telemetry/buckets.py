"""A recserve histogram as Prometheus wants its buckets: cumulative counts under string upper bounds."""

from __future__ import annotations

from recserve.server.statistics import Histogram


def prometheus_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """("upper bound", observations at or below it) per bucket, ending with ("+Inf", count)."""
    return [
        ("+Inf" if bound == float("inf") else f"{bound:g}", count) for bound, count in histogram.cumulative()
    ]
