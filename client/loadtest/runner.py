"""The load loop: `concurrency` worker coroutines over `connections` grpc.aio channels, one call each.

The hot path is kept to what a call needs: claim a request number, look up (or render) pre-serialized bytes,
await a raw unary_unary multicallable (no serializers: bytes go out and come back untouched), and append one
tuple. Clocks are `perf_counter_ns`; wall-clock timestamps are derived from one offset taken at the start.
Requests are numbered from 0 in the order they are claimed, so `--rps` is a schedule (request N goes out no
earlier than start + N/rps) and the total is exact however the work is spread over the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from recserve.client.loadtest.options import NS_PER_S, LoadtestOptions, SetupError
from recserve.client.loadtest.outcomes import (
    CLOSING_ERROR,
    CallResult,
    error_text,
    native_result,
    status_name,
)
from recserve.client.loadtest.templates import RequestPlan

try:  # optional: a faster event loop when installed
    import uvloop  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

T = TypeVar("T")

END_NORMAL, END_TIMEOUT, END_CANCEL = "normal", "timeout", "cancel"


@dataclass(frozen=True)
class RunResult:
    """Every finished call, in completion order, and how the run went."""

    results: list[CallResult]
    total_ns: int
    """Wall time of the run: from the first call to the last result."""
    end_reason: str
    """normal (all requests done), timeout (--duration reached) or cancel (interrupted)."""
    clock_offset_ns: int
    """Add to a perf_counter_ns value to get Unix time in ns."""


class LoadRunner:
    """Runs one load test. Create it and await `run()` inside an event loop; `stop()` may end it early.

    Args:
        options: the run's options (host, concurrency, connections, rate, duration, timeouts).
        method_path: "/pkg.Service/Method".
        plan: what each request sends.
    """

    def __init__(self, options: LoadtestOptions, method_path: str, plan: RequestPlan) -> None:
        self._options = options
        self._method_path = method_path
        self._plan = plan
        self._total = options.effective_total
        self._timeout_s = options.timeout_ns / NS_PER_S if options.timeout_ns else None
        self._interval_ns = NS_PER_S / options.rps if options.rps else 0.0
        self._results: list[CallResult] = []
        self._issued = 0
        self._start_ns = 0
        self._stopping = False
        self._count_cancelled = False
        self._end_reason = END_NORMAL
        self._tasks: list[asyncio.Task[None]] = []
        self._native_loop: Any = None  # the C++ closed loop, when it runs this test
        self._stop_event = asyncio.Event()  # binds to the running loop when first awaited

    @property
    def runs_in_native_loop(self) -> bool:
        """Whether this run's calls were made by the C++ loop (fixed requests, grpc++)."""
        return self._native_loop is not None

    def stop(self, reason: str) -> None:
        """End the run: no new calls; calls in flight are cancelled (and counted) or awaited per mode."""
        if self._stopping:
            return
        self._stopping, self._end_reason = True, reason
        self._stop_event.set()
        if self._native_loop is not None:
            self._native_loop.stop(self._options.duration_stop)
        if self._options.duration_stop != "wait":
            self._count_cancelled = self._options.duration_stop == "close"
            for task in self._tasks:
                task.cancel()

    async def run(self) -> RunResult:
        """Connect, run the workers until done or stopped, and return every result.

        Raises:
            SetupError: the connections are not ready within --connect-timeout, or a request could not
                be built from the data (the run is stopped then).
        """
        channels = await self._connect()
        loop = asyncio.get_running_loop()
        try:
            with _interrupt_stops(loop, self):
                static = self._plan.static_requests()
                if static is not None and use_native_transport(self._options):
                    return await self._run_native_loop(loop, channels, *static)
                return await self._run_workers(loop, channels)
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))

    async def _connect(self) -> list[grpc.aio.Channel]:
        options = self._options
        channels = [_open_channel(options) for _ in range(options.connections)]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(channel.channel_ready() for channel in channels)),
                options.connect_timeout_ns / NS_PER_S,
            )
        except asyncio.TimeoutError as error:
            await asyncio.gather(*(channel.close() for channel in channels))
            seconds = options.connect_timeout_ns / NS_PER_S
            raise SetupError(f"cannot connect to {options.host} within {seconds:g}s") from error
        return channels

    async def _run_workers(
        self, loop: asyncio.AbstractEventLoop, channels: list[grpc.aio.Channel]
    ) -> RunResult:
        options = self._options
        calls = [
            channel.unary_unary(self._method_path, request_serializer=None, response_deserializer=None)
            for channel in channels
        ]
        prefix = f"{options.name}:" if options.name else ""
        clock_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._start_ns = time.perf_counter_ns()
        self._tasks = [
            loop.create_task(self._work(calls[i % len(calls)], f"{prefix}g{i}c{i % len(calls)}"))
            for i in range(options.concurrency)
        ]
        for task in self._tasks:
            task.add_done_callback(self._stop_on_failure)
        with self._duration_limit(loop):
            outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
            total_ns = time.perf_counter_ns() - self._start_ns
        failures = [
            o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)
        ]
        if failures:
            raise SetupError(f"could not build a request: {failures[0]}") from failures[0]
        return RunResult(self._results, total_ns, self._end_reason, clock_offset_ns)

    async def _run_native_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        channels: list[grpc.aio.Channel],
        payloads: list[bytes],
        metadata: tuple[tuple[str, str], ...],
    ) -> RunResult:
        """The whole loop in C++ (fixed payloads; paced by --rps if given): no Python per call."""
        from recserve.client.loadtest.native_channel import closed_loop

        options = self._options
        self._native_loop = closed_loop(
            channels,  # type: ignore[arg-type]  # NativeChannels: use_native_transport said so
            self._method_path,
            payloads,
            metadata,
            options.concurrency,
            self._total,
            self._timeout_s,
            float(options.rps),
        )
        if self._stopping:  # interrupted while connecting
            self._native_loop.stop(options.duration_stop)
        clock_offset_ns = time.time_ns() - time.perf_counter_ns()
        with self._duration_limit(loop):
            started_ns, ended_ns = await loop.run_in_executor(None, self._native_loop.run)
        results = [native_result(record) for record in self._native_loop.take_records()]
        return RunResult(results, ended_ns - started_ns, self._end_reason, clock_offset_ns)

    @contextlib.contextmanager
    def _duration_limit(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """With --duration, stop the run when the time is up; the timer goes if the run ends first."""
        duration_ns = self._options.duration_ns
        timer = loop.call_later(duration_ns / NS_PER_S, self.stop, END_TIMEOUT) if duration_ns else None
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()

    def _stop_on_failure(self, task: asyncio.Task[None]) -> None:
        """A worker that failed outside a call (rendering or encoding its request) ends the run."""
        if not task.cancelled() and task.exception() is not None:
            self.stop(END_CANCEL)

    def _claim(self) -> int:
        """The next request number, or -1 when the run is over."""
        if self._stopping or self._issued >= self._total:
            return -1
        self._issued += 1
        return self._issued - 1

    async def _work(self, call: grpc.aio.UnaryUnaryMultiCallable, worker_id: str) -> None:
        build, record, timeout_s = self._plan.build, self._results.append, self._timeout_s
        paced = self._interval_ns > 0
        while (number := self._claim()) >= 0:
            if paced and not await self._pace(number):
                return
            payload, metadata = build(number, worker_id)
            start = time.perf_counter_ns()
            try:
                await call(payload, timeout=timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                end = time.perf_counter_ns()
                record((end, end - start, status_name(error.code()), error_text(error)))
                continue
            except asyncio.CancelledError:
                if self._count_cancelled:
                    end = time.perf_counter_ns()
                    record((end, end - start, "Canceled", CLOSING_ERROR))
                raise
            end = time.perf_counter_ns()
            record((end, end - start, "OK", ""))

    async def _pace(self, number: int) -> bool:
        """Wait for request `number`'s slot in the --rps schedule; False when the run stopped meanwhile."""
        delay_ns = self._start_ns + number * self._interval_ns - time.perf_counter_ns()
        if delay_ns > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay_ns / NS_PER_S)
        return not self._stopping


def _open_channel(options: LoadtestOptions) -> grpc.aio.Channel:
    if use_native_transport(options):
        from recserve.client.loadtest.native_channel import NativeChannel

        tls = None if options.insecure else options.tls_files()
        return NativeChannel(options.host, options.channel_options(), tls)  # type: ignore[return-value]
    if options.insecure:
        return grpc.aio.insecure_channel(options.host, options.channel_options())
    return grpc.aio.secure_channel(options.host, options.channel_credentials(), options.channel_options())


def native_transport_available() -> bool:
    """Whether the grpc++ transport is built and loads."""
    try:
        from recserve.client.loadtest import native_channel  # noqa: F401
    except ImportError:
        return False
    return True


def use_native_transport(options: LoadtestOptions) -> bool:
    """Whether calls go through grpc++: --transport native, or auto when it is built.

    Raises:
        SetupError: --transport native where the grpc++ transport is not built.
    """
    if options.transport == "aio":
        return False
    if options.transport == "native":
        if not native_transport_available():
            raise SetupError(
                "--transport native: the grpc++ transport is not built "
                "(install libgrpc++-dev and reinstall recserve), or use --transport aio"
            )
        return True
    return native_transport_available()


@contextlib.contextmanager
def _interrupt_stops(loop: asyncio.AbstractEventLoop, runner: LoadRunner) -> Iterator[None]:
    """Ctrl-C ends the run with endReason "cancel" and still reports, as in ghz (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        loop.add_signal_handler(signal.SIGINT, runner.stop, END_CANCEL)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - platforms without signal handlers
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def run_in_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop (uvloop's when installed)."""
    if uvloop is not None:
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def run_load(options: LoadtestOptions, method_path: str, plan: RequestPlan) -> RunResult:
    """Run the load test to the end and return its results (blocking).

    Raises:
        SetupError: the server cannot be reached, or a request could not be built.
    """
    return run_in_new_loop(LoadRunner(options, method_path, plan).run())
