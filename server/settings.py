"""Typed settings: the server's and each model's.

Server settings come from CLI flags > RECSERVE_* environment > a YAML file > defaults; a model's from
`<model_repository>/<model_name>/config.yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recserve.server.model_control.policy import VersionPolicy

ENV_PREFIX = "RECSERVE_"


class AdaptiveBatchingSettings(BaseModel):
    """Batching that tunes itself from measured batch costs and arrival rate."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Pick queue delay and batch size automatically.")
    latency_target_us: int = Field(
        20_000, ge=100, description="Longest a request is held back to grow a batch (queue wait + compute)."
    )


class BatchingSettings(BaseModel):
    """How concurrent requests are grouped into one forward pass."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(64, ge=1, description="Most requests in one batch; 1 turns batching off.")
    max_queue_delay_microseconds: int = Field(
        0,
        ge=0,
        description="Longest a request waits for others to join its batch; 0 = take what is queued.",
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes that go at once, without waiting for the queue delay."
    )
    max_queue_size: int = Field(
        4096, ge=1, description="Requests allowed to wait; beyond it new ones get RESOURCE_EXHAUSTED at once."
    )
    instance_count: int = Field(1, ge=1, description="Batches that may execute at the same time.")
    overlap_only_full_batches: bool = Field(
        True,
        description="While a batch executes, another starts only when complete (full, or of a preferred "
        "size); false: any free instance takes what is queued, as in Triton.",
    )
    default_timeout_microseconds: int = Field(
        0, ge=0, description="Longest a request may wait in the queue; 0 = only the caller's deadline."
    )
    max_queue_wait_microseconds: int = Field(
        250_000,
        ge=0,
        description="Refuse (RESOURCE_EXHAUSTED, at once) a request whose expected queue wait is longer: the "
        "queue is bounded by time, so under overload accepted requests stay fast; 0 = no bound.",
    )
    deadline_admission: bool = Field(
        True,
        description="Refuse at once a request whose deadline would pass before its batch is done, instead "
        "of letting it wait and expire: RESOURCE_EXHAUSTED when the wait is the queue's (overload), "
        "DEADLINE_EXCEEDED when even an idle server's batch takes longer than the deadline.",
    )
    priority_levels: int = Field(1, ge=1, description="Priority levels; 1 is the highest.")
    default_priority_level: int = Field(1, ge=1, description="Level of requests that give priority 0.")
    adaptive: AdaptiveBatchingSettings = AdaptiveBatchingSettings()

    @model_validator(mode="after")
    def _check_levels(self) -> BatchingSettings:
        if self.default_priority_level > self.priority_levels:
            raise ValueError("default_priority_level must not exceed priority_levels")
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must be positive")
        return self


class RetrievalSettings(BaseModel):
    """Candidate generation from the ANN index."""

    model_config = ConfigDict(extra="forbid")

    candidate_count: int = Field(100, ge=1, description="Candidates ranked per Recommend.")
    search_k: int = Field(-1, ge=-1, description="Annoy nodes inspected per query; -1 = Annoy's default.")
    cold_start_candidates: int = Field(200, ge=1, description="Popular items ranked for cold-start users.")
    ann_threads: int = Field(
        2, ge=1, description="Threads sharing one batch's ANN lookups (Annoy releases the GIL)."
    )
    exact_search_max_items: int = Field(
        0,
        ge=0,
        description="Search catalogs of at most this many live items exactly (one matrix product per batch "
        "over every item) instead of through the ANN index; 0 = always the index.",
    )
    rebuild_delta_items: int = Field(
        5000,
        ge=1,
        description="Rebuild the index in the background once this many items are searched exactly beside "
        "it (upserted since it was built) or dead in it (deleted or changed).",
    )
    rebuild_interval_seconds: float = Field(
        0.0, ge=0, description="Also rebuild this often when the catalog changed; 0 = only by size."
    )


class LimitSettings(BaseModel):
    """Request limits; requests beyond them are INVALID_ARGUMENT."""

    model_config = ConfigDict(extra="forbid")

    default_k: int = Field(10, ge=1, description="Items returned when a request leaves k at 0.")
    max_k: int = Field(200, ge=1, description="Largest k a request may ask for.")
    max_score_items: int = Field(1000, ge=1, description="Most item_ids in one Score request.")
    max_recent_items: int = Field(
        50, ge=1, description="Context items used; longer contexts keep the latest."
    )


class ModelConfig(BaseModel):
    """One model's `config.yaml`. Unknown sections (such as `demo`, read by the builder) are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = "recommender"
    batching: BatchingSettings = BatchingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    limits: LimitSettings = LimitSettings()
    version_policy: VersionPolicy = VersionPolicy()


