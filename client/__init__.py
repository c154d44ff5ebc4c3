"""Python client for recserve: `RecommenderClient` (blocking) and `AsyncRecommenderClient` (asyncio).

Results are plain frozen dataclasses; gRPC failures surface as `grpc.RpcError`. The CLI commands live in
`client.cli`.
"""

from client.client import DEFAULT_TARGET, AsyncRecommenderClient, RecommenderClient
from client.results import IndexInfo, ModelInfo, Recommendation, ScoredItem, ScoreResult, SimilarItems

__all__ = [
    "DEFAULT_TARGET",
    "AsyncRecommenderClient",
    "IndexInfo",
    "ModelInfo",
    "Recommendation",
    "RecommenderClient",
    "ScoreResult",
    "ScoredItem",
    "SimilarItems",
]
