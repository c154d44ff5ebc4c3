"""`recserve serve` as a real process: starts, serves through health and the API, stops cleanly on SIGTERM."""

from __future__ import annotations

from pathlib import Path

from client import RecommenderClient
from tests.serving import ServerProcess


def test_serve_answers_then_exits_zero_on_sigterm(model_repository: Path, tmp_path: Path) -> None:
    with ServerProcess(model_repository, tmp_path / "server.log") as server:
        with RecommenderClient(server.address) as client:
            assert len(client.recommend("user-3").items) == 10
        assert server.terminate_and_wait() == 0, server.log.read_text()
    text = server.log.read_text()
    assert "version 1 ready" in text and "max_batch_size=64" in text
    assert "stopped" in text
