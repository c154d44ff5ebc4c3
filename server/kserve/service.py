"""The inference protocol's operations on the live model: readiness, model lookup, inference, the index.

Nothing here knows protobuf or gRPC: `recserve.server.kserve.protocol` converts the messages, the servicer
delegates here. The four models serve the versions the slot holds (the version policy picks them), all
four from one model directory: a version not served is NOT_FOUND naming those that are, anything asked
while nothing serves (loading, or unloaded) is UNAVAILABLE. So they load and unload together, as
`recommender`: model control names it, and a tower's name there is INVALID_ARGUMENT saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from recserve.server.exceptions import InvalidArgumentError, NotFoundError
from recserve.server.kserve.models import MODEL_NAMES, InferenceModel, InferOptions, build_models
from recserve.server.kserve.tensors import InputTensor, OutputTensor, TensorSpec, element_count
from recserve.server.model_control.manager import ModelManager
from recserve.server.model_control.policy import VersionPolicy
from recserve.server.model_control.slot import ServiceSlot
from recserve.server.recommender import RecommenderService

SERVER_NAME = "recserve"
# Protocol extensions implemented: ModelConfig, the priority and timeout request parameters
# (Triton's schedule_policy), ModelStatistics, RepositoryIndex and load/unload (Triton's model_repository;
# load and unload answer only with model_control_mode: explicit, as Triton's do).
EXTENSIONS = ("model_configuration", "schedule_policy", "statistics", "model_repository")


@dataclass(frozen=True)
class InferRequest:
    """One ModelInfer request, its tensors not decoded yet."""

    model_name: str
    model_version: str
    inputs: Sequence[InputTensor]
    request_id: str = ""
    requested_outputs: Sequence[str] = ()
    options: InferOptions = field(default_factory=InferOptions)


@dataclass(frozen=True)
class InferResponse:
    """The outputs of one request, in the order asked for (or the model's order)."""

    model_name: str
    model_version: str
    request_id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class ModelIndexEntry:
    """One row of RepositoryIndex."""

    name: str
    version: str
    state: str
    reason: str = ""


def server_version() -> str:
    """The installed recserve package's version."""
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


class InferenceService:
    """Serves the protocol's models over the versions the slot holds."""

    def __init__(self, slot: ServiceSlot, models: ModelManager) -> None:
        self._slot = slot
        self._manager = models
        self._models: dict[str, tuple[RecommenderService, dict[str, InferenceModel]]] = {}

    def server_ready(self) -> bool:
        """Whether a version is loaded and serving."""
        return self._slot.current is not None

    def model_ready(self, name: str, version: str) -> bool:
        """Whether `name` at `version` ("" = the default) can run inference; unknown ones cannot."""
        if name not in MODEL_NAMES or self._slot.current is None:
            return False
        return not version or version in self._slot.served

    def check_name(self, name: str) -> None:
        """Raises NotFoundError for a model this server does not have."""
        if name not in MODEL_NAMES:
            raise NotFoundError(f"unknown model {name!r}; this server has {', '.join(MODEL_NAMES)}")

    def check_controllable(self, name: str) -> None:
        """Raises NotFoundError for an unknown model, InvalidArgumentError for one loaded with another.

        The towers and the ranker are parts of `recommender`'s versions: unloading one alone would unload
        all four, so model control takes only the name that says so.
        """
        self.check_name(name)
        loaded_as = self._slot.model_name
        if name != loaded_as:
            raise InvalidArgumentError(
                f"model {name!r} is part of {loaded_as!r} (all four models serve from its versions) and "
                f"cannot load or unload alone: load or unload {loaded_as!r}, which changes all four"
            )

    def model(self, name: str, version: str = "") -> InferenceModel:
        """The model `name` at `version` ("" = the default version).

        Raises:
            NotFoundError: no such model, or that version is not served (the message names those that are).
            UnavailableError: nothing serves yet.
        """
        self.check_name(name)
        return self._live_models(self._slot.get(version, name))[name]

    def models(self, name: str = "") -> list[InferenceModel]:
        """Model `name` ("" = every model) at every served version, the default version first.

        Raises:
            NotFoundError: no such model.
            UnavailableError: nothing serves.
        """
        if name:
            self.check_name(name)
        names = [name] if name else list(MODEL_NAMES)
        services = self._slot.serving(name or None)
        return [self._live_models(service)[n] for n in names for service in services]

    @property
    def policy(self) -> VersionPolicy:
        """The version policy that picks the served versions."""
        return self._manager.policy

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        """Every model at every version with its state and reason (only the ready ones if `ready_only`)."""
        entries = [
            ModelIndexEntry(name, version, status.state, status.reason)
            for version, status in self._manager.statuses().items()
            for name in MODEL_NAMES
        ]
        return [entry for entry in entries if entry.state == "READY"] if ready_only else entries

    def rejections(self) -> str:
        """Why versions were rejected, for an error message."""
        rejected = self._slot.rejected
        return "; ".join(f"version {v}: {why}" for v, why in rejected.items()) or "no complete version"

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate the request against the model's tensors, run it, keep the outputs asked for.

        Raises:
            NotFoundError: unknown model or version; an unknown item id where one is required.
            InvalidArgumentError: an input unknown, repeated, missing, of the wrong datatype or shape, or
                whose data does not fit its shape; an unknown output; a bad k or priority.
            UnavailableError, QueueFullError, DeadlineExceededError, ModelExecutionError: as Recommend.
        """
        model = self.model(request.model_name, request.model_version)
        outputs = requested_outputs(model, request.requested_outputs)
        arrays = decoded_inputs(model, request.inputs)
        results = await model.infer(arrays, request.options)
        return InferResponse(
            model.name,
            model.version,
            request.request_id,
            [OutputTensor(spec.name, spec.datatype, results[spec.name]) for spec in outputs],
        )

    def _live_models(self, service: RecommenderService) -> dict[str, InferenceModel]:
        """The protocol models of `service` (built once per version; versions no longer served dropped)."""
        version = service.model.version
        cached = self._models.get(version)
        if cached is None or cached[0] is not service:
            served = self._slot.served
            self._models = {v: c for v, c in self._models.items() if served.get(v) is c[0]}
            cached = self._models[version] = (service, build_models(service))
        return cached[1]


def requested_outputs(model: InferenceModel, names: Sequence[str]) -> list[TensorSpec]:
    """The output specs asked for, in that order (every output if none). Raises InvalidArgumentError."""
    specs = {spec.name: spec for spec in model.outputs}
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise InvalidArgumentError(
            f"model {model.name!r} has no output {unknown[0]!r}; its outputs are {', '.join(specs)}"
        )
    return [specs[name] for name in dict.fromkeys(names)] if names else list(specs.values())


def decoded_inputs(model: InferenceModel, tensors: Sequence[InputTensor]) -> dict[str, np.ndarray]:
    """Check the inputs against the model's and decode them. Raises InvalidArgumentError naming the tensor."""
    specs = {spec.name: spec for spec in model.inputs}
    given: dict[str, InputTensor] = {}
    for tensor in tensors:
        if tensor.name in given:
            raise InvalidArgumentError(f"input {tensor.name!r} is given twice")
        if tensor.name not in specs:
            raise InvalidArgumentError(
                f"model {model.name!r} has no input {tensor.name!r}; its inputs are {', '.join(specs)}"
            )
        given[tensor.name] = tensor
    missing = [spec.name for spec in model.inputs if not spec.optional and spec.name not in given]
    if missing:
        raise InvalidArgumentError(f"input {missing[0]!r} is required by model {model.name!r} and missing")
    for tensor in given.values():
        _check_tensor(model, tensor)
    _check_batch(model, list(given.values()))
    return {name: tensor.decode() for name, tensor in given.items()}


def _check_tensor(model: InferenceModel, tensor: InputTensor) -> None:
    spec = next(spec for spec in model.inputs if spec.name == tensor.name)
    element_count(tensor.name, tensor.shape)  # negative dimensions first: nothing below makes sense then
    if tensor.datatype != spec.datatype:
        raise InvalidArgumentError(
            f"input {tensor.name!r} has datatype {tensor.datatype or '(none)'}; model {model.name!r} "
            f"expects {spec.datatype}"
        )
    fits = len(tensor.shape) == len(spec.shape) and all(
        want == -1 or got == want for got, want in zip(tensor.shape[1:], spec.shape[1:], strict=True)
    )
    if not fits:
        raise InvalidArgumentError(
            f"input {tensor.name!r} has shape {list(tensor.shape)}; model {model.name!r} expects "
            f"{list(spec.shape)} (the first dimension is the batch, -1 is any size)"
        )


def _check_batch(model: InferenceModel, tensors: list[InputTensor]) -> None:
    first = tensors[0]
    for tensor in tensors[1:]:
        if tensor.batch_size != first.batch_size:
            raise InvalidArgumentError(
                f"input {tensor.name!r} has batch size {tensor.batch_size} but input {first.name!r} has "
                f"{first.batch_size}: every input needs the same first dimension"
            )
    if not 1 <= first.batch_size <= model.max_batch_size:
        raise InvalidArgumentError(
            f"input {first.name!r} has batch size {first.batch_size}; model {model.name!r} takes 1 to "
            f"{model.max_batch_size} rows (max_batch_size)"
        )
