"""ghz call-data templates: `{{.RequestNumber}}`, `{{randomInt 0 9}}` and friends inside JSON string values.

Templates are compiled once, before the run, into tuples of literal text and small functions, so rendering a
request costs a join and a few calls, never a parse. A request whose data holds no template is encoded to
bytes once and reused for every call; a top-level string field holding a template is re-encoded on its own
and appended to the pre-encoded rest of the message (protobuf concatenation is a merge), so the common case
`{"user_id": "user-{{randomInt 0 1500}}"}` never goes through JSON-to-protobuf parsing per call.

Supported, as in ghz: the call-data fields `.WorkerID`, `.RequestNumber`, `.FullyQualifiedName`,
`.MethodName`, `.ServiceName`, `.InputName`, `.OutputName`, `.IsClientStreaming`, `.IsServerStreaming`,
`.Timestamp`, `.TimestampUnix`, `.TimestampUnixMilli`, `.TimestampUnixNano`, `.UUID` (one per call), and the
functions `newUUID`, `randomString N`, `randomInt MIN MAX`. Anything else is a `TemplateError` when compiled.
"""

from __future__ import annotations

import random
import re
import string
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_CHARSET = string.ascii_letters + string.digits
_RANDOM_LENGTH_MIN, _RANDOM_LENGTH_MAX = 2, 16

Metadata = tuple[tuple[str, str], ...]


class TemplateError(ValueError):
    """A template that cannot be compiled: unknown field or function, or bad arguments."""


class CallContext:
    """What one call's templates may refer to. The UUID and the clock are read once per call, as in ghz."""

    __slots__ = ("request_number", "worker_id", "_uuid", "_now_ns")

    def __init__(self, request_number: int, worker_id: str) -> None:
        self.request_number = request_number
        self.worker_id = worker_id
        self._uuid: str | None = None
        self._now_ns: int | None = None

    @property
    def uuid(self) -> str:
        """A random UUIDv4, the same for every `{{.UUID}}` of this call."""
        if self._uuid is None:
            self._uuid = str(uuid.uuid4())
        return self._uuid

    @property
    def now_ns(self) -> int:
        """Wall-clock time of the call in nanoseconds, the same for every timestamp field of this call."""
        if self._now_ns is None:
            self._now_ns = time.time_ns()
        return self._now_ns


Renderer = Callable[[CallContext], str]
Part = str | Renderer


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000).astimezone().isoformat().replace("+00:00", "Z")


