"""`recserve serve --workers 2` as users run it: one port, same answers, one /metrics, restarts, drain."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recserve.client import RecommenderClient
from tests.redis_server import RedisServer
from tests.serving import ServerProcess
from tests.tokens import Tokens, bearer

CONNECTIONS = 24  # each a new TCP connection; all landing on one of 2 workers: 2^-23


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def two_workers(redis: RedisServer, tokens: Tokens, **environment: str) -> dict[str, str]:
    return {
        "RECSERVE_WORKERS": "2",
        "RECSERVE_STATE__BACKEND": "redis",
        "RECSERVE_STATE__REDIS_URL": redis.url,
        "RECSERVE_CATALOG_ENABLED": "true",
        "RECSERVE_AUTH__TOKENS_FILE": str(tokens.file),
        **environment,
    }


@pytest.fixture(scope="module")
def workers(
    model_repository: Path, redis: RedisServer, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("workers") / "server.log"
    with ServerProcess(model_repository, log, **two_workers(redis, tokens)) as server:
        every_worker_ready(server)
        yield server


def metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = int(re.search(r"metrics on http://[\d.]+:(\d+)/metrics", server.log.read_text()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextlib.contextmanager
def fresh_workers(
    model_repository: Path, redis: RedisServer, tokens: Tokens, tmp_path: Path, drain_s: float
) -> Iterator[ServerProcess]:
    """Two workers of their own, for tests that stop them: every one serving, draining `drain_s`."""
    environment = two_workers(redis, tokens, RECSERVE_SHUTDOWN_DRAIN_SECONDS=str(drain_s))
    with ServerProcess(model_repository, tmp_path / "server.log", **environment) as server:
        every_worker_ready(server)
        yield server


def every_worker_ready(server: ServerProcess) -> None:
    """Health answers once one worker serves; the others may still be loading their model."""
    eventually(lambda: metrics(server)[("recserve_workers_ready", ())] == 2, within_s=120)


def eventually(check: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def worker_calls(server: ServerProcess) -> dict[str, float]:
    return {
        dict(labels)["worker"]: value
        for (name, labels), value in metrics(server).items()
        if name == "recserve_worker_rpc_total"
    }


def answers_on_fresh_connections(address: str, user_id: str) -> set[tuple[str, ...]]:
    answers = set()
    for _ in range(CONNECTIONS):
        with RecommenderClient(address, timeout_s=10) as client:
            answers.add(tuple(item.item_id for item in client.recommend(user_id).items))
    return answers


def worker_pids(server: ServerProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", server.log.read_text())]


def refused(*flags: str) -> subprocess.CompletedProcess[str]:
    """`recserve serve` with `flags`, expected to refuse its settings at once."""
    command = [sys.executable, "-m", "recserve", "serve", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_more_workers_than_one_need_the_redis_backend(model_repository: Path) -> None:
    finished = refused("--workers", "2", "--model-repository", str(model_repository))
    assert finished.returncode == 2
    assert "workers=2 needs state.backend redis" in finished.stderr


def test_workers_that_cannot_start_stop_the_supervisor_with_exit_code_2(
    redis: RedisServer, tokens: Tokens, tmp_path: Path
) -> None:
    (tmp_path / "models" / "recommender").mkdir(parents=True)  # no version to serve
    command = [sys.executable, "-m", "recserve", "serve", "--grpc-host", "127.0.0.1", "--grpc-port", "0"]
    command += ["--metrics-port", "0", "--model-repository", str(tmp_path / "models")]
    finished = subprocess.run(
        command, env={**os.environ, **two_workers(redis, tokens)}, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 2, finished.stderr
    assert "could not start (exit code 2): stopping" in finished.stderr


def test_every_worker_answers_the_same_and_metrics_add_up(workers: ServerProcess) -> None:
    before = sum(worker_calls(workers).values())
    answers = answers_on_fresh_connections(workers.address, "user-3")
    assert len(answers) == 1 and len(next(iter(answers))) == 10
    eventually(lambda: sum(worker_calls(workers).values()) >= before + CONNECTIONS)
    calls = worker_calls(workers)
    assert set(calls) == {"0", "1"} and all(count > 0 for count in calls.values()), calls
    values = metrics(workers)
    ok = values[("recserve_rpc_total", (("code", "OK"), ("method", "recserve.v1.Recommender/Recommend")))]
    assert ok == sum(calls.values()), "the merged per-method count is the sum over workers"
    assert values[("recserve_workers", ())] == 2
    assert values[("recserve_workers_ready", ())] == 2


def test_a_catalog_write_through_one_worker_reaches_every_worker(
    workers: ServerProcess, tokens: Tokens
) -> None:
    (top,) = {answer[0] for answer in answers_on_fresh_connections(workers.address, "user-5")}
    with RecommenderClient(workers.address, timeout_s=10, metadata=bearer(tokens.write)) as writer:
        writer.delete_items([top])
    eventually(
        lambda: all(top not in answer for answer in answers_on_fresh_connections(workers.address, "user-5"))
    )


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(workers: ServerProcess) -> None:
    victim = worker_pids(workers)[0]
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: f"(pid {victim}) died (signal SIGKILL): restarting" in workers.log.read_text())
    with RecommenderClient(workers.address, timeout_s=10) as client:
        for _ in range(20):  # the other worker answers meanwhile
            assert len(client.recommend("user-3").items) == 10

    def restarted() -> bool:
        values = metrics(workers)
        restarts = sum(v for (name, _), v in values.items() if name == "recserve_worker_restarts_total")
        return restarts == 1 and values[("recserve_workers_ready", ())] == 2

    eventually(restarted, within_s=120)
    assert len(answers_on_fresh_connections(workers.address, "user-3")) == 1


def test_sigterm_drains_every_worker(
    model_repository: Path, redis: RedisServer, tokens: Tokens, tmp_path: Path
) -> None:
    with fresh_workers(model_repository, redis, tokens, tmp_path, drain_s=1.5) as server:
        clients = [RecommenderClient(server.address, timeout_s=10) for _ in range(CONNECTIONS)]
        failures: list[BaseException] = []
        answered = [0]
        stop = threading.Event()

        def call(client: RecommenderClient) -> None:
            while not stop.is_set():
                try:
                    client.recommend("user-3")
                    answered[0] += 1
                except BaseException as error:  # noqa: BLE001 - any failure fails the test
                    failures.append(error)
                    return

        threads = [threading.Thread(target=call, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # inside the drain: every worker still takes new calls
        stop.set()
        for thread in threads:
            thread.join(30)
        for client in clients:
            client.close()
        assert server.process.wait(60) == 0, server.log.read_text()
    assert not failures, failures[:3]
    assert answered[0] > CONNECTIONS
    text = server.log.read_text()
    assert "worker 0 (pid" in text and "worker 1 (pid" in text
    assert len(re.findall(r"stopped \(exit code 0\)", text)) == 2
    for pid in worker_pids(server):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_awaiting_restart_is_not_started_while_the_others_drain(
    model_repository: Path, redis: RedisServer, tokens: Tokens, tmp_path: Path
) -> None:
    # Its restart is due 1 s after it dies, inside the others' 3 s drain: started then, it would miss the
    # SIGTERM and hold the supervisor until the kill timeout.
    with fresh_workers(model_repository, redis, tokens, tmp_path, drain_s=3) as server:
        victim = worker_pids(server)[0]
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: f"(pid {victim}) died (signal SIGKILL)" in server.log.read_text())
        assert server.terminate_and_wait(timeout_s=20) == 0, server.log.read_text()
    text = server.log.read_text()
    after_the_signal = text.split("SIGTERM: stopping 2 workers", 1)[1]
    assert "started (pid" not in after_the_signal, text
    assert len(re.findall(r"stopped \(exit code 0\)", after_the_signal)) >= 1, text


def test_explicit_model_control_is_refused_with_several_workers(
    model_repository: Path, redis: RedisServer
) -> None:
    flags = ("--workers", "2", "--model-control-mode", "explicit", "--state-backend", "redis")
    finished = refused(*flags, "--redis-url", redis.url, "--model-repository", str(model_repository))
    assert finished.returncode == 2
    assert "cannot use model_control_mode explicit" in finished.stderr