TRACES_EXPORTERS = ("none", "console", "otlp_grpc", "otlp_http")
TracesExporter = Literal["none", "console", "otlp_grpc", "otlp_http"]
DEFAULT_SAMPLING_RATIO = 0.01


class TracingSettings(BaseModel):
    """OpenTelemetry tracing. Unset fields fall back to the standard `OTEL_*` variables, then defaults."""

    model_config = ConfigDict(extra="forbid")

    exporter: TracesExporter | None = Field(
        None,
        description="none, console, otlp_grpc or otlp_http; default from OTEL_TRACES_EXPORTER, else none.",
    )
    endpoint: str | None = Field(
        None, description="Collector endpoint; default from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT."
    )
    sampling_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of new traces sampled (callers' decisions are kept); default "
        "OTEL_TRACES_SAMPLER_ARG, else 0.01.",
    )
    service_name: str | None = Field(
        None, description="service.name; default OTEL_SERVICE_NAME, else recserve."
    )
    resource_attributes: dict[str, str] = Field(
        default_factory=dict, description="Extra resource attributes (merged with OTEL_RESOURCE_ATTRIBUTES)."
    )

    def resolved_exporter(self) -> str:
        """The exporter in force; OTEL_TRACES_EXPORTER=otlp is gRPC unless the OTLP protocol is http."""
        if self.exporter is not None:
            return self.exporter
        name = os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip().lower()
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
            )
            return "otlp_http" if protocol.startswith("http") else "otlp_grpc"
        return name if name in TRACES_EXPORTERS else "none"

    def resolved_sampling_ratio(self) -> float:
        """The sampling ratio in force."""
        if self.sampling_ratio is not None:
            return self.sampling_ratio
        try:
            return min(1.0, max(0.0, float(os.environ["OTEL_TRACES_SAMPLER_ARG"])))
        except (KeyError, ValueError):
            return DEFAULT_SAMPLING_RATIO

    def resolved_service_name(self) -> str:
        """The service.name in force."""
        return self.service_name or os.environ.get("OTEL_SERVICE_NAME") or "recserve"


StateBackend = Literal["memory", "redis"]
FsyncPolicy = Literal["always", "everysec"]


class StateSettings(BaseModel):
    """Where live state is kept: user events (history) and catalog changes since the version was built."""

    model_config = ConfigDict(extra="forbid")

    backend: StateBackend = Field(
        "memory",
        description="memory: in this process, durable through an append-only log under state_dir; "
        "redis: shared by every replica through the Redis server at redis_url.",
    )
    state_dir: Path = Field(Path("state"), description="memory backend: directory of the log and snapshots.")
    fsync: FsyncPolicy = Field(
        "everysec",
        description="memory backend: always (fsync before a write is acknowledged: nothing acknowledged is "
        "lost) or everysec (fsync once a second: a crash loses at most the last second).",
    )
    compact_log_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="memory backend: a log segment past this size is folded into a new snapshot.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis backend: the server to use.")
    redis_key_prefix: str = Field("recserve:", description="redis backend: prefix of recserve's keys.")
    redis_timeout_seconds: float = Field(
        0.5, gt=0, description="redis backend: a command slower than this counts as Redis being down."
    )
    max_history_events: int = Field(
        1000, ge=1, description="Events kept per user; older ones are dropped when new ones arrive."
    )
    max_events_per_call: int = Field(1000, ge=1, description="Most events in one RecordEvents call.")
    max_items_per_call: int = Field(1000, ge=1, description="Most items in one UpsertItems/DeleteItems.")
    max_tags_per_item: int = Field(32, ge=1, description="Most tags on one item.")


class TlsSettings(BaseModel):
    """Transport security of the gRPC port: TLS, and mutual TLS when a client CA is given.

    The files are re-read when they change (Kubernetes rotates mounted Secrets in place): new connections
    get the new certificate, open ones keep theirs.
    """

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(None, description="PEM server certificate chain; set with key_file: TLS.")
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; set: every client must present a certificate it signed (mTLS).",
    )
    reload_interval_seconds: float = Field(
        10.0, gt=0, description="How often the certificate files are checked for changes."
    )
    plaintext_health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A second, plaintext port serving only grpc.health.v1 (for Kubernetes gRPC probes, "
        "which cannot speak TLS); unset: none.",
    )

    @property
    def enabled(self) -> bool:
        """Whether the gRPC port speaks TLS."""
        return self.cert_file is not None

    @model_validator(mode="after")
    def _check_pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file")
        return self