_FIELDS: dict[str, Renderer] = {
    "RequestNumber": lambda ctx: str(ctx.request_number),
    "WorkerID": lambda ctx: ctx.worker_id,
    "UUID": lambda ctx: ctx.uuid,
    "Timestamp": lambda ctx: _rfc3339(ctx.now_ns),
    "TimestampUnix": lambda ctx: str(ctx.now_ns // 1_000_000_000),
    "TimestampUnixMilli": lambda ctx: str(ctx.now_ns // 1_000_000),
    "TimestampUnixNano": lambda ctx: str(ctx.now_ns),
}


def _random_string(length: int) -> Renderer:
    rng = random.Random()
    if length > 0:
        return lambda ctx: "".join(rng.choices(_CHARSET, k=length))
    return lambda ctx: "".join(rng.choices(_CHARSET, k=rng.randint(_RANDOM_LENGTH_MIN, _RANDOM_LENGTH_MAX)))


def _random_int(low: int, high: int) -> Renderer:
    """Like ghz's randomInt: a value in [low, high); a negative low counts as 0 and high <= 0 as 1."""
    low, high = max(low, 0), high if high > 0 else 1
    if high <= low:
        raise TemplateError(f"randomInt {low} {high}: the range [MIN, MAX) is empty")
    rng = random.Random()
    return lambda ctx: str(rng.randrange(low, high))


def _function(name: str, args: Sequence[str]) -> Renderer:
    arity = {"newUUID": 0, "randomString": 1, "randomInt": 2}
    if name not in arity:
        raise TemplateError(f"unsupported template function {name!r}")
    if len(args) != arity[name]:
        raise TemplateError(f"{name} takes {arity[name]} argument(s), got {len(args)}")
    try:
        numbers = [int(arg) for arg in args]
    except ValueError as error:
        raise TemplateError(f"{name} takes integer arguments, got {' '.join(args)}") from error
    if name == "newUUID":
        return lambda ctx: str(uuid.uuid4())
    if name == "randomString":
        return _random_string(numbers[0])
    return _random_int(numbers[0], numbers[1])


def _action(text: str, constants: Mapping[str, str]) -> Part:
    words = text.split()
    if not words:
        raise TemplateError("empty template action {{}}")
    head = words[0]
    if head.startswith("."):
        field = head[1:]
        if len(words) > 1:
            raise TemplateError(f"unexpected arguments after {head}")
        if field in constants:
            return constants[field]
        if field not in _FIELDS:
            raise TemplateError(f"unknown template field {head!r}")
        return _FIELDS[field]
    return _function(head, words[1:])


def compile_string(text: str, constants: Mapping[str, str] | None = None) -> Renderer | None:
    """Compile one string; None when it holds no template action (use the string as it is).

    Args:
        text: the string, e.g. "user-{{randomInt 0 1500}}".
        constants: call-data fields fixed for the whole run (method and message names), by field name.

    Raises:
        TemplateError: an action names an unknown field or function, or has bad arguments.
    """
    if "{{" not in text:
        return None
    parts: list[Part] = []
    position = 0
    for match in _ACTION.finditer(text):
        parts.append(text[position : match.start()])
        parts.append(_action(match.group(1), constants or {}))
        position = match.end()
    parts.append(text[position:])
    return _join(tuple(part for part in parts if part != ""))


def _join(parts: tuple[Part, ...]) -> Renderer:
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0]
    renderers = tuple((lambda ctx, text=part: text) if isinstance(part, str) else part for part in parts)
    return lambda ctx: "".join([render(ctx) for render in renderers])


ValueRenderer = Callable[[CallContext], Any]


def compile_value(value: Any, constants: Mapping[str, str] | None = None) -> ValueRenderer | None:
    """Compile a JSON value whose strings may hold templates; None when nothing in it varies."""
    if isinstance(value, str):
        return compile_string(value, constants)
    if isinstance(value, dict):
        return _compile_items(list(value.items()), dict, constants)
    if isinstance(value, list):
        return _compile_items(list(enumerate(value)), lambda pairs: [v for _, v in pairs], constants)
    return None


def _compile_items(
    pairs: list[tuple[Any, Any]], build: Callable[[Any], Any], constants: Mapping[str, str] | None
) -> ValueRenderer | None:
    compiled = [(key, value, compile_value(value, constants)) for key, value in pairs]
    if all(renderer is None for _, _, renderer in compiled):
        return None
    return lambda ctx: build(
        [(key, value if renderer is None else renderer(ctx)) for key, value, renderer in compiled]
    )


class MessageCodec(Protocol):
    """Turns call data into request bytes; implemented by `descriptors.MessageCodec`."""

    def encode(self, data: dict[str, Any]) -> bytes:
        """The serialized request message for a JSON object."""

    def field_encoder(self, name: str) -> Callable[[str], bytes] | None:
        """Serializes a message holding only the top-level field `name`; None where that is not possible."""


PayloadSource = bytes | Callable[[CallContext], bytes]


def compile_payload(item: dict[str, Any], codec: MessageCodec, constants: Mapping[str, str]) -> PayloadSource:
    """Bytes for one data item: fixed bytes, or a function of the call rendering only what varies.

    Raises:
        TemplateError: a template does not compile.
        ValueError: the data does not fit the request message (the codec's parse error).
    """
    renderer = compile_value(item, constants)
    if renderer is None:
        return codec.encode(item)
    fast = _field_payload(item, codec, constants)
    if fast is not None:
        return fast
    return lambda ctx: codec.encode(renderer(ctx))


def _field_payload(
    item: dict[str, Any], codec: MessageCodec, constants: Mapping[str, str]
) -> Callable[[CallContext], bytes] | None:
    """The fast path: templates only in top-level scalar string values. None when it does not apply."""
    fixed: dict[str, Any] = {}
    varying: list[tuple[Renderer, Callable[[str], bytes]]] = []
    for key, value in item.items():
        renderer = compile_value(value, constants)
        if renderer is None:
            fixed[key] = value
            continue
        encoder = codec.field_encoder(key) if isinstance(value, str) else None
        if encoder is None:
            return None
        varying.append((renderer, encoder))
    base = codec.encode(fixed)
    if len(varying) == 1:
        ((renderer, encoder),) = varying
        return lambda ctx: base + encoder(renderer(ctx))
    return lambda ctx: base + b"".join(encoder(renderer(ctx)) for renderer, encoder in varying)


def compile_metadata(
    metadata: Mapping[str, str] | None, constants: Mapping[str, str]
) -> Metadata | Callable[[CallContext], Metadata] | None:
    """Call metadata as gRPC wants it (lower-case keys); a function of the call when values hold templates."""
    if not metadata:
        return None
    pairs = [(key.lower(), value, compile_string(value, constants)) for key, value in metadata.items()]
    if all(renderer is None for _, _, renderer in pairs):
        return tuple((key, value) for key, value, _ in pairs)
    return lambda ctx: tuple(
        (key, value if renderer is None else renderer(ctx)) for key, value, renderer in pairs
    )


class RequestPlan:
    """What request N sends: data item N % len(items), rendered for the call, and the call's metadata.

    Args:
        payloads: one compiled payload per data item (see `compile_payload`).
        metadata: compiled metadata (see `compile_metadata`).
    """

    def __init__(
        self,
        payloads: Sequence[PayloadSource],
        metadata: Metadata | Callable[[CallContext], Metadata] | None,
    ) -> None:
        if not payloads:
            raise ValueError("at least one data item is needed")
        self._payloads = tuple(payloads)
        self._metadata = metadata
        self.is_static = all(isinstance(p, bytes) for p in payloads) and not callable(metadata)

    def static_requests(self) -> tuple[list[bytes], Metadata] | None:
        """Every payload and the metadata when nothing is rendered per call (`is_static`), else None."""
        if not self.is_static:
            return None
        return list(self._payloads), self._metadata or ()  # type: ignore[arg-type]  # all bytes when static

    def build(self, request_number: int, worker_id: str) -> tuple[bytes, Metadata | None]:
        """The serialized request and the metadata for one call."""
        payload = self._payloads[request_number % len(self._payloads)]
        metadata = self._metadata
        if isinstance(payload, bytes) and not callable(metadata):
            return payload, metadata
        ctx = CallContext(request_number, worker_id)
        body = payload if isinstance(payload, bytes) else payload(ctx)
        return body, metadata(ctx) if callable(metadata) else metadata


def build_plan(
    data: dict[str, Any] | list[dict[str, Any]],
    metadata: Mapping[str, str] | None,
    codec: MessageCodec,
    constants: Mapping[str, str],
) -> RequestPlan:
    """Compile the run's data and metadata once, and render request 0 to catch data errors before the run.

    Raises:
        TemplateError: a template does not compile.
        ValueError: the data does not fit the request message.
    """
    items = data if isinstance(data, list) else [data]
    plan = RequestPlan(
        [compile_payload(item, codec, constants) for item in items], compile_metadata(metadata, constants)
    )
    for number in range(len(items)):
        plan.build(number, "g0c0")
    return plan
