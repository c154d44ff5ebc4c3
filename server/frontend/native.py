"""A gRPC server with grpc.aio's interface whose transport is grpc++, not grpc's Cython layer.

The transport is the extension `recserve.native._frontend` (native/frontend.cc).

Handlers are the same `grpc.GenericRpcHandler`s and async servicer methods grpc.aio runs, with the same
servicer context API, so everything registered on the server (our services, health, reflection) runs
unchanged. What changes is the cost per call on the event loop: grpc++ threads accept, read and write calls
without the GIL, and the event loop takes every call that arrived since it last looked in one `drain()`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from recserve.native import load_extension

_native = load_extension("frontend")

logger = logging.getLogger(__name__)

_NEW, _READ, _WRITE_DONE, _CANCELLED = _native.NEW, _native.READ, _native.WRITE_DONE, _native.CANCELLED
CONCURRENCY_LIMIT_MESSAGE = "Concurrent RPC limit exceeded!"  # grpc.aio's words, kept for clients that match


class _HandlerCallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


def _metadata_tuple(raw: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """Client metadata as grpc.aio gives it: text values decoded, `-bin` values as bytes."""
    return tuple((key, value if key.endswith("-bin") else value.decode("latin-1")) for key, value in raw)


class NativeServicerContext(grpc.aio.ServicerContext):
    """The servicer context of one call: grpc.aio's API over a `_native.Call`."""

    __slots__ = (
        "_call",
        "_code",
        "_details",
        "_trailing",
        "_metadata",
        "_task",
        "_reads",
        "_write_done",
        "_done_callbacks",
        "_finished",
        "_first_request",
        "_serialize",
        "_flush",
    )

    def __init__(self, call: Any, first_request: bytes | None, flush: Callable[[], None]) -> None:
        self._call = call
        self._flush = flush
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reads: asyncio.Queue[bytes | None] | None = None
        self._write_done: asyncio.Future[bool] | None = None
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._finished = False
        self._first_request = first_request
        self._serialize: Callable[[Any], bytes] | None = None

    # --- status ---
    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a status code other than OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    # --- metadata and call facts ---
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self._metadata is None:
            self._metadata = _metadata_tuple(self._call.metadata())
        return self._metadata

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        for key, value in initial_metadata:
            self._call.add_initial_metadata(key, _text(value))

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def peer(self) -> str:
        return self._call.peer()

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._done_callbacks.append(callback)

    def set_compression(self, compression: grpc.Compression) -> None:  # not offered by this front end
        pass

    def disable_next_message_compression(self) -> None:
        pass

    # --- streaming ---
    async def read(self) -> bytes | None:
        """The next raw request message, or None at the end of the stream."""
        if self._first_request is not None:
            first, self._first_request = self._first_request, None
            return first
        if self._reads is None:
            self._reads = asyncio.Queue()
        if self._call.cancelled:
            return None
        self._call.read()
        self._flush()
        return await self._reads.get()

    async def write(self, message: Any) -> None:
        """Send one response message; returns once grpc++ has taken it (flow control)."""
        if self._finished or self._call.cancelled:
            raise asyncio.CancelledError()
        self._write_done = asyncio.get_running_loop().create_future()
        self._call.write(message if self._serialize is None else self._serialize(message))
        self._flush()
        await self._write_done

    # --- events from the front end ---
    def _on_event(self, kind: int, payload: bytes | None, ok: bool) -> None:
        if kind == _READ and self._reads is not None:
            self._reads.put_nowait(payload)
        elif kind == _WRITE_DONE and self._write_done is not None and not self._write_done.done():
            self._write_done.set_result(ok)
        elif kind == _CANCELLED:
            if self._reads is not None:
                self._reads.put_nowait(None)
            if self._task is not None and not self._finished:
                self._task.cancel()

    def _finish(self, code: grpc.StatusCode, details: str, payload: bytes | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        for key, value in self._trailing:
            self._call.add_trailing_metadata(key, _text(value))
        self._call.finish(code.value[0], details, payload)
        self._flush()
        for callback in self._done_callbacks:
            callback(self)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class NativeServer:
    """grpc.aio.Server's interface (the parts recserve uses) over the grpc++ front end."""

    def __init__(
        self,
        options: Sequence[tuple[str, int | str]] = (),
        maximum_concurrent_rpcs: int | None = None,
    ) -> None:
        self._frontend = _native.Frontend()
        for key, value in options:
            if isinstance(value, int):
                self._frontend.set_int_option(key, value)
            else:
                self._frontend.set_string_option(key, str(value))
        self._limit = maximum_concurrent_rpcs
        self._generic_handlers: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._handler_cache: dict[str, grpc.RpcMethodHandler] = {}
        self._active: dict[int, NativeServicerContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._flush_scheduled = False

    # --- registration ---
    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic_handlers.extend(handlers)
        self._handler_cache.clear()

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler
        self._handler_cache.clear()

    def add_insecure_port(self, address: str) -> int:
        """Add `address`; grpc++ binds it in `start()`, which returns the bound ports."""
        return self._frontend.add_insecure_port(address)

    def add_tls_port(
        self, address: str, key_file: str, cert_file: str, client_ca_file: str, refresh_interval_s: int
    ) -> int:
        """Add `address` with TLS (mutual TLS when `client_ca_file` is not empty); bound in `start()`.

        grpc++ reads the files by these paths now and every `refresh_interval_s` seconds: changed files
        reach new connections; open ones keep their certificate (`recserve.server.frontend.tls`).
        """
        return self._frontend.add_tls_port(address, key_file, cert_file, client_ca_file, refresh_interval_s)

    def set_admission(self, methods: Iterable[str], max_wait_ns: int, deadline_aware: bool) -> None:
        """Refuse overload on grpc's threads, before Python hears of the call (native/frontend.cc).

        A call of `methods` whose expected wait (the calls let in beyond what executes at once, times the
        published drain time per request, plus the event loop's lag) passes `max_wait_ns` (0: no bound) or,
        if `deadline_aware`, its deadline, is RESOURCE_EXHAUSTED.

        Under overload most calls are refused; doing that on the event loop would eat the cores the
        accepted calls need, while new calls wait unseen in the event queue.
        """
        self._frontend.set_admission(list(methods), max_wait_ns, deadline_aware)

    def publish_costs(self, drain_ns: int, batch_ns: int, parallel_rows: int) -> None:
        """The batcher's cost model, for `set_admission`'s check.

        Queue drain time per request at full batches, the time of a batch of one, and how many requests
        execute at once.
        """
        self._frontend.publish_costs(drain_ns, batch_ns, parallel_rows)

    def admission_refused(self) -> dict[tuple[str, str], int]:
        """Calls refused by `set_admission`'s check so far, by (`/package.Service/Method`, status name)."""
        return {(method, code): count for method, code, count in self._frontend.admission_refused()}

    # --- lifecycle ---
    async def start(self) -> list[int]:
        """Bind every added address and start serving; the bound ports, in the order they were added."""
        self._loop = asyncio.get_running_loop()
        ports = self._frontend.start()
        self._loop.add_reader(self._frontend.event_fd(), self._pump)
        return ports

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls; calls in flight get `grace` seconds (None: none), then are cancelled."""
        if self._stopped or self._loop is None:
            return
        self._stopped = True
        self._frontend.flush()
        await self._loop.run_in_executor(None, self._frontend.shutdown, grace or 0.0)
        self._pump()
        self._loop.remove_reader(self._frontend.event_fd())

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        while not self._stopped:
            await asyncio.sleep(0.1 if timeout is None else min(0.1, timeout))
        return True

    # --- calls ---
    def _request_flush(self) -> None:
        """Start queued operations once the callbacks ready now have run: one wake-up per burst."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._frontend.flush()

    def _pump(self) -> None:
        active = self._active
        for kind, call, payload, ok in self._frontend.drain():
            if kind == _NEW:
                try:
                    self._begin(call, payload)
                except Exception:  # noqa: BLE001 - one call's failure must not lose the rest of the drain
                    logger.exception("could not start %s", call.method)
                    call.finish(
                        grpc.StatusCode.INTERNAL.value[0], "internal server error; see the server log", None
                    )
                    self._request_flush()
                continue
            context = active.get(call.id)
            if context is not None:
                context._on_event(kind, payload, ok)
            elif kind == _CANCELLED:
                call.finish(grpc.StatusCode.CANCELLED.value[0], "cancelled", None)
                self._request_flush()

    def _handler(self, method: str, context: NativeServicerContext) -> grpc.RpcMethodHandler | None:
        try:
            return self._handler_cache[method]
        except KeyError:
            pass
        handler = self._registered.get(method)
        if handler is None:
            details = _HandlerCallDetails(method, context.invocation_metadata())
            for generic in self._generic_handlers:
                handler = generic.service(details)
                if handler is not None:
                    break
        if handler is not None:  # unknown names are not cached: clients choose them
            self._handler_cache[method] = handler
        return handler

    def _begin(self, call: Any, first_request: bytes | None) -> None:
        context = NativeServicerContext(call, first_request, self._request_flush)
        handler = self._handler(call.method, context)
        if handler is None:
            context._finish(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if self._limit is not None and len(self._active) >= self._limit:
            context._finish(grpc.StatusCode.RESOURCE_EXHAUSTED, CONCURRENCY_LIMIT_MESSAGE)
            return
        self._active[call.id] = context
        task = self._loop.create_task(self._run(handler, context))  # type: ignore[union-attr]
        task.add_done_callback(lambda _: self._release(context))
        context._task = task

    def _release(self, context: NativeServicerContext) -> None:
        """Every call is finished exactly once, even when its task was cancelled before it ever ran."""
        self._active.pop(context._call.id, None)
        context._finish(grpc.StatusCode.CANCELLED, "the call was cancelled")

    async def _run(self, handler: grpc.RpcMethodHandler, context: NativeServicerContext) -> None:
        try:
            if handler.request_streaming:
                request: Any = _request_stream(handler, context)
            else:
                request = _single_request(handler, context)
            if handler.response_streaming:
                await _stream_responses(handler, request, context)
                context._finish(context._code or grpc.StatusCode.OK, context._details or "")
            else:
                behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
                response = await behavior(request, context)
                _finish_unary(handler, response, context)
        except grpc.aio.AbortError:
            context._finish(context._code or grpc.StatusCode.UNKNOWN, context._details or "")
        except _RequestError as error:
            context._finish(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except asyncio.CancelledError:
            context._finish(grpc.StatusCode.CANCELLED, "the call was cancelled")
        except Exception as error:
            logger.exception("unexpected error in %s", context._call.method)
            context._finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(error).__name__}: {error}")


class _RequestError(Exception):
    """The request bytes could not be turned into the handler's request."""


def _deserialize(handler: grpc.RpcMethodHandler, raw: bytes) -> Any:
    if handler.request_deserializer is None:
        return raw
    try:
        return handler.request_deserializer(raw)
    except Exception as error:
        raise _RequestError(f"could not decode the request message: {error}") from error


def _single_request(handler: grpc.RpcMethodHandler, context: NativeServicerContext) -> Any:
    raw, context._first_request = context._first_request, None
    if raw is None:
        raise _RequestError("the call ended before its request message arrived")
    return _deserialize(handler, raw)


async def _request_stream(
    handler: grpc.RpcMethodHandler, context: NativeServicerContext
) -> AsyncIterator[Any]:
    while True:
        raw = await context.read()
        if raw is None:
            return
        yield _deserialize(handler, raw)


async def _stream_responses(
    handler: grpc.RpcMethodHandler, request: Any, context: NativeServicerContext
) -> None:
    behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
    context._serialize = handler.response_serializer
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for message in result:
            await context.write(message)
    else:
        await result  # the behavior writes with context.write itself


def _finish_unary(handler: grpc.RpcMethodHandler, response: Any, context: NativeServicerContext) -> None:
    code = context._code or grpc.StatusCode.OK
    if code != grpc.StatusCode.OK:
        context._finish(code, context._details or "")
        return
    serialize = handler.response_serializer
    payload = response if serialize is None else serialize(response)
    context._finish(grpc.StatusCode.OK, context._details or "", payload)