class AuthSettings(BaseModel):
    """Who may call what: bearer tokens in the `authorization` metadata, each with roles."""

    model_config = ConfigDict(extra="forbid")

    tokens_file: Path | None = Field(
        None,
        description="YAML list of token hashes with roles read/write/admin (`recserve token create` makes "
        "entries); re-read when it changes. Unset: no tokens, so the write services cannot be enabled "
        "unless allow_unauthenticated_writes.",
    )
    require_for_reads: bool = Field(
        False, description="Recommender and inference calls need a token with the read role too."
    )
    allow_unauthenticated_writes: bool = Field(
        False,
        description="Let enabled write services take calls without a token (local development only).",
    )
    reload_interval_seconds: float = Field(
        5.0, gt=0, description="How often tokens_file is checked for changes."
    )


class ServerSettings(BaseSettings):
    """Process-wide settings. Every field is also `RECSERVE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    grpc_host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    model_repository: Path = Field(Path("models"), description="Directory holding one folder per model.")
    model_name: str = Field("recommender", description="Model folder to serve.")
    model_version: str | None = Field(None, description="Version to load; default the highest number.")
    max_batch_size: int | None = Field(None, ge=1, description="Overrides batching.max_batch_size.")
    max_queue_delay_us: int | None = Field(
        None, ge=0, description="Overrides batching.max_queue_delay_microseconds."
    )
    instance_count: int | None = Field(None, ge=1, description="Overrides batching.instance_count.")
    overlap_only_full_batches: bool | None = Field(
        None, description="Overrides batching.overlap_only_full_batches."
    )
    ann_threads: int | None = Field(None, ge=1, description="Overrides retrieval.ann_threads.")
    adaptive_batching: bool | None = Field(None, description="Overrides batching.adaptive.enabled.")
    max_receive_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger requests are RESOURCE_EXHAUSTED."
    )
    max_send_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest response.")
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="RPCs handled at once; beyond it RESOURCE_EXHAUSTED. Default unlimited."
    )
    tf_intra_op_threads: int = Field(
        1, ge=0, description="TensorFlow intra-op threads; 0 = TensorFlow picks."
    )
    tf_inter_op_threads: int = Field(
        1, ge=0, description="TensorFlow inter-op threads; 0 = TensorFlow picks."
    )
    tf_graph_mode_max_variable_mb: int = Field(
        16,
        ge=0,
        le=1536,
        description="SavedModels whose variables take at most this many MiB run frozen, every op on the "
        "calling thread (~0.15-0.3 ms less per call); larger ones, or 0, through their concrete function "
        "(a frozen 26 MB table kept ~120 MB more resident; a 128 MB one took ~12 s to freeze).",
    )
    warmup_rounds: int = Field(3, ge=0, description="Warm-up passes per batch size before SERVING.")
    shutdown_drain_seconds: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, seconds health says NOT_SERVING while new RPCs are still accepted.",
    )
    shutdown_grace_seconds: float = Field(
        5.0, ge=0, description="Then, seconds in-flight RPCs get to finish once new ones are refused."
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics over HTTP.")
    metrics_host: str = Field("0.0.0.0", description="Address the metrics endpoint binds to.")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Metrics HTTP port (/metrics); 0 picks one.")
    tracing: TracingSettings = TracingSettings()
    state: StateSettings = StateSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    events_enabled: bool = Field(
        False, description="Serve recserve.v1.Events (RecordEvents, ...); off: PERMISSION_DENIED."
    )
    catalog_enabled: bool = Field(
        False, description="Serve recserve.v1.Catalog (UpsertItems, ...); off: PERMISSION_DENIED."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line with trace and span ids."
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load at start only; poll: follow the model repository (new complete versions "
        "load, removed ones unload); explicit: only RepositoryModelLoad/Unload change what serves.",
    )
    repository_poll_seconds: float = Field(
        15.0, gt=0, description="With model_control_mode poll: seconds between looks at the repository."
    )
    frontend: Literal["auto", "native", "aio"] = Field(
        "auto",
        description="gRPC transport: native (grpc++), aio (grpc.aio); auto = native when it was built.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="asyncio event loop; auto = uvloop when installed (less CPU per RPC)."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes on one port (SO_REUSEPORT), about one core each; more than 1 needs "
        "state.backend redis, which every worker shares.",
    )


def load_server_settings(config_file: Path | None = None, **overrides: Any) -> ServerSettings:
    """Build the server settings from every source.

    Highest priority first: `overrides` (CLI flags; None means not given), `RECSERVE_*` environment
    variables, the YAML `config_file` (or `$RECSERVE_CONFIG`), defaults.

    Raises:
        pydantic.ValidationError: a value is of the wrong type or out of range; the message names it.
        FileNotFoundError: the config file does not exist.
        ValueError: the config file is not YAML holding a mapping of settings.
    """
    config_file = config_file or _env_config_file()
    file_values = read_config_file(Path(config_file)) if config_file is not None else {}
    cli_values = _without_none(overrides)
    settings = ServerSettings(**_merged(_merged(file_values, _env_values()), cli_values))
    check_workers(settings)
    return settings


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML config file (empty file: none).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, or not a mapping of settings.
    """
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from error
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings (key: value), not a {type(values).__name__}"
        )
    return values


