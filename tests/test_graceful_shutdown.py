"""SIGTERM under load: health flips at once, accepted requests all succeed, the process exits 0.

The clients behave like callers behind a load balancer: they keep sending during the drain period (the
balancer has not yet seen NOT_SERVING) and stop sending new calls when it ends (the endpoint is gone);
calls already sent must all succeed. Calls sent after the drain are refused without being accepted.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recserve.client import RecommenderClient
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc
from tests.serving import ServerProcess

WORKERS = 48
DRAIN_S = 3.0


async def hammer(address: str, stop: asyncio.Event, outcomes: list[tuple[float, str]]) -> None:
    """Call Recommend in a loop until `stop` or the server goes away; record (time, status name)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        n = 0
        while not stop.is_set():  # checked before each new call: in-flight calls always complete
            n += 1
            try:
                await stub.Recommend(pb.RecommendRequest(user_id=f"user-{n % 1500}"), timeout=20)
                outcomes.append((time.monotonic(), "OK"))
            except grpc.aio.AioRpcError as error:
                outcomes.append((time.monotonic(), error.code().name))
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return  # refused: the server no longer accepts; nothing was accepted and lost


async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status


async def run_scenario(process: subprocess.Popen, address: str) -> tuple[list[tuple[float, str]], float, int]:
    stop = asyncio.Event()
    outcomes: list[tuple[float, str]] = []
    workers = [asyncio.ensure_future(hammer(address, stop, outcomes)) for _ in range(WORKERS)]
    await asyncio.sleep(2.0)  # steady load, batches forming
    signalled_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    status_during_drain = await health_status(address)
    await asyncio.sleep(DRAIN_S - 1.5)
    stop.set()  # the load balancer has taken the endpoint out: no new calls
    await asyncio.gather(*workers)
    return outcomes, signalled_at, status_during_drain


def test_sigterm_under_load_fails_no_accepted_request(model_repository: Path, tmp_path: Path) -> None:
    drain = {"RECSERVE_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S), "RECSERVE_SHUTDOWN_GRACE_SECONDS": "20"}
    with ServerProcess(model_repository, tmp_path / "server.log", **drain) as server:
        outcomes, signalled_at, status_during_drain = asyncio.run(
            run_scenario(server.process, server.address)
        )
        assert server.process.wait(timeout=30) == 0, server.log.read_text()
    assert status_during_drain == health_pb2.HealthCheckResponse.NOT_SERVING
    failed = [status for _, status in outcomes if status != "OK"]
    assert not failed, f"requests failed: {failed[:5]} ({len(failed)} in all)\n{server.log.read_text()}"
    served_after_signal = sum(1 for at, status in outcomes if status == "OK" and at > signalled_at)
    assert served_after_signal > WORKERS, "requests sent during the drain should be served"
    assert "stopped" in server.log.read_text()


def test_calls_after_shutdown_are_refused_with_unavailable(model_repository: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repository, tmp_path / "server.log") as server:
        with RecommenderClient(server.address) as client:
            assert server.terminate_and_wait() == 0, server.log.read_text()
            with pytest.raises(grpc.RpcError) as caught:
                client.recommend("user-3", timeout_s=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_while_a_version_loads_stops_cleanly(
    model_repository: Path, version_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "models" / "recommender"
    model_dir.mkdir(parents=True)
    shutil.copy(version_dir.parent / "config.yaml", model_dir / "config.yaml")
    (model_dir / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
    poll = {"RECSERVE_MODEL_CONTROL_MODE": "poll", "RECSERVE_REPOSITORY_POLL_SECONDS": "0.1"}
    with ServerProcess(model_dir.parent, tmp_path / "server.log", **poll) as server:
        (model_dir / "2").symlink_to(version_dir.resolve(), target_is_directory=True)
        deadline = time.monotonic() + 60
        while "version 2 loading" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log.read_text()
    log = server.log.read_text()
    assert "stopped" in log
    assert "Traceback" not in log, log
