"""Model versions that change while the server serves: poll and explicit model control, version policy,
pinned requests, rejected and incomplete versions, live state across a swap."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from recserve.client import RecommenderClient
from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.server.manifest import write_manifest
from recserve.server.settings import ServerSettings, StateSettings
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc
from tests.serving import ServerThread
from tests.tokens import Tokens, bearer
from tests.triton_client import import_tritonclient

grpcclient, _ = import_tritonclient()

POLL_S = 0.2


def model_repository(version_dir: Path, root: Path, policy: dict | None = None) -> Path:
    """A model directory with version 1 = the session's model (and `policy` as its version_policy).

    Its queue is bounded by count only: the callers share the test's process (and GIL) with the server, so
    a load slows batches enough for the time bound to refuse some calls, which is overload protection
    (tests/test_admission.py), not a failure of the swap; bench/model_swap.py measures swaps with it on.
    """
    model_dir = root / "models" / "recommender"
    model_dir.mkdir(parents=True)
    config = yaml.safe_load((version_dir.parent / "config.yaml").read_text())
    config.setdefault("batching", {})["max_queue_wait_microseconds"] = 0
    if policy is not None:
        config["version_policy"] = policy
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    add_version(version_dir, model_dir, "1")
    return model_dir


def add_version(version_dir: Path, model_dir: Path, version: str) -> Path:
    """Version `version`: the same files as the session's model, under a new number."""
    target = model_dir / version
    target.symlink_to(version_dir.resolve(), target_is_directory=True)
    return target


def settings_for(
    server_settings: ServerSettings, model_dir: Path, tmp_path: Path, **fields
) -> ServerSettings:
    return server_settings.model_copy(
        update={
            "model_repository": model_dir.parent,
            "state": StateSettings(state_dir=tmp_path / "state"),
            "repository_poll_seconds": POLL_S,
            **fields,
        }
    )


def polling_with_writes(
    server_settings: ServerSettings, model_dir: Path, tmp_path: Path, tokens: Tokens, **enabled: bool
) -> ServerSettings:
    """A poll-mode server with the write services in `enabled` on, behind the session's tokens."""
    return settings_for(
        server_settings, model_dir, tmp_path, model_control_mode="poll", auth=tokens.settings(), **enabled
    )


def user_id_input(user_id: str):
    """A tritonclient `user_id` input of one row."""
    tensor = grpcclient.InferInput("user_id", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[user_id.encode()]], dtype=object))
    return tensor


def served_version(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_version


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def index_of(address: str) -> dict[str, tuple[str, str]]:
    """RepositoryIndex of the `recommender` model: version -> (state, reason)."""
    with grpc.insecure_channel(address) as channel:
        index = kpb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            kpb.RepositoryIndexRequest(), timeout=10
        )
    return {m.version: (m.state, m.reason) for m in index.models if m.name == "recommender"}


class Callers:
    """`concurrency` callers sending Recommend back to back, counting answers by version and failures."""

    def __init__(self, address: str, concurrency: int = 64) -> None:
        self.address, self.concurrency = address, concurrency
        self.versions: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    def __enter__(self) -> Callers:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            await asyncio.gather(*(self._caller(stub, n) for n in range(self.concurrency)))

    async def _caller(self, stub: recommender_pb2_grpc.RecommenderStub, n: int) -> None:
        while not self._stop.is_set():
            try:
                reply = await stub.Recommend(pb.RecommendRequest(user_id=f"user-{n % 50}", k=5), timeout=30)
                self.versions[reply.model_version] += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")


@pytest.fixture
def poll_server(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path
) -> Iterator[tuple[ServerThread, Path]]:
    model_dir = model_repository(version_dir, tmp_path)
    with ServerThread(
        settings_for(server_settings, model_dir, tmp_path, model_control_mode="poll")
    ) as server:
        yield server, model_dir


