"""A real `redis-server` on a free loopback port, for the tests of the shared state backend.

Redis cannot bind port 0 and report the port it got, so a free port is picked and the start is retried on
another one if something took it meanwhile. The server can be killed (SIGKILL) and started again on the same
port and data directory, as a failing Redis would be.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_ATTEMPTS = 5


def redis_server_binary() -> str:
    """The path of redis-server; under CI its absence fails the test, elsewhere it skips it."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not installed (as root, make test installs it: apt-get install redis-server)"
            )
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One redis-server process with its data in `directory`; AOF on, so a restart keeps what it stored."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = redis_server_binary()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on the port it had, or on a free one the first time."""
        for _ in range(START_ATTEMPTS):
            port = self.port or free_port()
            if self._start_on(port):
                self.port = port
                return self
            if self.port:
                break
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def _start_on(self, port: int) -> bool:
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._answers(port):
                return True
            time.sleep(0.02)
        self.kill()
        return False

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged Redis."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Stop for good at the end of a test."""
        self.kill()
