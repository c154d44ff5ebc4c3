"""`recserve serve` as a real process: starts, serves through health and the API, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc

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


def wait_until_serving(channel: grpc.Channel, timeout_s: float = 120) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)
    raise AssertionError("server never became SERVING")


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
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_until_serving(channel)
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            assert len(stub.Recommend(pb.RecommendRequest(user_id="user-3"), timeout=10).items) == 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "version 1 ready" in text and "max_batch_size=64" in text
    assert "stopped" in text