def test_poll_mode_swaps_ten_versions_under_64_callers_without_a_failed_request(
    poll_server: tuple[ServerThread, Path], version_dir: Path
) -> None:
    server, model_dir = poll_server
    with Callers(server.address) as callers:
        for version in range(2, 12):
            add_version(version_dir, model_dir, str(version))
            wait_for(lambda v=str(version): served_version(server.address) == v)
            wait_for(lambda v=str(version): callers.versions[v] > 0)
        time.sleep(0.5)
    assert callers.failures == []
    assert set(callers.versions) == {str(v) for v in range(1, 12)}
    wait_for(lambda: set(server.running.slot.served) == {"11"})  # the old versions were freed
    states = index_of(server.address)
    assert states["11"] == ("READY", "")
    assert states["10"][0] == "UNAVAILABLE" and "latest: 1" in states["10"][1]


def test_a_new_version_starts_with_the_admission_estimate_of_the_one_it_replaces(
    poll_server: tuple[ServerThread, Path], version_dir: Path
) -> None:
    server, model_dir = poll_server
    with RecommenderClient(server.address, timeout_s=10) as client:
        for n in range(20):
            client.recommend(f"user-{n}", k=5)
    old = server.running.slot.served["1"].batcher.admission.estimator
    assert old.measured
    add_version(version_dir, model_dir, "2")
    wait_for(lambda: "2" in server.running.slot.served)  # and no request since: nothing new measured
    new = server.running.slot.served["2"].batcher.admission.estimator
    assert new.measured and new.cost is not old.cost
    assert new.cost.predict(64) == pytest.approx(old.cost.predict(64))


def test_a_removed_version_is_unloaded_and_the_previous_one_serves(
    poll_server: tuple[ServerThread, Path], version_dir: Path
) -> None:
    server, model_dir = poll_server
    add_version(version_dir, model_dir, "2")
    wait_for(lambda: served_version(server.address) == "2")
    (model_dir / "2").unlink()
    wait_for(lambda: served_version(server.address) == "1")
    assert "2" not in index_of(server.address)


def test_an_incomplete_version_is_ignored_until_complete(
    poll_server: tuple[ServerThread, Path], version_dir: Path
) -> None:
    server, model_dir = poll_server
    copy = model_dir / "2"
    shutil.copytree(version_dir, copy)
    graph = copy / "ranker" / "saved_model.pb"
    whole = graph.read_bytes()
    graph.write_bytes(whole[:100])  # the copy is still under way
    time.sleep(5 * POLL_S)
    assert served_version(server.address) == "1"
    state, reason = index_of(server.address)["2"]
    assert state == "UNAVAILABLE" and "ranker/saved_model.pb has 100 of" in reason
    graph.write_bytes(whole)  # the copy finished
    wait_for(lambda: served_version(server.address) == "2")


