"""`recserve serve` as a real process: starts, serves through health and the API, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recserve.client import RecommenderClient
from recserve.server.frontend import native_available
from tests.serving import ServerProcess


def test_serve_answers_then_exits_zero_on_sigterm(model_repository: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repository, tmp_path / "server.log") as server:
        with RecommenderClient(server.address) as client:
            assert len(client.recommend("user-3").items) == 10
        assert server.terminate_and_wait() == 0, server.log.read_text()
    text = server.log.read_text()
    assert "version 1 ready" in text and "max_batch_size=64" in text
    assert "stopped" in text


def test_json_logs_metrics_port_and_startup_summary(model_repository: Path, tmp_path: Path) -> None:
    import json
    import re
    import urllib.request

    log = tmp_path / "server.log"
    with ServerProcess(model_repository, log, RECSERVE_LOG_FORMAT="json") as server:
        with RecommenderClient(server.address) as client:
            client.recommend("user-3")
        port = int(re.search(r"metrics on http://[\d.]+:(\d+)/metrics", log.read_text()).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b'recserve_request_success_total{model="recommender",version="1"}' in response.read()
        assert server.terminate_and_wait() == 0, log.read_text()
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    messages = "\n".join(entry["message"] for entry in entries)
    assert "listening on 127.0.0.1:" in messages and "metrics on http://" in messages
    assert "tracing off" in messages
    assert re.search(r"version 1 ready .* items, dim 32, index \d+ trees", messages)
    assert "max_batch_size=64" in messages
    ready = next(i for i, entry in enumerate(entries) if "ready in" in entry["message"])
    assert "SIGTERM" in entries[ready + 1]["message"], "nothing is logged per request at INFO"


@pytest.mark.parametrize(
    ("flags", "port_flag", "what"),
    [
        (["--frontend", "native"], "--grpc-port", "gRPC"),
        (["--frontend", "aio"], "--grpc-port", "gRPC"),
        ([], "--metrics-port", "metrics"),
    ],
)
def test_a_port_in_use_is_one_line_and_exit_code_2(
    model_repository: Path, tmp_path: Path, flags: list[str], port_flag: str, what: str
) -> None:
    if "native" in flags and not native_available():
        assert not os.environ.get("CI"), "under CI the grpc++ front end must be built"
        pytest.skip("grpc++ not installed here")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ports = {"--grpc-port": "0", "--metrics-port": "0", port_flag: str(port)}
        command = [sys.executable, "-m", "recserve", "serve", "--grpc-host", "127.0.0.1",
                   "--model-repository", str(model_repository), "--state-dir", str(tmp_path / "state"),
                   *flags]  # fmt: skip
        for flag, value in ports.items():
            command += [flag, value]
        env = {**os.environ, "RECSERVE_METRICS_HOST": "127.0.0.1"}
        finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert finished.returncode == 2, finished.stderr
    assert f"error: cannot bind the {what} port 127.0.0.1:{port}" in finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