def check_workers(settings: ServerSettings) -> None:
    """Several workers need shared state and model versions each can follow alone (merged settings).

    Raises:
        ValueError: workers > 1 with the memory backend, or with explicit model control.
    """
    if settings.workers > 1 and settings.state.backend != "redis":
        raise ValueError(
            f"workers={settings.workers} needs state.backend redis (--state-backend redis --redis-url "
            "redis://HOST:6379/0): every worker must see every write, and the memory backend lives in one "
            "process"
        )
    if settings.workers > 1 and settings.model_control_mode == "explicit":
        raise ValueError(
            f"workers={settings.workers} cannot use model_control_mode explicit: a RepositoryModelLoad call "
            "reaches one worker only. Use model_control_mode poll (every worker follows the repository) or "
            "none, or one worker per pod"
        )


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """Drop unset (None) values, also inside nested sections such as `tracing`."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _without_none(value)
        if value is not None and value != {}:
            kept[key] = value
    return kept


def _merged(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """`high` over `low`, section by section (a nested section keeps the keys only `low` sets)."""
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_config_file() -> Path | None:
    value = os.environ.get(f"{ENV_PREFIX}CONFIG")
    return Path(value) if value else None


def _env_values() -> dict[str, Any]:
    """The fields the environment sets, parsed the way pydantic-settings parses them."""
    return _fields_set(ServerSettings())


def _fields_set(model: BaseModel) -> dict[str, Any]:
    """The explicitly set fields of `model`, recursing into nested sections."""
    values = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        values[name] = _fields_set(value) if isinstance(value, BaseModel) else value
    return values


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read `<model_dir>/config.yaml`; a missing file gives the defaults."""
    path = model_dir / "config.yaml"
    if not path.exists():
        return ModelConfig(name=model_dir.name)
    return ModelConfig(**(yaml.safe_load(path.read_text()) or {}))


def effective_batching(settings: ServerSettings, model: ModelConfig) -> BatchingSettings:
    """The model's batching settings with the server's command-line overrides applied."""
    overrides: dict[str, Any] = {}
    if settings.max_batch_size is not None:
        overrides["max_batch_size"] = settings.max_batch_size
    if settings.max_queue_delay_us is not None:
        overrides["max_queue_delay_microseconds"] = settings.max_queue_delay_us
    if settings.instance_count is not None:
        overrides["instance_count"] = settings.instance_count
    if settings.overlap_only_full_batches is not None:
        overrides["overlap_only_full_batches"] = settings.overlap_only_full_batches
    if settings.adaptive_batching is not None:
        overrides["adaptive"] = model.batching.adaptive.model_copy(
            update={"enabled": settings.adaptive_batching}
        )
    return BatchingSettings(**{**model.batching.model_dump(), **overrides})


def effective_model_config(settings: ServerSettings, model: ModelConfig) -> ModelConfig:
    """The model's configuration with every server-level override applied."""
    retrieval = model.retrieval
    if settings.ann_threads is not None:
        retrieval = retrieval.model_copy(update={"ann_threads": settings.ann_threads})
    return model.model_copy(update={"batching": effective_batching(settings, model), "retrieval": retrieval})