@pytest.mark.parametrize(
    "damage", ["truncated SavedModel", "index of another dimension", "embeddings of another dimension"]
)
def test_a_corrupt_version_is_rejected_with_its_reason_and_serving_goes_on(
    poll_server: tuple[ServerThread, Path], version_dir: Path, damage: str
) -> None:
    import numpy as np

    server, model_dir = poll_server
    broken = model_dir / "2"
    shutil.copytree(version_dir, broken)
    if damage == "truncated SavedModel":
        graph = broken / "ranker" / "saved_model.pb"
        graph.write_bytes(graph.read_bytes()[:100])
    elif damage == "index of another dimension":
        from annoy import AnnoyIndex

        embeddings = np.load(broken / "item_embeddings.npy")
        half = embeddings.shape[1] // 2
        index = AnnoyIndex(half, "angular")
        for row, vector in enumerate(embeddings[:, :half]):
            index.add_item(row, vector.tolist())
        index.build(4)
        (broken / "items.ann").unlink()
        index.save(str(broken / "items.ann"))
    else:
        embeddings = np.load(broken / "item_embeddings.npy")
        np.save(broken / "item_embeddings.npy", embeddings[:, : embeddings.shape[1] // 2])
    with Callers(server.address, concurrency=8) as callers:
        write_manifest(broken)  # a broken build, complete on disk
        wait_for(lambda: index_of(server.address)["2"][1].startswith("rejected"))
        if damage == "index of another dimension":
            assert "items.ann cannot be opened as a 32-dimensional" in index_of(server.address)["2"][1]
        time.sleep(3 * POLL_S)  # it is not tried again at every poll
    assert callers.failures == []
    assert served_version(server.address) == "1"
    assert "2" in server.running.slot.rejected


def test_a_pinned_request_gets_its_version_and_an_unknown_one_is_not_found(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path
) -> None:
    model_dir = model_repository(version_dir, tmp_path, policy={"latest": {"num_versions": 2}})
    add_version(version_dir, model_dir, "2")
    with ServerThread(settings_for(server_settings, model_dir, tmp_path)) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            assert stub.Recommend(pb.RecommendRequest(user_id="user-1"), timeout=30).model_version == "2"
            pinned = stub.Recommend(pb.RecommendRequest(user_id="user-1", model_version="1"), timeout=30)
            assert pinned.model_version == "1"
            score = stub.Score(
                pb.ScoreRequest(user_id="user-1", item_ids=["item-1"], model_version="1"), timeout=30
            )
            assert score.model_version == "1"
            with pytest.raises(grpc.RpcError) as unknown:
                stub.Recommend(pb.RecommendRequest(user_id="user-1", model_version="9"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "served versions: 1, 2" in unknown.value.details()
        with RecommenderClient(server.address, timeout_s=30) as client:
            assert client.recommend("user-1", k=3, model_version="1").model_version == "1"
            assert client.score("user-1", ["item-1"], model_version="1").model_version == "1"
            assert [row.state for row in client.model_versions() if row.model_name == "recommender"] == [
                "READY",
                "READY",
            ]
        triton = grpcclient.InferenceServerClient(server.address)
        assert triton.is_model_ready("recommender", "1") and triton.is_model_ready("recommender", "2")
        assert not triton.is_model_ready("recommender", "9")
        assert triton.get_model_metadata("recommender", "1").versions == ["1"]
        assert triton.get_model_config("user_tower").config.version_policy.latest.num_versions == 2
        every = triton.get_inference_statistics().model_stats
        assert [(row.name, row.version) for row in every][:2] == [("recommender", "2"), ("recommender", "1")]
        assert len(every) == 8, "four models at two versions"
        pinned_stats = triton.get_inference_statistics("recommender").model_stats
        assert [row.version for row in pinned_stats] == ["2", "1"]
        assert all(row.inference_count >= 1 for row in pinned_stats), "each version counts its own calls"
        assert [row.version for row in triton.get_inference_statistics("ranker", "1").model_stats] == ["1"]


def test_explicit_mode_loads_and_unloads_through_tritonclient_with_an_admin_token(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path, tokens: Tokens
) -> None:
    model_dir = model_repository(version_dir, tmp_path)
    settings = settings_for(
        server_settings, model_dir, tmp_path, model_control_mode="explicit", auth=tokens.settings()
    )
    with ServerThread(settings) as server:
        triton = grpcclient.InferenceServerClient(server.address)
        admin = {"authorization": f"Bearer {tokens.admin}"}
        index = triton.get_model_repository_index(as_json=True)["models"]
        assert {"name": "recommender", "version": "1", "state": "READY"} in index
        for headers, status in (
            (None, "UNAUTHENTICATED"),
            ({"authorization": f"Bearer {tokens.read}"}, "PERMISSION_DENIED"),
        ):
            with pytest.raises(grpcclient.InferenceServerException) as refused:
                triton.unload_model("recommender", headers=headers)
            assert refused.value.status() == f"StatusCode.{status}"
        for name in ("item_tower", "ranker"):
            with pytest.raises(grpcclient.InferenceServerException) as alone:
                triton.unload_model(name, headers=admin)
            assert alone.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "load or unload 'recommender'" in alone.value.message()
        with pytest.raises(grpcclient.InferenceServerException) as overridden:
            triton.load_model("recommender", headers=admin, config='{"max_batch_size": 8}')
        assert overridden.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "overrides the model's configuration" in overridden.value.message()
        assert triton.is_model_ready("item_tower"), "a refused call changes nothing"
        add_version(version_dir, model_dir, "2")
        time.sleep(5 * POLL_S)
        assert served_version(server.address) == "1", "explicit mode does not poll"
        triton.load_model("recommender", headers=admin)
        assert served_version(server.address) == "2"
        triton.unload_model("recommender", headers=admin)
        assert not triton.is_model_ready("recommender")
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as unloaded:
                recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                    pb.RecommendRequest(user_id="user-1"), timeout=10
                )
        assert unloaded.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "unloaded" in unloaded.value.details()
        with pytest.raises(grpcclient.InferenceServerException) as tower_unloaded:
            triton.infer("user_tower", [user_id_input("user-1")])
        assert tower_unloaded.value.status() == "StatusCode.UNAVAILABLE"
        assert "model 'user_tower' is unloaded; load 'recommender'" in tower_unloaded.value.message()
        states = index_of(server.address)
        assert states["2"] == ("UNAVAILABLE", "unloaded")
        triton.load_model("recommender", headers=admin)
        assert triton.is_model_ready("recommender", "2")
        cli = [sys.executable, "-m", "recserve", "models"]
        listed = subprocess.run(
            [*cli, "list", "--target", server.address, "--json"], capture_output=True, text=True
        )
        assert listed.returncode == 0, listed.stderr
        rows = {row["version"]: row["state"] for row in json.loads(listed.stdout)}
        assert rows == {"1": "UNAVAILABLE", "2": "READY"}
        refused = subprocess.run([*cli, "unload", "--target", server.address], capture_output=True, text=True)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        unloaded = subprocess.run(
            [*cli, "unload", "--target", server.address, "--token", tokens.admin],
            capture_output=True,
            text=True,
        )
        assert unloaded.returncode == 0, unloaded.stderr
        assert not triton.is_model_ready("recommender")


def test_catalog_changes_made_before_a_swap_are_served_by_the_new_version(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path, tokens: Tokens
) -> None:
    from recserve.v1 import catalog_pb2, catalog_pb2_grpc

    model_dir = model_repository(version_dir, tmp_path)
    settings = polling_with_writes(server_settings, model_dir, tmp_path, tokens, catalog_enabled=True)
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as channel:
        catalog = catalog_pb2_grpc.CatalogStub(channel)
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        tags = list(server.running.service.catalog.tags_of("item-1"))
        upsert = catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.Item(item_id="fresh-1", tags=tags)])
        catalog.UpsertItems(upsert, timeout=30, metadata=bearer(tokens.write))
        catalog.DeleteItems(
            catalog_pb2.DeleteItemsRequest(item_ids=["item-2"]), timeout=30, metadata=bearer(tokens.write)
        )
        add_version(version_dir, model_dir, "2")
        wait_for(lambda: served_version(server.address) == "2")
        similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="fresh-1", k=5), timeout=30)
        assert similar.model_version == "2" and len(similar.items) == 5
        with pytest.raises(grpc.RpcError) as deleted:
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-2", k=5), timeout=30)
        assert deleted.value.code() == grpc.StatusCode.NOT_FOUND
        scores = stub.Score(pb.ScoreRequest(user_id="user-1", item_ids=["fresh-1"]), timeout=30)
        assert scores.model_version == "2" and len(scores.scores) == 1


