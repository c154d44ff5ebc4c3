"""Converts between the protocol's protobuf messages and the requests, models and statistics of this package.

Statistics follow Triton's definitions where recserve keeps the figure (see docs/inference-protocol.md):
requests and executions, successes and failures, time queued and computing per request, executions and
compute time per batch size. Time preparing inputs and outputs is not measured apart from compute: those
durations are 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from recserve.inference import grpc_service_pb2 as pb
from recserve.inference import model_config_pb2 as config_pb
from recserve.server.exceptions import InvalidArgumentError
from recserve.server.kserve.models import PLATFORM, InferenceModel, InferOptions
from recserve.server.kserve.service import (
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
)
from recserve.server.kserve.tensors import CONTENTS_FIELD, InputTensor, TensorSpec
from recserve.server.model_control.policy import VersionPolicy
from recserve.server.statistics import BatchStatistics

CONFIG_DATATYPES = {
    "FP32": config_pb.TYPE_FP32,
    "INT32": config_pb.TYPE_INT32,
    "INT64": config_pb.TYPE_INT64,
    "BYTES": config_pb.TYPE_STRING,
}
INTEGER_PARAMETERS = ("int64_param", "uint64_param")


def infer_request(request: pb.ModelInferRequest, time_remaining_s: float | None) -> InferRequest:
    """The request with its tensors undecoded. Raises InvalidArgumentError for bad raw data or parameters.

    `time_remaining_s` is the caller's deadline; a `timeout` parameter (µs) may shorten it.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send raw data for "
            "every input, in order, or for none"
        )
    _check_tensor_parameters(request)
    inputs = [
        InputTensor(
            tensor.name,
            tensor.datatype,
            tuple(tensor.shape),
            raw[position] if raw else None,
            # HasField first: listing the fields of an empty contents message costs more than the check.
            {field.name: values for field, values in tensor.contents.ListFields()}
            if tensor.HasField("contents")
            else {},
        )
        for position, tensor in enumerate(request.inputs)
    ]
    timeout_us = _integer_parameter(request, "timeout")
    timeout_s = time_remaining_s
    if timeout_us > 0:
        timeout_s = min(timeout_us / 1e6, timeout_s) if timeout_s is not None else timeout_us / 1e6
    return InferRequest(
        request.model_name,
        request.model_version,
        inputs,
        request.id,
        [output.name for output in request.outputs],
        InferOptions(timeout_s, _integer_parameter(request, "priority")),
    )


def _check_tensor_parameters(request: pb.ModelInferRequest) -> None:
    """Refuse what a tensor's parameters ask for that recserve does not do, rather than ignore it."""
    for kind, tensors in (("input", request.inputs), ("output", request.outputs)):
        for tensor in tensors:
            region = next((key for key in tensor.parameters if key.startswith("shared_memory")), None)
            if region is not None:
                raise InvalidArgumentError(
                    f"{kind} {tensor.name!r} has the parameter {region!r}: shared-memory tensors are not "
                    "supported; send tensor data in the request and read outputs from the response"
                )
    for output in request.outputs:
        if "classification" in output.parameters:
            raise InvalidArgumentError(
                f"output {output.name!r} asks for classification (class_count): recserve does not "
                "implement that extension; request the output without class_count (recommender's "
                "item_ids and scores already are the top k, best first)"
            )


def _integer_parameter(request: pb.ModelInferRequest, name: str) -> int:
    if name not in request.parameters:
        return 0
    parameter = request.parameters[name]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in INTEGER_PARAMETERS:
        raise InvalidArgumentError(f"parameter {name!r} must be an integer (int64_param or uint64_param)")
    return int(getattr(parameter, kind))


def check_load_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    """Refuse a load that overrides the configuration or files: recserve loads the repository as it is."""
    name = next(iter(parameters), None)
    if name is None:
        return
    if name == "config" or name.startswith("file:"):
        asked = f"overrides the model's {'configuration' if name == 'config' else 'files'}"
    else:
        asked = "is not known"
    raise InvalidArgumentError(
        f"load parameter {name!r} {asked}: recserve loads the model repository as it is on disk; change "
        "config.yaml or the version directories there, then load without parameters"
    )


def check_unload_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    """Take `unload_dependents` (every model unloads with `recommender` anyway); refuse any other."""
    for name, parameter in parameters.items():
        if name != "unload_dependents":
            raise InvalidArgumentError(f"unload parameter {name!r} is not known; unload takes none")
        if parameter.WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgumentError("unload parameter 'unload_dependents' must be a bool_param")


