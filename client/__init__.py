"""Python client for recserve: `RecommenderClient` (blocking) and `AsyncRecommenderClient` (asyncio).

Results are plain frozen dataclasses; gRPC failures surface as `grpc.RpcError`. The CLI commands live in
`recserve.client.cli`.
"""

from recserve.client.client import DEFAULT_TARGET, AsyncRecommenderClient, RecommenderClient
from recserve.client.live import EVENT_TYPES, DeletedItems, Event, Item, RecordedEvents
from recserve.client.results import (
    IndexInfo,
    ModelInfo,
    ModelStatistics,
    Recommendation,
    ScoredItem,
    ScoreResult,
    SimilarItems,
    StageStatistics,
)

__all__ = [
    "DEFAULT_TARGET",
    "EVENT_TYPES",
    "AsyncRecommenderClient",
    "DeletedItems",
    "Event",
    "IndexInfo",
    "Item",
    "ModelInfo",
    "ModelStatistics",
    "RecordedEvents",
    "Recommendation",
    "RecommenderClient",
    "ScoreResult",
    "ScoredItem",
    "SimilarItems",
    "StageStatistics",
]