def test_the_load_duty_cycle_rests_in_proportion_to_the_work() -> None:
    from recserve.server.model_control.throttle import DutyCycle

    cycle = DutyCycle(0.25, longest_pause_s=0.5)
    started = time.perf_counter()
    while time.perf_counter() - started < 0.04:  # a 40 ms step
        pass
    cycle.pause()
    assert 0.1 <= cycle.paused_s <= 0.15  # three times the step
    cycle.pause()  # no work since: no rest
    assert cycle.paused_s <= 0.15
    with pytest.raises(ValueError):
        DutyCycle(0)


def test_a_long_step_is_cut_into_slices_from_inside() -> None:
    import sys

    from recserve.server.model_control.throttle import DutyCycle

    cycle = DutyCycle(0.5, longest_pause_s=0.05)
    stretches: list[float] = []
    pause = cycle.pause

    def timed_pause() -> None:
        stretches.append(time.perf_counter() - cycle._resumed)
        pause()

    cycle.pause = timed_pause  # type: ignore[method-assign]

    def one_long_step(seconds: float) -> str:  # Python work that never calls pause() itself
        started = time.thread_time()  # this thread's CPU time: the pauses do not count
        while time.thread_time() - started < seconds:
            sum(range(50))
        return "done"

    profiler_before = sys.getprofile()
    assert cycle.sliced(one_long_step, 0.1) == "done"
    assert sys.getprofile() is profiler_before
    assert len(stretches) >= 10, "a 100 ms step is paused every few milliseconds"
    assert max(stretches) < 0.03  # generous for a busy machine; the slice is 2 ms
    assert cycle.paused_s > 0.05


