"""`recserve.v1.Recommender`: converts protobuf messages to service calls and back."""

from __future__ import annotations

import grpc

from recserve.server.model_control.slot import ServiceSlot
from recserve.server.recommender import Recommendation
from recserve.v1 import recommender_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]


def _scored_items(recommendation: Recommendation) -> list[dict[str, object]]:
    # Dicts, not ScoredItem objects: the message is built in C from them, ~4x faster on the event loop
    # (measured 6 vs 23 us for a 10-item response, serialisation included).
    return [{"item_id": item_id, "score": score} for item_id, score in recommendation.items]


class RecommenderServicer:
    """Implements the Recommender service over the live RecommenderService."""

    def __init__(self, slot: ServiceSlot) -> None:
        self._slot = slot

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:  # noqa: N802
        """Top-k items for a user."""
        result = await self._slot.get(request.model_version).recommend(
            request.user_id,
            request.recent_item_ids,
            request.k,
            request.exclude_item_ids,
            request.include_recent_items,
            context.time_remaining(),
            request.priority,
            request.ignore_history,
        )
        return pb.RecommendResponse(
            items=_scored_items(result),
            model_version=result.model_version,
            cold_start=result.cold_start,
            unknown_item_ids=result.unknown_item_ids,
        )

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:  # noqa: N802
        """P(like) per item."""
        result = await self._slot.get(request.model_version).score(
            request.user_id,
            request.recent_item_ids,
            request.item_ids,
            context.time_remaining(),
            request.priority,
            request.ignore_history,
        )
        return pb.ScoreResponse(
            scores=result.scores.tolist(),
            model_version=result.model_version,
            cold_start=result.cold_start,
            unknown_item_ids=result.unknown_item_ids,
        )

    async def SimilarItems(  # noqa: N802
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        """Nearest items by cosine similarity."""
        result = await self._slot.get().similar_items(request.item_id, request.k)
        return pb.SimilarItemsResponse(items=_scored_items(result), model_version=result.model_version)

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        """What is loaded."""
        service = self._slot.get()
        model, config = service.model, service.config
        return pb.GetModelInfoResponse(
            model_name=model.name,
            model_version=model.version,
            embedding_dim=model.embedding_dim,
            num_users=len(model.users),
            num_items=len(model.items),
            index=pb.IndexInfo(
                library="annoy",
                metric=model.index.metric,
                n_trees=model.index.n_trees,
                search_k=model.index.search_k,
                candidate_count=config.retrieval.candidate_count,
                exact_search_max_items=config.retrieval.exact_search_max_items,
                exact_search=service.catalog.view().exact,
            ),
            default_k=config.limits.default_k,
            max_k=config.limits.max_k,
            max_score_items=config.limits.max_score_items,
            max_recent_items=config.limits.max_recent_items,
            evaluation=model.evaluation,
        )

    async def GetModelStatistics(  # noqa: N802
        self, request: pb.GetModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelStatisticsResponse:
        """Batching and stage counters."""
        service = self._slot.get()
        stats = service.batcher.statistics
        return pb.GetModelStatisticsResponse(
            model_name=service.model.name,
            model_version=service.model.version,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
            success_count=stats.success_count,
            failure_count=stats.failure_count,
            rejected_count=stats.rejected_count,
            expired_count=stats.expired_count,
            cancelled_count=stats.cancelled_count,
            queue_duration_us=stats.queue_duration_ns // 1000,
            compute_duration_us=stats.compute_duration_ns // 1000,
            batch_size_counts=dict(stats.batch_size_counts),
            stages=[
                pb.StageStatistics(
                    name=name,
                    execution_count=stage.execution_count,
                    inference_count=stage.inference_count,
                    compute_duration_us=stage.compute_duration_ns // 1000,
                )
                for name, stage in service.pipeline.stages.items()
            ],
            queue_depth=service.batcher.queue_depth,
            batches_in_flight=service.batcher.batches_in_flight,
        )
