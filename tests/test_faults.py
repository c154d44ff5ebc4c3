"""Faults the server must ride out by itself: a full state disk, Redis gone, a dead batch loop, a flood of
idle connections. Each: the server stays up, answers what it can, says why in health, metrics and logs, and
recovers without a restart once the fault clears."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from recserve.client import Event, RecommenderClient
from recserve.server.manifest import write_manifest
from recserve.server.settings import ServerSettings, StateSettings
from tests.disks import fill, tmpfs
from tests.redis_server import RedisServer
from tests.serving import ServerThread
from tests.tokens import Tokens, bearer

EVENTS = "recserve.v1.Events"


def eventually(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until `check()` held; fails after `within_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def metric(server: ServerThread, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a state disk that can really fill up (ENOSPC)."""
    try:
        with tmpfs(tmp_path / "disk", "4m") as disk:
            yield disk
    except PermissionError as error:
        pytest.skip(str(error))


def test_a_full_state_disk_refuses_writes_keeps_reading_and_recovers(
    server_settings: ServerSettings, small_disk: Path, tokens: Tokens
) -> None:
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "auth": tokens.settings(),
            "state": StateSettings(state_dir=small_disk / "state", fsync="always"),
        }
    )
    with (
        ServerThread(settings) as server,
        RecommenderClient(server.address, timeout_s=10, metadata=bearer(tokens.write)) as client,
    ):
        assert client.record_events([Event("disk-user", "item-1")]).accepted == 1
        filler = fill(small_disk)
        with pytest.raises(grpc.RpcError) as refused:
            client.record_events([Event("disk-user", "item-2")] * 200)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "No space left on device" in refused.value.details()
        assert len(client.recommend("disk-user", k=5).items) == 5, "reads go on"
        eventually(lambda: client.health(EVENTS) == "NOT_SERVING", 5)
        assert client.health() == "SERVING" and client.health("recserve.v1.Recommender") == "SERVING"
        assert metric(server, "recserve_state_backend_up") == 0

        filler.unlink()
        recovered_s = eventually(lambda: client.health(EVENTS) == "SERVING", 5)
        assert client.record_events([Event("disk-user", "item-3")]).accepted == 1
        assert [e.item_id for e in client.user_history("disk-user")] == ["item-1", "item-3"], (
            "the acknowledged writes are there, the refused one is not"
        )
        assert metric(server, "recserve_state_backend_up") == 1
    assert recovered_s < 3


def test_redis_gone_turns_the_write_services_not_serving_until_it_is_back(
    server_settings: ServerSettings, tmp_path: Path, tokens: Tokens
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "auth": tokens.settings(),
            "state": StateSettings(backend="redis", redis_url=redis.url, redis_timeout_seconds=0.3),
        }
    )
    try:
        with (
            ServerThread(settings) as server,
            RecommenderClient(server.address, timeout_s=10, metadata=bearer(tokens.write)) as client,
        ):
            with ThreadPoolExecutor(8) as pool:  # concurrent writes: the server pools several connections
                written = pool.map(lambda n: client.record_events([Event(f"user-{n}", "item-1")]), range(32))
                assert [answer.accepted for answer in written] == [1] * 32
            redis.kill()
            # No call touches Redis from here on: the watcher's PING finds the outage by itself.
            eventually(lambda: client.health(EVENTS) == "NOT_SERVING", 5)
            assert metric(server, "recserve_state_backend_up") == 0
            assert client.health() == "SERVING"
            assert len(client.recommend("redis-user", k=5).items) == 5, "reads fall back to the request"
            redis.start()
            recovered_s = eventually(lambda: client.health(EVENTS) == "SERVING", 10)
            with ThreadPoolExecutor(8) as pool:  # every pooled connection died with the old Redis
                written = pool.map(lambda n: client.record_events([Event(f"user-{n}", "item-2")]), range(32))
                assert [answer.accepted for answer in written] == [1] * 32, "a write found a dead connection"
            assert metric(server, "recserve_state_backend_up") == 1
    finally:
        redis.stop()
    assert recovered_s < 5


def test_a_dead_batch_loop_is_restarted_and_loses_no_queued_request(server: ServerThread) -> None:
    batcher = server.running.service.batcher
    policy = batcher.policy
    real_batch_size = policy.batch_size
    broken = {"left": 1}

    def batch_size_once_broken(queued: int) -> int:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug in batch formation")
        return real_batch_size(queued)

    restarts = batcher.restarts
    policy.batch_size = batch_size_once_broken  # type: ignore[method-assign]
    try:
        with RecommenderClient(server.address, timeout_s=10) as client:
            answers = [client.recommend(f"user-{n}", k=3) for n in range(1, 6)]
    finally:
        policy.batch_size = real_batch_size  # type: ignore[method-assign]
    assert all(len(answer.items) == 3 for answer in answers)
    assert batcher.restarts == restarts + 1
    assert metric(server, "recserve_batch_loop_restarts") >= 1