def infer_response(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The response; its data in raw_output_contents if `raw`, else in each output's typed contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.request_id
    )
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            message.raw_output_contents.append(tensor.raw())
        else:
            _contents_field(output.contents, tensor.datatype).extend(tensor.values())
    return message


def _contents_field(contents: pb.InferTensorContents, datatype: str) -> Any:
    """The repeated field of `contents` that holds `datatype`."""
    return getattr(contents, CONTENTS_FIELD[datatype])


def server_metadata(version: str) -> pb.ServerMetadataResponse:
    """Name, version and the extensions implemented."""
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=EXTENSIONS)


def model_metadata(model: InferenceModel) -> pb.ModelMetadataResponse:
    """Versions, platform and tensors; shapes include the batch dimension (-1)."""
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=[_tensor_metadata(spec) for spec in model.inputs],
        outputs=[_tensor_metadata(spec) for spec in model.outputs],
    )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def model_config(model: InferenceModel, policy: VersionPolicy) -> pb.ModelConfigResponse:
    """The model's configuration in the protocol's shape; dims leave out the batch dimension."""
    config = config_pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=PLATFORM,
        max_batch_size=model.max_batch_size,
        version_policy=version_policy(policy),
        input=[
            config_pb.ModelInput(
                name=spec.name,
                data_type=CONFIG_DATATYPES[spec.datatype],
                dims=spec.shape[1:],
                optional=spec.optional,
            )
            for spec in model.inputs
        ],
        output=[
            config_pb.ModelOutput(
                name=spec.name, data_type=CONFIG_DATATYPES[spec.datatype], dims=spec.shape[1:]
            )
            for spec in model.outputs
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=model.name, kind=config_pb.ModelInstanceGroup.KIND_CPU, count=model.instance_count
            )
        ],
        parameters={
            key: config_pb.ModelParameter(string_value=value) for key, value in model.parameters().items()
        },
    )
    batching = model.dynamic_batching
    if batching is not None:
        config.dynamic_batching.CopyFrom(
            config_pb.ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                priority_levels=batching.priority_levels,
                default_priority_level=batching.default_priority_level,
                default_queue_policy=config_pb.ModelQueuePolicy(
                    timeout_action=config_pb.ModelQueuePolicy.REJECT,
                    default_timeout_microseconds=batching.default_timeout_microseconds,
                    allow_timeout_override=True,
                    max_queue_size=batching.max_queue_size,
                ),
            )
        )
    return pb.ModelConfigResponse(config=config)


def version_policy(policy: VersionPolicy) -> config_pb.ModelVersionPolicy:
    """The policy in ModelConfig's form."""
    if policy.all:
        return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())
    if policy.specific is not None:
        return config_pb.ModelVersionPolicy(
            specific=config_pb.ModelVersionPolicy.Specific(versions=policy.specific)
        )
    return config_pb.ModelVersionPolicy(
        latest=config_pb.ModelVersionPolicy.Latest(num_versions=policy.latest or 1)
    )


def model_statistics(models: Iterable[InferenceModel]) -> pb.ModelStatisticsResponse:
    """Cumulative statistics per model since the model loaded."""
    return pb.ModelStatisticsResponse(
        model_stats=[_statistics(model.name, model.version, model.statistics) for model in models]
    )


def _statistics(name: str, version: str, live: BatchStatistics) -> pb.ModelStatistics:
    stats = live.snapshot()
    executed = stats.inference_count
    request_ns = int(stats.request_duration_us.total * 1000)
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ns // 1_000_000,
        inference_count=executed,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success_count, request_ns),
            fail=_duration(stats.failure_count + stats.rejected_count + stats.expired_count),
            queue=_duration(executed, stats.queue_duration_ns),
            compute_input=_duration(executed),
            compute_infer=_duration(executed, max(request_ns - stats.queue_duration_ns, 0)),
            compute_output=_duration(executed),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(count),
                compute_infer=_duration(count, stats.batch_compute_ns[size]),
                compute_output=_duration(count),
            )
            for size, count in sorted(stats.batch_size_counts.items())
        ],
    )


def _duration(count: int, ns: int = 0) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def repository_index(entries: Iterable[ModelIndexEntry]) -> pb.RepositoryIndexResponse:
    """One row per model."""
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
            for entry in entries
        ]
    )
