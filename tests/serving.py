"""Test helpers: run a real recserve server in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import faulthandler
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.sdk.trace import TracerProvider

from recserve.client import RecommenderClient
from recserve.server.app import RunningServer, load_and_serve_model, start_server, stop_server
from recserve.server.settings import ServerSettings
from recserve.server.state.log import LOCK_FILE

T = TypeVar("T")


class ServerThread:
    """A real gRPC server on a free port, serving a built model, driven from synchronous test code."""

    def __init__(self, settings: ServerSettings, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer_provider = tracer_provider
        self.settings = settings.model_copy(
            update={"grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0}
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.running: RunningServer | None = None

    @property
    def address(self) -> str:
        """HOST:PORT to dial."""
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint's URL."""
        assert self.running is not None and self.running.metrics is not None
        return f"http://127.0.0.1:{self.running.metrics.port}/metrics"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        """Run a coroutine on the server's loop and wait for its result; on a hang, say where it hangs."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            print_stacks(self.loop)
            raise

    def start(self, load_model: bool = True) -> ServerThread:
        """Bind, start, and (by default) load the model and wait until SERVING."""
        self.settings = with_a_free_state_dir(self.settings)
        self._thread.start()
        self.running = self.run(start_server(self.settings, self.tracer_provider))
        if load_model:
            self.run(load_and_serve_model(self.running))
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop the server and its loop."""
        if self.running is not None:
            self.run(stop_server(self.running, grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def with_a_free_state_dir(settings: ServerSettings) -> ServerSettings:
    """`settings`, or a copy with a fresh state directory if another server holds theirs.

    Test servers start from the session's settings, and a state directory admits one server at a time
    (`state_dir/LOCK`); a test that means to reopen a directory gives its server its own.
    """
    state = settings.state
    if state.backend != "memory" or not _locked(state.state_dir / LOCK_FILE):
        return settings
    fresh = Path(tempfile.mkdtemp(prefix="state-", dir=state.state_dir.parent))
    return settings.model_copy(update={"state": state.model_copy(update={"state_dir": fresh})})


def _locked(path: Path) -> bool:
    if not path.exists():
        return False
    with path.open("rb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def print_stacks(loop: asyncio.AbstractEventLoop) -> None:
    """Every task of `loop` and every thread's stack, to stderr: what a hung test was waiting for."""
    for task in asyncio.all_tasks(loop):
        print(f"{task!r} awaits:", file=sys.stderr)
        awaiting = task.get_coro()
        while awaiting is not None:  # down the chain of awaits to what it is waiting for
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=sys.stderr)
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    faulthandler.dump_traceback(file=sys.stderr)


@contextlib.contextmanager
def broken_ranker(server: ServerThread, message: str = "ranker exploded") -> Iterator[None]:
    """Make the running server's ranker raise RuntimeError(message) until the block ends."""
    model = server.running.service.pipeline.model
    real_ranker = model.ranker

    def explode(**inputs: object) -> None:
        raise RuntimeError(message)

    model.ranker = explode
    try:
        yield
    finally:
        model.ranker = real_ranker


LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


class ServerProcess:
    """`recserve serve` as a child process on a free loopback port, SERVING once entered; killed on exit."""

    def __init__(self, model_repository: Path, log: Path, **environment: str) -> None:
        self.log = log
        self.command = [
            sys.executable,
            "-m",
            "recserve",
            "serve",
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--model-repository",
            str(model_repository),
        ]
        # Live state beside the log, never in the working directory.
        state = {"RECSERVE_STATE__STATE_DIR": str(log.parent / f"{log.stem}-state")}
        self.env = {**os.environ, "RECSERVE_WARMUP_ROUNDS": "1", **state, **environment}
        self.process: subprocess.Popen | None = None
        self.address = ""

    def __enter__(self) -> ServerProcess:
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(self.command, stdout=sink, stderr=subprocess.STDOUT, env=self.env)
        self.address = f"127.0.0.1:{self._wait_for_port()}"
        with RecommenderClient(self.address) as client:
            client.wait_until_serving(120)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate_and_wait(self, timeout_s: float = 30) -> int:
        """SIGTERM, then the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def _wait_for_port(self, timeout_s: float = 60) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log.read_text())
            if match:
                return int(match.group(1))
            assert self.process.poll() is None, f"server exited early:\n{self.log.read_text()}"
            time.sleep(0.1)
        raise AssertionError(f"server did not report its port:\n{self.log.read_text()}")