def serves_normally(client: RecommenderClient, calls: int = 20) -> float:
    """Seconds per Recommend over `calls` calls that all answer; the server is SERVING after them."""
    started = time.perf_counter()
    for n in range(calls):
        assert len(client.recommend(f"user-{n + 1}", k=3).items) == 3
    per_call_s = (time.perf_counter() - started) / calls
    assert client.health() == "SERVING"
    return per_call_s


def test_thousands_of_idle_connections_do_not_stop_serving(server: ServerThread) -> None:
    host, port = server.address.rsplit(":", 1)
    sockets = []
    try:
        for _ in range(2000):
            sockets.append(socket.create_connection((host, int(port)), timeout=5))  # never says a word
        half_open = []
        for sock in sockets[:200]:  # and some send half an HTTP/2 preface, then nothing
            sock.sendall(b"PRI * HTTP/2.0\r\n")
            half_open.append(sock)
        with RecommenderClient(server.address, timeout_s=10) as client:
            per_call_s = serves_normally(client)
    finally:
        for sock in sockets:
            sock.close()
    assert per_call_s < 0.25


def damaged_copy(source: Path, target: Path, damage: Callable[[Path], None]) -> None:
    """A copy of a version directory, damaged by `damage` and sealed again: a broken build, not a copy
    still under way (whose manifest would not match, so it would not be loaded at all)."""
    shutil.copytree(source, target)
    damage(target)
    write_manifest(target)


def truncate_ranker(version: Path) -> None:
    graph = version / "ranker" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:100])


def shrink_embeddings(version: Path) -> None:
    import numpy as np

    embeddings = np.load(version / "item_embeddings.npy")
    np.save(version / "item_embeddings.npy", embeddings[:, : embeddings.shape[1] // 2])


@pytest.mark.parametrize("damage", [truncate_ranker, shrink_embeddings])
def test_a_damaged_newest_version_is_rejected_and_the_previous_one_serves(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    model_dir = tmp_path / "models" / "recommender"
    model_dir.mkdir(parents=True)
    shutil.copy(version_dir.parent / "config.yaml", model_dir / "config.yaml")
    (model_dir / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
    damaged_copy(version_dir, model_dir / "2", damage)
    settings = server_settings.model_copy(
        update={"model_repository": model_dir.parent, "state": StateSettings(state_dir=tmp_path / "state")}
    )
    with ServerThread(settings) as server, RecommenderClient(server.address, timeout_s=10) as client:
        assert client.model_info().model_version == "1"
        assert len(client.recommend("user-1", k=3).items) == 3
        assert "2" in server.running.slot.rejected
        assert 'recserve_model_version_rejected{model="recommender",version="2"} 1.0' in (
            urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        )


def test_a_pinned_damaged_version_does_not_serve(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path
) -> None:
    from recserve.server.repository import VersionRejectedError

    model_dir = tmp_path / "models" / "recommender"
    model_dir.mkdir(parents=True)
    damaged_copy(version_dir, model_dir / "1", truncate_ranker)
    settings = server_settings.model_copy(
        update={"model_repository": model_dir.parent, "state": StateSettings(state_dir=tmp_path / "state")}
    )
    server = ServerThread(settings)
    with pytest.raises(VersionRejectedError, match="version 1: .*ranker"):
        server.start()
    server.stop()


# --- a client that never reads: raw HTTP/2, so nothing reads on its behalf ------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman (names and values < 127 bytes)."""
    return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def never_reading_connection(address: str, streams: int, request: bytes) -> socket.socket:
    """A connection that sends `streams` Recommend calls and then never reads a byte (window 0 besides)."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    settings = (4).to_bytes(2, "big") + (0).to_bytes(4, "big")  # INITIAL_WINDOW_SIZE = 0
    out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", _frame(4, 0, 0, settings)]
    headers = b"".join(
        _literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/recserve.v1.Recommender/Recommend"),
            (":authority", address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    message = b"\0" + len(request).to_bytes(4, "big") + request
    for n in range(streams):
        stream = 2 * n + 1
        out += [_frame(1, 0x4, stream, headers), _frame(0, 0x1, stream, message)]
    sock.sendall(b"".join(out))
    return sock


def answers(client: RecommenderClient) -> bool:
    try:
        return len(client.recommend("user-1", k=3).items) == 3
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False


def test_clients_that_never_read_their_answers_do_not_stop_serving(server: ServerThread) -> None:
    from recserve.v1 import recommender_pb2

    request = recommender_pb2.RecommendRequest(user_id="user-1", k=50).SerializeToString()
    hostile = [never_reading_connection(server.address, 100, request) for _ in range(20)]  # 2,000 calls
    try:
        with RecommenderClient(server.address, timeout_s=10) as client:
            # 2,000 calls at once are an overload (refused or answered, never read); then it serves again,
            # with those connections still open and still not reading.
            eventually(lambda: answers(client), 15)
            per_call_s = serves_normally(client)
    finally:
        for sock in hostile:
            sock.close()
    assert per_call_s < 0.25
    frontend = server.running.server
    if hasattr(frontend, "_active"):  # native: every call of the closed connections is released
        eventually(lambda: len(frontend._active) == 0, 10)
