"""The feedback loop against a real server: every acknowledged write is in the very next answer.

One server with the write services on (memory backend, fsync always) over the session's tiny model; the
session's shared server has them off, as by default.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recserve.client import Event, Item, RecommenderClient
from recserve.client.cli import build_client_parser
from recserve.server.settings import ServerSettings, StateSettings
from tests.serving import ServerThread
from tests.tokens import Tokens, bearer


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live-state")


@pytest.fixture(scope="module")
def live_server(server_settings: ServerSettings, state_dir: Path, tokens: Tokens) -> Iterator[ServerThread]:
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "catalog_enabled": True,
            "auth": tokens.settings(),
            "state": StateSettings(state_dir=state_dir, fsync="always"),
        }
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def client(live_server: ServerThread, tokens: Tokens) -> Iterator[RecommenderClient]:
    with RecommenderClient(live_server.address, timeout_s=30, metadata=bearer(tokens.write)) as connected:
        yield connected


@pytest.fixture(scope="module")
def base_tags(version_dir: Path) -> list[set[str]]:
    """Tag names of each base item, by row (item-1 first)."""
    names = (version_dir / "tag_ids.txt").read_text().splitlines()
    return [{names[index - 1] for index in row if index} for row in np.load(version_dir / "item_tags.npy")]


def ids(recommendation) -> list[str]:  # noqa: ANN001
    return [item.item_id for item in recommendation.items]


def test_writes_are_refused_unless_enabled(server_address: str) -> None:
    with RecommenderClient(server_address) as default_server:
        for call in (
            lambda: default_server.record_events([Event("u", "item-1")]),
            lambda: default_server.upsert_items([Item("x", ("tag-1",))]),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "_enabled: true" in refused.value.details()


def test_history_is_the_next_requests_context_and_is_excluded(client: RecommenderClient) -> None:
    user = "live-newcomer"
    assert client.recommend(user, k=10).cold_start
    seen = ids(client.recommend("user-7", k=5))
    recorded = client.record_events(
        [Event(user, item, "CLICK") for item in seen] + [Event(user, "no-such", "VIEW")]
    )
    assert recorded.accepted == 6 and recorded.unknown_item_ids == ["no-such"]

    after = client.recommend(user, k=50)
    assert not after.cold_start, "the stored history is the context of an unknown user"
    assert not set(ids(after)) & set(seen), "items in the history are not recommended again"
    assert set(seen) <= set(ids(client.recommend(user, k=200, include_recent_items=True))) | set(seen)
    assert [event.item_id for event in client.user_history(user)][-6:] == [*seen, "no-such"]

    ignored = client.recommend(user, k=10, ignore_history=True)
    assert ignored.cold_start and ids(ignored) == ids(client.recommend("another-newcomer", k=10))
    assert (
        client.score(user, ["item-1"], ignore_history=True).scores
        == client.score("nobody", ["item-1"]).scores
    )
    assert client.score(user, ["item-1"]).scores != client.score(user, ["item-1"], ignore_history=True).scores


def test_dislike_removes_an_item_until_a_later_positive_event(client: RecommenderClient) -> None:
    user = "live-disliker"
    liked = ids(client.recommend("user-11", k=3))
    client.record_events([Event(user, item, "LIKE", 1_000 + n) for n, item in enumerate(liked)])
    target = liked[0]
    with_it = client.score(user, [target]).scores
    assert target in ids(client.recommend(user, k=100, include_recent_items=True))

    client.record_events([Event(user, target, "DISLIKE", 2_000)])
    assert target not in ids(client.recommend(user, k=200, include_recent_items=True))
    assert client.score(user, [target]).scores != with_it, "a disliked item leaves the context"

    client.record_events([Event(user, target, "PURCHASE", 3_000)])
    assert target in ids(client.recommend(user, k=100, include_recent_items=True))


def test_cold_start_items_reach_users_whose_history_matches_their_tags(
    client: RecommenderClient, version_dir: Path, base_tags: list[set[str]]
) -> None:
    cold = [json.loads(line) for line in (version_dir / "cold_start_items.jsonl").read_text().splitlines()]
    assert client.upsert_items([Item(item["item_id"], tuple(item["tags"])) for item in cold]) == len(cold)
    rng = np.random.default_rng(0)
    matching = unrelated = tried = 0
    for item in cold[:12]:
        tags = set(item["tags"])
        similar = [f"item-{row + 1}" for row, own in enumerate(base_tags) if tags <= own]
        other = [f"item-{row + 1}" for row, own in enumerate(base_tags) if not tags & own]
        if len(similar) < 5:
            continue
        tried += 1
        for history, count in ((similar, "matching"), (other, "unrelated")):
            recent = list(rng.choice(history, size=min(10, len(history)), replace=False))
            found = item["item_id"] in ids(
                client.recommend(f"cold-{count}-{tried}", k=50, recent_item_ids=recent)
            )
            matching += found and count == "matching"
            unrelated += found and count == "unrelated"
    assert tried >= 5
    assert matching >= 0.7 * tried, f"cold items reached {matching} of {tried} users with their tags"
    assert unrelated <= 0.2 * tried, f"cold items reached {unrelated} of {tried} users with other tastes"
    assert client.get_item(cold[0]["item_id"]).tags == tuple(cold[0]["tags"])
    neighbours = client.similar_items(cold[0]["item_id"], k=5)
    assert len(neighbours.items) == 5 and cold[0]["item_id"] not in ids(neighbours)


def test_a_deleted_item_is_never_returned_and_can_come_back(client: RecommenderClient) -> None:
    top = ids(client.recommend("user-3", k=5))
    gone = top[0]
    deleted = client.delete_items([gone, "never-existed"])
    assert deleted.deleted == 1 and deleted.unknown_item_ids == ["never-existed"]
    assert gone not in ids(client.recommend("user-3", k=200))
    assert all(gone not in ids(client.similar_items(item, k=50)) for item in top[1:])
    for call in (lambda: client.score("user-3", [gone]), lambda: client.get_item(gone)):
        with pytest.raises(grpc.RpcError) as missing:
            call()
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(ids(client.recommend("user-3", k=200))) == 200, "k stays full"

    client.upsert_items([Item(gone, ("tag-1",))])
    assert client.get_item(gone).tags == ("tag-1",)
    assert client.score("user-3", [gone]).scores


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda c: c.record_events([Event("u", "item-1"), Event("", "item-2")]), "events[1].user_id"),
        (lambda c: c.record_events([Event("u", "x" * 300)]), "events[0].item_id"),
        (lambda c: c.upsert_items([Item("ok", ()), Item("bad", ("t",) * 100)]), "items[1].tags"),
        (lambda c: c.delete_items([""]), "item_ids[0]"),
    ],
)
def test_an_invalid_write_names_the_field_and_changes_nothing(
    client: RecommenderClient, call, field: str
) -> None:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as rejected:
        call(client)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details().startswith(field)
    assert client.user_history("u") == []
    with pytest.raises(grpc.RpcError):
        client.get_item("ok")


def test_an_unspecified_event_type_is_rejected(
    client: RecommenderClient, live_server: ServerThread, tokens: Tokens
) -> None:
    stub = live_server.address  # the raw message: the client refuses to build an unspecified type
    from recserve.v1 import events_pb2, events_pb2_grpc

    with grpc.insecure_channel(stub) as channel:
        request = events_pb2.RecordEventsRequest(events=[events_pb2.UserEvent(user_id="u", item_id="item-1")])
        with pytest.raises(grpc.RpcError) as rejected:
            events_pb2_grpc.EventsStub(channel).RecordEvents(
                request, timeout=10, metadata=bearer(tokens.write)
            )
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].type is EVENT_TYPE_UNSPECIFIED" in rejected.value.details()


def test_forgetting_a_user_removes_them_from_disk(client: RecommenderClient, state_dir: Path) -> None:
    user = "forget-me-7a3f"
    client.record_events([Event(user, "item-5"), Event(user, "item-6", "PURCHASE")])
    assert user.encode() in b"".join(path.read_bytes() for path in state_dir.iterdir())
    assert client.delete_user_history(user) == 2
    assert client.user_history(user) == []
    assert user.encode() not in b"".join(path.read_bytes() for path in state_dir.iterdir())


def test_an_index_rebuild_under_load_fails_no_request(
    client: RecommenderClient, live_server: ServerThread
) -> None:
    client.upsert_items([Item(f"rebuild-{n}", (f"tag-{n % 50 + 1}",)) for n in range(200)])
    users = [f"user-{n}" for n in range(1, 21)]
    before = {user: ids(client.recommend(user, k=10)) for user in users}
    failures: list[Exception] = []
    answered = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal answered
        with RecommenderClient(live_server.address, timeout_s=30) as reader:
            while not stop.is_set():
                try:
                    reader.recommend(users[answered % len(users)], k=10)
                    answered += 1
                except grpc.RpcError as error:
                    failures.append(error)
                    return

    async def rebuild() -> None:
        await service.rebuilder.trigger()

    readers = [threading.Thread(target=read, daemon=True) for _ in range(4)]
    service = live_server.running.service
    generation = service.catalog.index_generation
    for thread in readers:
        thread.start()
    try:
        live_server.run(rebuild())
    finally:
        stop.set()
        for thread in readers:
            thread.join(30)
    assert not failures and answered > 0
    assert service.catalog.index_generation == generation + 1 and service.catalog.delta_size == 0
    after = {user: ids(client.recommend(user, k=10)) for user in users}
    overlap = np.mean([len(set(before[user]) & set(after[user])) / 10 for user in users])
    assert overlap >= 0.8, f"answers changed across the rebuild beyond ANN recall: {overlap:.2f}"


def test_live_state_metrics_are_exported(client: RecommenderClient, live_server: ServerThread) -> None:
    client.record_events([Event("metrics-user", "item-9")])
    text = urllib.request.urlopen(live_server.metrics_url, timeout=10).read().decode()
    for line in (
        'recserve_events_total{outcome="accepted"}',
        'recserve_catalog_changes_total{operation="upsert",outcome="accepted"}',
        "recserve_event_visibility_lag_ms_bucket",
        'recserve_state_backend_up{backend="memory"} 1.0',
        "recserve_catalog_delta_items{",
        "recserve_catalog_index_generation{",
        'recserve_index_rebuilds_total{model="recommender"',
        'recserve_compute_duration_us_total{model="recommender",stage="history"',
    ):
        assert line in text, f"{line} missing from /metrics"


@pytest.mark.parametrize(
    "method, field",
    [("/recserve.v1.Catalog/UpsertItems", "items"), ("/recserve.v1.Events/RecordEvents", "events")],
)
def test_a_call_far_over_its_limit_is_refused_before_it_is_converted(
    live_server: ServerThread, tokens: Tokens, method: str, field: str
) -> None:
    # Two million empty items (or events) in 4 MiB: the servicer converted each before the count was
    # checked, ~4 s of the event loop for one request (found by tests/test_fuzz.py).
    with grpc.insecure_channel(live_server.address) as channel:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as rejected:
            channel.unary_unary(method)(b"\x0a\x00" * 2_000_000, timeout=30, metadata=bearer(tokens.write))
        elapsed_s = time.perf_counter() - started
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details().startswith(f"{field} has 2000000 entries")
    assert elapsed_s < 1.5


@pytest.mark.parametrize("seconds", [253_402_300_800, -62_135_596_801, 2**63 - 1, -(2**63)])
def test_an_event_time_protobuf_cannot_hold_is_refused(
    live_server: ServerThread, tokens: Tokens, seconds: int
) -> None:
    # Stored, such a time made the user's GetUserHistory INTERNAL for good: protobuf's Timestamp holds
    # years 1 to 9999 only and refuses to be set outside them (found by tests/test_fuzz.py).
    from recserve.v1 import events_pb2, events_pb2_grpc

    user = f"time-traveller-{seconds}"
    event = events_pb2.UserEvent(user_id=user, item_id="item-1", type=events_pb2.CLICK)
    event.time.seconds = seconds
    with grpc.insecure_channel(live_server.address) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        with pytest.raises(grpc.RpcError) as rejected:
            stub.RecordEvents(
                events_pb2.RecordEventsRequest(events=[event]), timeout=10, metadata=bearer(tokens.write)
            )
        assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rejected.value.details().startswith("events[0].time is out of range")
        history = stub.GetUserHistory(
            events_pb2.GetUserHistoryRequest(user_id=user), timeout=10, metadata=bearer(tokens.write)
        )
    assert list(history.events) == []


def test_cli_upserts_a_file_larger_than_one_call_takes(
    client: RecommenderClient,
    live_server: ServerThread,
    tokens: Tokens,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A version's cold_start_items.jsonl may hold more items than state.max_items_per_call (1000)."""
    count = live_server.settings.state.max_items_per_call + 53
    rows = [{"item_id": f"bulk-{n}", "tags": ["bulk-tag"]} for n in range(count)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["upsert", "--target", live_server.address, "--token", tokens.write, "--json", "--file", str(path)]
    args = build_client_parser().parse_args(argv)
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"upserted": count}
    assert client.get_item(f"bulk-{count - 1}").tags == ("bulk-tag",)
