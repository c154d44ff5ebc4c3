"""How the CLI shows results: rich tables for people, JSON objects for scripts.

The JSON shapes are a contract for scripts: every item list is `[{"item_id": ..., "score": ...}]`, the
score written as the shortest decimal that names the same float32 (the wire type): 0.9719, not 0.97189998.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recserve.client.results import (
    IndexInfo,
    ModelInfo,
    ModelStatistics,
    Recommendation,
    ScoredItem,
    ScoreResult,
    SimilarItems,
)

JsonObject = dict[str, Any]


def write_json(value: JsonObject, stream: TextIO | None = None) -> None:
    """Write one indented JSON object and a newline (default: stdout)."""
    (stream or sys.stdout).write(json.dumps(value, indent=2) + "\n")


def recommendation_json(result: Recommendation) -> JsonObject:
    """{"model_version", "cold_start", "items", "unknown_item_ids"}; items best first."""
    return _items_json(result.model_version, result.cold_start, result.items, result.unknown_item_ids)


def score_json(item_ids: Sequence[str], result: ScoreResult) -> JsonObject:
    """The same shape as `recommendation_json`, items in request order."""
    items = scored_in_order(item_ids, result)
    return _items_json(result.model_version, result.cold_start, items, result.unknown_item_ids)


def similar_json(item_id: str, result: SimilarItems) -> JsonObject:
    """{"item_id" (the query), "model_version", "items"}; items by similarity, highest first."""
    return {
        "item_id": item_id,
        "model_version": result.model_version,
        "items": _scored_items_json(result.items),
    }


def model_info_json(info: ModelInfo) -> JsonObject:
    """Every GetModelInfoResponse field, the index as a nested object."""
    return asdict(info)


def statistics_json(stats: ModelStatistics) -> JsonObject:
    """Every GetModelStatisticsResponse field plus `mean_batch_size`."""
    return {**asdict(stats), "mean_batch_size": stats.mean_batch_size}


def health_json(service: str, status: str) -> JsonObject:
    """{"service", "status"}."""
    return {"service": service, "status": status}


def scored_in_order(item_ids: Sequence[str], result: ScoreResult) -> list[ScoredItem]:
    """Pair each requested id with its score. Raises ValueError if the counts differ."""
    return [ScoredItem(item_id, score) for item_id, score in zip(item_ids, result.scores, strict=True)]


def show_recommendation(console: Console, user_id: str, result: Recommendation) -> None:
    """Header (model version, cold start, skipped context ids), then a rank/item/score table."""
    _show_header(console, result.model_version, result.cold_start, result.unknown_item_ids)
    _show_items(console, result.items, title=f"recommendations for {user_id}", position="rank")


def show_scores(console: Console, user_id: str, item_ids: Sequence[str], result: ScoreResult) -> None:
    """Header, then the requested items with their scores, in request order."""
    _show_header(console, result.model_version, result.cold_start, result.unknown_item_ids)
    _show_items(console, scored_in_order(item_ids, result), title=f"P(like) for {user_id}", position="#")


def show_similar(console: Console, item_id: str, result: SimilarItems) -> None:
    """Header, then the similar items, highest cosine similarity first."""
    _show_header(console, result.model_version, cold_start=False, unknown_item_ids=())
    _show_items(console, result.items, title=f"items similar to {item_id}", position="rank", score="cosine")


def show_model_info(console: Console, info: ModelInfo) -> None:
    """A two-column table: what is loaded, how it retrieves, its limits and its offline evaluation."""
    index = info.index
    search_k = "library default" if index.search_k == -1 else str(index.search_k)
    rows = [
        ("model", f"{info.model_name} version {info.model_version}"),
        ("users / items", f"{info.num_users:,} / {info.num_items:,}"),
        ("embedding dim", str(info.embedding_dim)),
        ("index", f"{index.library} ({index.metric}), {index.n_trees} trees, search_k {search_k}"),
        ("retrieval", _retrieval(index)),
        ("candidates per request", str(index.candidate_count)),
        ("k", f"default {info.default_k}, max {info.max_k}"),
        ("max score items", str(info.max_score_items)),
        ("max recent items", str(info.max_recent_items)),
        *((f"eval {name}", _metric(value)) for name, value in info.evaluation.items()),
    ]
    table = Table(show_header=False, title="model info")
    table.add_column("field")
    table.add_column("value")
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    console.print(table)


def show_statistics(console: Console, stats: ModelStatistics) -> None:
    """Counters, mean batch size and mean times, then one row per pipeline stage."""
    executed = max(stats.inference_count, 1)
    batches = max(stats.execution_count, 1)
    rows = [
        ("model", f"{stats.model_name} version {stats.model_version}"),
        ("requests executed / batches", f"{stats.inference_count:,} / {stats.execution_count:,}"),
        ("mean batch size", f"{stats.mean_batch_size:.1f}"),
        ("succeeded / failed", f"{stats.success_count:,} / {stats.failure_count:,}"),
        (
            "rejected / expired / cancelled",
            f"{stats.rejected_count:,} / {stats.expired_count:,} / {stats.cancelled_count:,}",
        ),
        ("mean queue wait", f"{stats.queue_duration_us / executed:.0f} us"),
        ("mean batch compute", f"{stats.compute_duration_us / batches:.0f} us"),
        ("queued now / batches in flight", f"{stats.queue_depth} / {stats.batches_in_flight}"),
        *(
            (
                f"stage {stage.name}",
                f"{stage.execution_count:,} calls, {stage.inference_count:,} rows, "
                f"{stage.compute_duration_us / max(stage.execution_count, 1):.0f} us per call",
            )
            for stage in stats.stages
        ),
    ]
    table = Table(show_header=False, title="model statistics")
    table.add_column("field")
    table.add_column("value")
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    console.print(table)


def _items_json(
    model_version: str, cold_start: bool, items: Sequence[ScoredItem], unknown_item_ids: Sequence[str]
) -> JsonObject:
    return {
        "model_version": model_version,
        "cold_start": cold_start,
        "items": _scored_items_json(items),
        "unknown_item_ids": list(unknown_item_ids),
    }


def _scored_items_json(items: Sequence[ScoredItem]) -> list[JsonObject]:
    return [{"item_id": item.item_id, "score": _shortest_float32(item.score)} for item in items]


def _shortest_float32(value: float) -> float:
    """The shortest decimal that rounds to the same float32 as `value`."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _metric(value: float) -> str:
    """Counts (such as users evaluated) as integers, rates to 4 decimals."""
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"


