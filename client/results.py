"""The client's result types: plain frozen dataclasses, each built from its protobuf message in one place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from recserve.v1 import recommender_pb2 as pb


@dataclass(frozen=True)
class ScoredItem:
    """An item and its score: P(like) for Recommend, cosine similarity for SimilarItems."""

    item_id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """Recommend's answer: items best first, without duplicates."""

    items: list[ScoredItem]
    model_version: str
    cold_start: bool
    unknown_item_ids: list[str]

    @classmethod
    def from_proto(cls, response: pb.RecommendResponse) -> Recommendation:
        """Convert a RecommendResponse."""
        return cls(
            _scored_items(response.items),
            response.model_version,
            response.cold_start,
            list(response.unknown_item_ids),
        )


@dataclass(frozen=True)
class ScoreResult:
    """Score's answer: P(like) per requested item, in request order."""

    scores: list[float]
    model_version: str
    cold_start: bool
    unknown_item_ids: list[str]

    @classmethod
    def from_proto(cls, response: pb.ScoreResponse) -> ScoreResult:
        """Convert a ScoreResponse."""
        return cls(
            list(response.scores),
            response.model_version,
            response.cold_start,
            list(response.unknown_item_ids),
        )


@dataclass(frozen=True)
class SimilarItems:
    """SimilarItems' answer: items by cosine similarity, highest first, never the query item."""

    items: list[ScoredItem]
    model_version: str

    @classmethod
    def from_proto(cls, response: pb.SimilarItemsResponse) -> SimilarItems:
        """Convert a SimilarItemsResponse."""
        return cls(_scored_items(response.items), response.model_version)


@dataclass(frozen=True)
class IndexInfo:
    """The approximate-nearest-neighbour index behind retrieval."""

    library: str
    metric: str
    n_trees: int
    search_k: int
    candidate_count: int
    exact_search_max_items: int = 0
    exact_search: bool = False
    """Retrieval scores every item exactly now (the catalog is within `exact_search_max_items`)."""

    @classmethod
    def from_proto(cls, message: pb.IndexInfo) -> IndexInfo:
        """Convert an IndexInfo message."""
        return cls(
            message.library,
            message.metric,
            message.n_trees,
            message.search_k,
            message.candidate_count,
            message.exact_search_max_items,
            message.exact_search,
        )


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model: version, sizes, index parameters, request limits and offline evaluation."""

    model_name: str
    model_version: str
    embedding_dim: int
    num_users: int
    num_items: int
    index: IndexInfo
    default_k: int
    max_k: int
    max_score_items: int
    max_recent_items: int
    evaluation: dict[str, float]

    @classmethod
    def from_proto(cls, response: pb.GetModelInfoResponse) -> ModelInfo:
        """Convert a GetModelInfoResponse; evaluation metrics come out sorted by name."""
        return cls(
            model_name=response.model_name,
            model_version=response.model_version,
            embedding_dim=response.embedding_dim,
            num_users=response.num_users,
            num_items=response.num_items,
            index=IndexInfo.from_proto(response.index),
            default_k=response.default_k,
            max_k=response.max_k,
            max_score_items=response.max_score_items,
            max_recent_items=response.max_recent_items,
            evaluation=dict(sorted(response.evaluation.items())),
        )


@dataclass(frozen=True)
class StageStatistics:
    """One pipeline stage's calls, rows and time."""

    name: str
    execution_count: int
    inference_count: int
    compute_duration_us: int


@dataclass(frozen=True)
class ModelStatistics:
    """Batching counters since the model was loaded (see GetModelStatisticsResponse)."""

    model_name: str
    model_version: str
    inference_count: int
    execution_count: int
    success_count: int
    failure_count: int
    rejected_count: int
    expired_count: int
    cancelled_count: int
    queue_duration_us: int
    compute_duration_us: int
    batch_size_counts: dict[int, int]
    stages: list[StageStatistics]
    queue_depth: int
    batches_in_flight: int

    @property
    def mean_batch_size(self) -> float:
        """Requests per executed batch."""
        return self.inference_count / self.execution_count if self.execution_count else 0.0

    @classmethod
    def from_proto(cls, response: pb.GetModelStatisticsResponse) -> ModelStatistics:
        """Convert a GetModelStatisticsResponse; batch sizes come out sorted."""
        scalars = {
            name: getattr(response, name)
            for name in cls.__dataclass_fields__
            if name not in ("batch_size_counts", "stages")
        }
        return cls(
            **scalars,
            batch_size_counts=dict(sorted(response.batch_size_counts.items())),
            stages=[
                StageStatistics(s.name, s.execution_count, s.inference_count, s.compute_duration_us)
                for s in response.stages
            ],
        )


def _scored_items(items: Iterable[pb.ScoredItem]) -> list[ScoredItem]:
    return [ScoredItem(item.item_id, item.score) for item in items]


@dataclass(frozen=True)
class ModelVersion:
    """One row of the repository index: a model at a version, its state and why.

    States are Triton's: READY, LOADING, UNLOADING, UNAVAILABLE.
    """

    model_name: str
    version: str
    state: str
    reason: str = ""
