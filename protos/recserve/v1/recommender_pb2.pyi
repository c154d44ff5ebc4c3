from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "recent_item_ids", "k", "exclude_item_ids", "include_recent_items", "priority", "ignore_history", "model_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_recent_items: bool
    priority: int
    ignore_history: bool
    model_version: str
    def __init__(self, user_id: _Optional[str] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., include_recent_items: _Optional[bool] = ..., priority: _Optional[int] = ..., ignore_history: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "cold_start", "unknown_item_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    cold_start: bool
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("user_id", "recent_item_ids", "item_ids", "priority", "ignore_history", "model_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    ignore_history: bool
    model_version: str
    def __init__(self, user_id: _Optional[str] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., item_ids: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ..., ignore_history: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model_version", "cold_start", "unknown_item_ids")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    cold_start: bool
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("library", "metric", "n_trees", "search_k", "candidate_count", "exact_search_max_items", "exact_search")
    LIBRARY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    N_TREES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXACT_SEARCH_MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXACT_SEARCH_FIELD_NUMBER: _ClassVar[int]
    library: str
    metric: str
    n_trees: int
    search_k: int
    candidate_count: int
    exact_search_max_items: int
    exact_search: bool
    def __init__(self, library: _Optional[str] = ..., metric: _Optional[str] = ..., n_trees: _Optional[int] = ..., search_k: _Optional[int] = ..., candidate_count: _Optional[int] = ..., exact_search_max_items: _Optional[int] = ..., exact_search: _Optional[bool] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "embedding_dim", "num_users", "num_items", "index", "default_k", "max_k", "max_score_items", "max_recent_items", "evaluation")
    class EvaluationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_K_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECENT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
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
    evaluation: _containers.ScalarMap[str, float]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., num_users: _Optional[int] = ..., num_items: _Optional[int] = ..., index: _Optional[_Union[IndexInfo, _Mapping]] = ..., default_k: _Optional[int] = ..., max_k: _Optional[int] = ..., max_score_items: _Optional[int] = ..., max_recent_items: _Optional[int] = ..., evaluation: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetModelStatisticsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStatistics(_message.Message):
    __slots__ = ("name", "execution_count", "inference_count", "compute_duration_us")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DURATION_US_FIELD_NUMBER: _ClassVar[int]
    name: str
    execution_count: int
    inference_count: int
    compute_duration_us: int
    def __init__(self, name: _Optional[str] = ..., execution_count: _Optional[int] = ..., inference_count: _Optional[int] = ..., compute_duration_us: _Optional[int] = ...) -> None: ...

class GetModelStatisticsResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "inference_count", "execution_count", "success_count", "failure_count", "rejected_count", "expired_count", "cancelled_count", "queue_duration_us", "compute_duration_us", "batch_size_counts", "stages", "queue_depth", "batches_in_flight")
    class BatchSizeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_COUNT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DURATION_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DURATION_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
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
    batch_size_counts: _containers.ScalarMap[int, int]
    stages: _containers.RepeatedCompositeFieldContainer[StageStatistics]
    queue_depth: int
    batches_in_flight: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., inference_count: _Optional[int] = ..., execution_count: _Optional[int] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., rejected_count: _Optional[int] = ..., expired_count: _Optional[int] = ..., cancelled_count: _Optional[int] = ..., queue_duration_us: _Optional[int] = ..., compute_duration_us: _Optional[int] = ..., batch_size_counts: _Optional[_Mapping[int, int]] = ..., stages: _Optional[_Iterable[_Union[StageStatistics, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., batches_in_flight: _Optional[int] = ...) -> None: ...