def _show_header(
    console: Console, model_version: str, cold_start: bool, unknown_item_ids: Sequence[str]
) -> None:
    header = f"model version {model_version}"
    if cold_start:
        header += " | cold start: unknown user, no known context item; popular items"
    _plain(console, header)
    if unknown_item_ids:
        _plain(console, f"unknown context item ids (skipped): {', '.join(unknown_item_ids)}")


def _show_items(
    console: Console, items: Sequence[ScoredItem], *, title: str, position: str, score: str = "score"
) -> None:
    if not items:
        _plain(console, "no items")
        return
    table = Table(title=escape(title))
    table.add_column(position, justify="right")
    table.add_column("item id")
    table.add_column(score, justify="right")
    for rank, item in enumerate(items, start=1):
        table.add_row(str(rank), escape(item.item_id), f"{item.score:.4f}")
    console.print(table)


def _plain(console: Console, text: str) -> None:
    """Print ids verbatim (ids may hold brackets) on one line, whatever the terminal width."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _retrieval(index: IndexInfo) -> str:
    """How candidates are found now: through the index, or exactly while the catalog is small enough."""
    if index.exact_search:
        return f"exact (catalogs up to {index.exact_search_max_items:,} items)"
    if index.exact_search_max_items:
        return f"through the index (exact up to {index.exact_search_max_items:,} items)"
    return "through the index"
