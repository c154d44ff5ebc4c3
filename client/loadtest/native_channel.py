"""The load loop over grpc++: a channel with grpc.aio's interface, and a closed loop run in C++.

The transport is the extension `recserve.native._loadtest` (native/loadtest.cc).

`NativeChannel`: Python starts each call and awaits a future; grpc++ runs the call on its own threads and
the event loop takes every completion since it last looked in one `drain()`. `closed_loop`: when every
request is fixed bytes and calls are not paced, the whole loop runs in C++ and Python only reads the
results at the end. Either costs a fraction of grpc.aio's client CPU, which matters when the generator shares
the cores with the server it measures. Plaintext, TLS and mutual TLS (grpc::SslCredentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import grpc
import grpc.aio

from recserve.client.loadtest.outcomes import status_code
from recserve.native import load_extension

_native = load_extension("loadtest")

_NO_METADATA = grpc.aio.Metadata()


def closed_loop(
    channels: Sequence[NativeChannel],
    method: str,
    payloads: Sequence[bytes],
    metadata: Sequence[tuple[str, str]],
    concurrency: int,
    total: int,
    timeout_s: float | None,
    rps: float = 0.0,
) -> Any:
    """A `_native.ClosedLoop` of `concurrency` workers over `channels`, request N sending payloads[N % len].

    With `rps` > 0 request N goes out no earlier than start + N / rps (an open loop, given workers enough).

    `run()` blocks (without the GIL) until `total` calls (0 = no limit) were made or `stop(mode)` is
    called; `take_records()` returns (end ns, latency ns, code, details) per call, code -1 for calls cut
    off by stop("close").
    """
    return _native.ClosedLoop(
        [channel._channel for channel in channels],
        method,
        list(payloads),
        list(metadata),
        concurrency,
        total,
        timeout_s,
        rps,
    )


class NativeChannel:
    """One connection to `target`, for unary calls with raw bytes in and out.

    `tls`: None for plaintext, else the PEM bytes of (root certificates, client key, client certificate
    chain), each empty where not given (no roots: the system's; no key and chain: no client certificate).
    """

    def __init__(
        self,
        target: str,
        options: Sequence[tuple[str, Any]] = (),
        tls: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        int_options = [(key, int(value)) for key, value in options if isinstance(value, int)]
        string_options = [(key, str(value)) for key, value in options if not isinstance(value, int)]
        root, key, chain = tls if tls is not None else (b"", b"", b"")
        self._channel = _native.Channel(
            target, int_options, string_options, tls is not None, root, key, chain
        )
        self._pending: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._next_tag = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def channel_ready(self) -> None:
        """Connect; returns once the connection is ready (cancel or time out the await to give up)."""
        loop = self._attach()
        while not await loop.run_in_executor(None, self._channel.wait_ready, 0.25):
            pass

    def unary_unary(self, method: str, request_serializer: None = None, response_deserializer: None = None):  # noqa: ANN201
        """A callable `(payload, timeout=None, metadata=None)` that awaits one call of `method`."""
        start = self._channel.start
        cancel = self._channel.cancel
        pending = self._pending

        async def call(payload: bytes, timeout: float | None = None, metadata: Any = None) -> None:
            tag = self._next_tag = self._next_tag + 1
            future = self._attach().create_future()
            pending[tag] = future
            start(tag, method, payload, timeout, list(metadata) if metadata else [])
            try:
                code, details = await future
            except asyncio.CancelledError:
                pending.pop(tag, None)
                cancel(tag)
                raise
            if code:
                status = status_code(code)
                raise grpc.aio.AioRpcError(status, _NO_METADATA, _NO_METADATA, details)

        return call

    def close(self) -> Awaitable[None]:
        """Cancel what is in flight and release the connection."""
        return self._close()

    async def _close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._loop is not None:
            self._loop.remove_reader(self._channel.event_fd())
        await asyncio.get_running_loop().run_in_executor(None, self._channel.close)

    def _attach(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._channel.event_fd(), self._pump)
        return self._loop

    def _pump(self) -> None:
        pending = self._pending
        for tag, code, details in self._channel.drain():
            future = pending.pop(tag, None)
            if future is not None and not future.done():
                future.set_result((code, details))
