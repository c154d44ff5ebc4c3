"""Test helpers: run a real recserve server in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from server.app import RunningServer, load_and_serve_model, start_server, stop_server
from server.settings import ServerSettings

T = TypeVar("T")


class ServerThread:
    """A real gRPC server on a free port, serving a built model, driven from synchronous test code."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings.model_copy(update={"grpc_host": "127.0.0.1", "grpc_port": 0})
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.running: RunningServer | None = None

    @property
    def address(self) -> str:
        """HOST:PORT to dial."""
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def start(self, load_model: bool = True) -> ServerThread:
        """Bind, start, and (by default) load the model and wait until SERVING."""
        self._thread.start()
        self.running = self.run(start_server(self.settings))
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
