"""`recserve serve` as a real process: starts, serves through health and the API, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from client import RecommenderClient

LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


def wait_for_port(process: subprocess.Popen, log: Path, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text())
        if match:
            return int(match.group(1))
        assert process.poll() is None, f"server exited early:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"server did not report its port:\n{log.read_text()}")


def test_serve_answers_then_exits_zero_on_sigterm(model_repository: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--model-repository",
        str(model_repository),
    ]
    env = {**os.environ, "RECSERVE_WARMUP_ROUNDS": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        port = wait_for_port(process, log)
        with RecommenderClient(f"127.0.0.1:{port}") as client:
            client.wait_until_serving(120)
            assert len(client.recommend("user-3").items) == 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "version 1 ready" in text and "max_batch_size=64" in text
    assert "stopped" in text