def test_the_gil_is_handed_over_sooner_only_while_a_version_loads() -> None:
    import sys

    from recserve.server.model_control.throttle import LOADING_SWITCH_INTERVAL_S, quick_gil_handoff

    before = sys.getswitchinterval()
    with quick_gil_handoff():
        assert sys.getswitchinterval() == pytest.approx(LOADING_SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before


def test_a_retrained_version_is_picked_up_by_a_polling_server_under_load(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path, tokens: Tokens
) -> None:
    """The loop closes inside recserve: feedback recorded by the server, `recserve retrain` on its state,
    version 2 swapped in by polling while callers keep calling."""
    import random

    from recserve.client import Event

    model_dir = model_repository(version_dir, tmp_path)
    settings = polling_with_writes(server_settings, model_dir, tmp_path, tokens, events_enabled=True)
    rng = random.Random(7)
    with (
        ServerThread(settings) as server,
        RecommenderClient(server.address, timeout_s=30, metadata=bearer(tokens.write)) as writer,
    ):
        users = server.running.service.model.users.ids[:40]
        items = server.running.service.model.items.ids
        writer.record_events([Event(user, rng.choice(items), "CLICK") for user in users for _ in range(6)])
        with Callers(server.address, concurrency=16) as callers:
            retrained = subprocess.run(
                [sys.executable, "-m", "recserve", "retrain", "--no-progress"]
                + ["--model-repository", str(model_dir.parent), "--state-dir", str(tmp_path / "state")],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert retrained.returncode == 0, retrained.stderr[-3000:]
            wait_for(lambda: served_version(server.address) == "2", timeout_s=120)
            wait_for(lambda: callers.versions["2"] > 0)
        assert callers.failures == []
        evaluation = writer.model_info().evaluation
        assert "previous_recall@10" in evaluation and "recall@10" in evaluation


def test_the_serving_threads_of_a_version_loaded_in_the_background_keep_the_servers_priority(
    poll_server: tuple[ServerThread, Path], version_dir: Path
) -> None:
    server, model_dir = poll_server
    add_version(version_dir, model_dir, "2")
    wait_for(lambda: served_version(server.address) == "2")
    with RecommenderClient(server.address, timeout_s=10) as client:
        client.recommend("user-1", k=5)
    serving = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id)
    niceness: dict[str, set[int]] = collections.defaultdict(set)
    for task in Path("/proc/self/task").iterdir():
        try:
            group = (task / "comm").read_text().strip().split("_")[0]
            if group in ("ann", "batch", "tf"):
                niceness[group].add(os.getpriority(os.PRIO_PROCESS, int(task.name)))
        except OSError:
            continue  # the thread ended meanwhile (short-lived helper threads come and go)
    # The loader runs at nice 10 (model_control.manager.LOADER_NICENESS); what it builds must not.
    assert dict(niceness) == {"ann": {serving}, "batch": {serving}, "tf": {serving}}
