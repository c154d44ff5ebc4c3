"""Faults from outside: what a `recserve serve` process does, and how long it takes to recover by itself.

1. the state disk full: the memory backend's state directory on a 4 MiB tmpfs, filled to the last byte while
   a writer keeps writing; then the filler is removed;
2. Redis gone: the redis backend's server killed while a writer keeps writing, then started again;
3. 2,000 idle connections (and 200 half HTTP/2 prefaces) held open beside Recommend calls;
4. a damaged newest version (its ranker's SavedModel truncated) beside a good older one, at start-up.

For each: what readers and writers got, what health said, and the seconds from the fault clearing until
writes succeed and health says SERVING again. Results go to bench/results/faults.json.

    .venv/bin/python bench/faults.py        # as root: it mounts a tmpfs (and needs redis-server)
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, median, write_result  # first: thread limits

# isort: on

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import yaml
from server_load import Periodic, ServerProcess, start_server

from recserve.client import Event, RecommenderClient
from recserve.server.auth import Role, new_token, token_entry
from recserve.server.manifest import write_manifest

sys.path.insert(0, str(REPO_ROOT / "tests"))
from disks import fill, tmpfs  # noqa: E402
from redis_server import RedisServer  # noqa: E402

EVENTS = "recserve.v1.Events"
TOKEN = new_token()
WRITER = (("authorization", f"Bearer {TOKEN}"),)


def writing_server(workdir: Path, flags: list[str], repository: Path = DEFAULT_REPOSITORY) -> ServerProcess:
    """A server with the Events service on behind a token only this benchmark knows."""
    tokens = workdir / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [token_entry("bench", TOKEN, [Role.WRITE])]}))
    return start_server(repository, ["--enable-events", "--tokens-file", str(tokens), *flags], workdir)


class Writer(Periodic):
    """Records one event every 20 ms in a thread; keeps each call's (time, status)."""

    def __init__(self, address: str) -> None:
        super().__init__(0.02)
        self._client = RecommenderClient(address, timeout_s=2, metadata=WRITER)
        self.outcomes: list[tuple[float, str, str]] = []
        self._number = 0

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        self._client.close()

    def tick(self) -> None:
        """One write."""
        self._number += 1
        try:
            self._client.record_events([Event("fault-user", f"item-{self._number % 100 + 1}")])
            self.outcomes.append((time.monotonic(), "OK", ""))
        except grpc.RpcError as error:
            self.outcomes.append((time.monotonic(), error.code().name, error.details() or ""))

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first acknowledged write after it."""
        return next((t - moment for t, status, _ in self.outcomes if t > moment and status == "OK"), None)

    def refusals(self) -> dict[str, str]:
        """One message per status other than OK."""
        return {status: details for _, status, details in self.outcomes if status != "OK"}


def wait_for(check: Callable[[], bool], within_s: float) -> float | None:
    """Seconds until `check()` held, None if not within `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def health_of(client: RecommenderClient, service: str = "") -> str:
    try:
        return client.health(service, timeout_s=2)
    except grpc.RpcError as error:
        return error.code().name


def recommend_ms(client: RecommenderClient, calls: int = 50) -> float:
    """Median Recommend latency over `calls` sequential calls, ms."""
    latencies = []
    for n in range(calls):
        started = time.perf_counter()
        client.recommend(f"user-{n % 50 + 1}", k=10)
        latencies.append((time.perf_counter() - started) * 1000)
    return median(latencies)


def outage(
    server: ServerProcess, name: str, cause: Callable[[], object], clear: Callable[[], object]
) -> dict:
    """Writes, reads and health while `cause()` holds, and how long after `clear()` the server recovers."""
    with RecommenderClient(server.address, timeout_s=5) as reader, Writer(server.address) as writer:
        time.sleep(0.5)
        caused = time.monotonic()
        cause()
        detected = wait_for(lambda: health_of(reader, EVENTS) == "NOT_SERVING", 10)
        reads_ms = recommend_ms(reader, 20)
        time.sleep(1)
        clear()
        cleared = time.monotonic()
        healthy = wait_for(lambda: health_of(reader, EVENTS) == "SERVING", 15)
        time.sleep(0.5)
        overall = health_of(reader)
    return {
        "fault": name,
        "writes_during": writer.refusals(),
        "reads_during_p50_ms": reads_ms,
        "health_not_serving_after_s": detected,
        "first_refusal_after_s": next(
            (t - caused for t, status, _ in writer.outcomes if t > caused and status != "OK"), None
        ),
        "writes_ok_again_after_s": writer.first_ok_after(cleared),
        "health_serving_again_after_s": healthy,
        "server_health": overall,
    }


def full_disk(workdir: Path) -> dict:
    with tmpfs(workdir / "disk", "4m") as disk:
        server = writing_server(workdir, ["--state-dir", str(disk / "state"), "--fsync", "always"])
        filler = disk / "filler"
        try:
            return outage(server, "state disk full (ENOSPC)", lambda: fill(disk), filler.unlink)
        finally:
            server.stop()


def redis_gone(workdir: Path) -> dict:
    redis = RedisServer(workdir / "redis").start()
    server = writing_server(workdir, ["--state-backend", "redis", "--redis-url", redis.url])
    try:
        return outage(server, "Redis killed, then started again", redis.kill, redis.start)
    finally:
        server.stop()
        redis.stop()


def idle_connections(workdir: Path) -> dict:
    server = start_server(DEFAULT_REPOSITORY, [], workdir)
    try:
        host, port = server.address.rsplit(":", 1)
        with RecommenderClient(server.address, timeout_s=5) as client:
            before = recommend_ms(client)
            sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2000)]
            for sock in sockets[:200]:
                sock.sendall(b"PRI * HTTP/2.0\r\n")
            during = recommend_ms(client)
            for sock in sockets:
                sock.close()
            after = recommend_ms(client)
        return {
            "fault": "2,000 idle connections (200 with half a preface)",
            "recommend_p50_ms_before": before,
            "recommend_p50_ms_during": during,
            "recommend_p50_ms_after": after,
        }
    finally:
        server.stop()


def damaged_version(workdir: Path) -> dict:
    source = DEFAULT_REPOSITORY / "recommender"
    newest = max((p for p in source.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model_dir = workdir / "models" / "recommender"
    model_dir.mkdir(parents=True)
    shutil.copy(source / "config.yaml", model_dir / "config.yaml")
    (model_dir / "1").symlink_to(newest.resolve(), target_is_directory=True)
    shutil.copytree(newest, model_dir / "2")
    graph = model_dir / "2" / "ranker" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:100])
    write_manifest(model_dir / "2")  # a broken build, not a copy under way (that one is not loaded at all)
    started = time.monotonic()
    server = start_server(model_dir.parent, [], workdir)
    try:
        serving_s = time.monotonic() - started
        with RecommenderClient(server.address, timeout_s=5) as client:
            version = client.model_info().model_version
        log = server.log.read_text()
        rejected = next((line for line in log.splitlines() if "rejected" in line), "")
        return {
            "fault": "newest version damaged (ranker SavedModel truncated)",
            "served_version": version,
            "serving_after_start_s": serving_s,
            "log": rejected.split(": ", 1)[-1][:200],
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    results: dict = {"machine": machine_note(), "command": ".venv/bin/python bench/faults.py", "faults": []}
    for measure in (full_disk, redis_gone, idle_connections, damaged_version):
        with tempfile.TemporaryDirectory(prefix="recserve-faults-") as directory:
            row = measure(Path(directory))
        print(json.dumps(row), flush=True)
        results["faults"].append(row)
    print("results:", write_result("faults", results))


if __name__ == "__main__":
    main()
