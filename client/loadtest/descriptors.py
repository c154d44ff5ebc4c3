"""Find the method to load-test and learn its request type, from any of ghz's three sources.

`--protoset FILE` (a FileDescriptorSet), `--proto FILE [-i DIRS]` (compiled here and now with grpc_tools'
protoc into a descriptor set, so no generated code is needed), or, by default, server reflection. The files
go into a fresh descriptor pool, so a test target whose proto is also imported by this process cannot clash
with it, and request messages are built from the descriptor (`message_factory`), so any unary method works.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2

from recserve.client.loadtest.options import LoadtestOptions, SetupError

_REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
_MAX_REFLECTION_ROUNDS = 100


@dataclass(frozen=True)
class TargetMethod:
    """A resolved unary method: its wire path, its descriptor, and a codec for its requests."""

    path: str
    descriptor: MethodDescriptor
    codec: MessageCodec

    def template_constants(self) -> dict[str, str]:
        """The call-data fields that are the same for every call (ghz's CallData), by field name."""
        method = self.descriptor
        return {
            "FullyQualifiedName": method.full_name,
            "MethodName": method.name,
            "ServiceName": method.containing_service.name,
            "InputName": method.input_type.name,
            "OutputName": method.output_type.name,
            "IsClientStreaming": "true" if method.client_streaming else "false",
            "IsServerStreaming": "true" if method.server_streaming else "false",
        }


def split_call(call: str) -> tuple[str, str]:
    """`pkg.Service.Method` or `pkg.Service/Method` -> ("pkg.Service", "Method").

    Raises:
        SetupError: the name has no service part.
    """
    name = call.strip().lstrip("/")
    service, separator, method = name.rpartition("/") if "/" in name else name.rpartition(".")
    if not separator or not service or not method:
        raise SetupError(f"--call must be pkg.Service.Method or pkg.Service/Method, got {call!r}")
    return service, method


def resolve_method(options: LoadtestOptions) -> TargetMethod:
    """Resolve `options.call` from the protoset, the proto file, or server reflection, in that order.

    Raises:
        SetupError: the sources cannot be read or compiled, reflection fails, the method is unknown or
            streams.
    """
    service_name, method_name = split_call(options.call)
    if options.protoset:
        files = _read_protoset(Path(options.protoset))
    elif options.proto:
        files = _compile_proto(Path(options.proto), options.proto_search_paths())
    else:
        files = _reflect(options, service_name)
    pool = _build_pool(files)
    return _find_method(pool, service_name, method_name)


def _find_method(pool: descriptor_pool.DescriptorPool, service_name: str, method_name: str) -> TargetMethod:
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError as error:
        raise SetupError(f"unknown service {service_name}") from error
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(sorted(service.methods_by_name))
        raise SetupError(f"service {service_name} has no method {method_name} (it has: {known})")
    if method.client_streaming or method.server_streaming:
        raise SetupError(f"{method.full_name} is a streaming method; only unary methods are supported")
    codec = MessageCodec(message_factory.GetMessageClass(method.input_type))
    return TargetMethod(f"/{service.full_name}/{method.name}", method, codec)


def _read_protoset(path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    try:
        return list(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)
    except OSError as error:
        raise SetupError(f"cannot read protoset {path}: {error.strerror}") from error
    except Exception as error:  # noqa: BLE001  # protobuf raises DecodeError or RuntimeError by backend
        raise SetupError(f"{path} is not a protoset (FileDescriptorSet): {error}") from error


def _compile_proto(proto: Path, search_paths: Iterable[str]) -> list[descriptor_pb2.FileDescriptorProto]:
    if proto.suffix != ".proto":
        raise SetupError(f"--proto must name a .proto file, got {proto}")
    search_paths = list(search_paths)
    # As protoc (and ghz) do: a relative name is also looked for under each import path.
    if not proto.is_file() and not any((Path(path) / proto).is_file() for path in search_paths):
        raise SetupError(f"cannot read proto file {proto} (looked in {', '.join(search_paths)})")
    well_known = str(resources.files("grpc_tools") / "_proto")
    includes = [f"-I{path}" for path in [*search_paths, well_known]]
    with tempfile.TemporaryDirectory(prefix="loadtest-") as scratch:
        descriptor_set = Path(scratch) / "descriptor.protoset"
        # In a child process: protoc's native code can clash with another libprotobuf already loaded here
        # (TensorFlow's), and its diagnostics go straight to our stderr.
        command = [sys.executable, "-m", "grpc_tools.protoc", *includes, "--include_imports", str(proto)]
        completed = subprocess.run([*command, f"--descriptor_set_out={descriptor_set}"], check=False)
        if completed.returncode != 0:
            raise SetupError(f"compiling {proto} failed (protoc exit code {completed.returncode})")
        return _read_protoset(descriptor_set)


def _reflect(options: LoadtestOptions, service_name: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """The file defining `service_name` and every file it imports, asked of the server's reflection."""
    with _sync_channel(options) as channel:
        reflection = _ReflectionClient(channel, options.connect_timeout_ns / 1e9)
        try:
            return reflection.files_for(service_name)
        except grpc.RpcError as error:
            code, details = error.code().name, error.details()  # type: ignore[attr-defined]
            raise SetupError(f"server reflection on {options.host} failed: {code}: {details}") from error


def _sync_channel(options: LoadtestOptions) -> grpc.Channel:
    if options.insecure:
        return grpc.insecure_channel(options.host, options.channel_options())
    return grpc.secure_channel(options.host, options.channel_credentials(), options.channel_options())


class _ReflectionClient:
    """Server reflection, one request and one response at a time, each under the connect timeout.

    Speaks v1alpha first (what ghz speaks) and switches to v1 for good if the server has only that.
    """

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._method = 0

    def files_for(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file defining `symbol` and, transitively, the files it imports."""
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        response = self._ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        if response.HasField("error_response"):
            error = response.error_response
            raise SetupError(
                f"server reflection does not know the service {symbol} ({error.error_message}, code "
                f"{error.error_code}): check --call's package and service name"
            )
        _add_files(files, response)
        for _ in range(_MAX_REFLECTION_ROUNDS):
            missing = {dep for f in files.values() for dep in f.dependency if dep not in files}
            if not missing:
                return list(files.values())
            for name in sorted(missing):
                _add_files(files, self._file(name))
        raise SetupError("server reflection: the import graph did not close")

    def _file(self, name: str) -> reflection_pb2.ServerReflectionResponse:
        """The file `name` from the server, else from this process (the well-known types, say)."""
        response = self._ask(reflection_pb2.ServerReflectionRequest(file_by_filename=name))
        if not response.HasField("error_response"):
            return response
        try:
            local = descriptor_pool.Default().FindFileByName(name)
        except KeyError as error:
            raise SetupError(f"server reflection cannot provide {name}") from error
        proto = descriptor_pb2.FileDescriptorProto()
        local.CopyToProto(proto)
        fallback = reflection_pb2.ServerReflectionResponse()
        fallback.file_descriptor_response.file_descriptor_proto.append(proto.SerializeToString())
        return fallback

    def _ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        while True:
            call = self._channel.stream_stream(
                _REFLECTION_METHODS[self._method],
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            try:
                return next(iter(call(iter([request]), timeout=self._timeout_s)))
            except grpc.RpcError as error:
                unimplemented = error.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
                if not unimplemented or self._method + 1 == len(_REFLECTION_METHODS):
                    raise
                self._method += 1


def _add_files(
    files: dict[str, descriptor_pb2.FileDescriptorProto], response: reflection_pb2.ServerReflectionResponse
) -> None:
    if response.HasField("error_response"):
        error = response.error_response
        raise SetupError(f"server reflection: {error.error_message} (code {error.error_code})")
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files.setdefault(proto.name, proto)


def _build_pool(files: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A fresh pool holding `files`, each added after the files it imports."""
    by_name = {f.name: f for f in files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        proto = by_name.get(name)
        if proto is None:
            raise SetupError(f"the descriptors do not include {name}, which another file imports")
        for dependency in proto.dependency:
            add(dependency)
        pool.Add(proto)

    for name in by_name:
        add(name)
    return pool


class MessageCodec:
    """Serializes call data (JSON, protobuf's JSON mapping) into one request message type."""

    def __init__(self, message_class: type) -> None:
        self._message_class = message_class
        self._descriptor = message_class.DESCRIPTOR

    def encode(self, data: dict[str, Any]) -> bytes:
        """The serialized message for `data`.

        Raises:
            ValueError: a field is unknown or a value does not fit its field (json_format.ParseError).
        """
        message = self._message_class()
        try:
            json_format.ParseDict(data, message)
        except json_format.ParseError as error:
            raise ValueError(f"data does not fit {self._descriptor.full_name}: {error}") from error
        return message.SerializeToString()

    def field_encoder(self, name: str) -> Callable[[str], bytes] | None:
        """A fast serializer for a message holding only the top-level singular scalar field `name`.

        The value arrives as rendered template text and is converted as protobuf's JSON mapping converts a
        JSON string for that field type. None for fields this cannot handle (repeated, maps, messages) and
        for bools, which the JSON mapping does not take as strings: the full path refuses them, as ghz does.
        """
        field = self._field(name)
        unhandled = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_BOOL)
        if field is None or _is_repeated(field) or field.type in unhandled:
            return None
        convert = _scalar_converter(field)
        message_class, attribute = self._message_class, field.name

        def encode(text: str) -> bytes:
            message = message_class()
            setattr(message, attribute, convert(text))
            return message.SerializeToString()

        return encode

    def _field(self, name: str) -> FieldDescriptor | None:
        fields = self._descriptor.fields_by_name
        if name in fields:
            return fields[name]
        return next((f for f in self._descriptor.fields if f.json_name == name), None)


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _scalar_converter(field: FieldDescriptor) -> Callable[[str], Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return str
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64decode
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        return lambda text: enum.values_by_name[text].number if text in enum.values_by_name else int(text)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return float
    return int
