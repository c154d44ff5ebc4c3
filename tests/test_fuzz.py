"""Property-based fuzzing of every RPC of every service against a real server, with a fixed seed.

Every method the descriptors name (so a new one is fuzzed without a change here) gets, in every example, one
call of each kind: raw bytes, a message of its type with extreme values, a broken one, plain valid ones and,
where it has them, targeted requests (tests/fuzzing). Every answer must be a status its docs allow, no call
may hang, the server must still be SERVING after every example, and a normal Recommend must answer at the
end exactly as at the start.
bench/fuzz.py runs the same strategies 100,000 times against a `recserve serve` process and watches its RSS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings

from recserve.server.frontend import native_available
from recserve.server.settings import ServerSettings, StateSettings
from recserve.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from tests.fuzzing import values
from tests.fuzzing.methods import Method, documented, invoke, served_methods
from tests.fuzzing.strategies import calls
from tests.serving import ServerThread

METHODS = served_methods()
CALL_TIMEOUT_S = 20.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", -1)]
EXAMPLES = 10  # each example is one call of every kind of request (tests/fuzzing/strategies.py), 5 to 7 calls
# Methods with the most logic behind their decoding get more examples.
EXAMPLES_BY_PATH = {
    "/inference.GRPCInferenceService/ModelInfer": 60,
    "/recserve.v1.Events/RecordEvents": 30,
    "/recserve.v1.Catalog/UpsertItems": 20,
    "/recserve.v1.Recommender/Recommend": 30,
    "/recserve.v1.Recommender/Score": 20,
}
FRONTENDS = [
    "aio",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="grpc++ not built")),
]
BASELINE = recommender_pb2.RecommendRequest(user_id=values.BASE_USERS[0], k=10, ignore_history=True)


def fuzzing_settings(settings_: ServerSettings, frontend: str, state_dir: object) -> ServerSettings:
    """Both write services on, without tokens (the fuzzer sends none), state in its own directory."""
    update: dict[str, object] = {
        "frontend": frontend,
        "events_enabled": True,
        "catalog_enabled": True,
        "state": StateSettings(state_dir=state_dir),
    }
    update["auth"] = settings_.auth.model_copy(update={"allow_unauthenticated_writes": True})
    return settings_.model_copy(update=update)


@pytest.fixture(scope="module", params=FRONTENDS)
def fuzz_server(
    request: pytest.FixtureRequest, server_settings: ServerSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, recommender_pb2.RecommendResponse]]:
    """A server with every service enabled, and its answer to BASELINE before any fuzzing."""
    state_dir = tmp_path_factory.mktemp(f"fuzz-state-{request.param}")
    with ServerThread(fuzzing_settings(server_settings, request.param, state_dir)) as running:
        with grpc.insecure_channel(running.address) as channel:
            baseline = recommender_pb2_grpc.RecommenderStub(channel).Recommend(BASELINE, timeout=30)
        yield running, baseline


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server: tuple[ServerThread, object]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server[0].address, options=CHANNEL_OPTIONS) as channel:
        yield channel


def assert_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recserve.v1.Recommender", "recserve.v1.Events", "recserve.v1.Catalog"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_every_service_the_server_lists_is_fuzzed(fuzz_channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(fuzz_channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    listed = {service.name for answer in answers for service in answer.list_services_response.service}
    assert listed == {method.service for method in METHODS}


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.path)
def test_every_answer_is_a_documented_status(fuzz_channel: grpc.Channel, method: Method) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES_BY_PATH.get(method.path, EXAMPLES),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(calls(method))
    def fuzz(batch: tuple[tuple[bytes, ...], ...]) -> None:
        for sent in batch:
            outcome = invoke(fuzz_channel, method, sent, CALL_TIMEOUT_S)
            seen[outcome.code.name] += 1
            assert not outcome.hung, f"{method.path} did not answer within {CALL_TIMEOUT_S:.0f}s"
            assert documented(method, sent, outcome), (
                f"{method.path}: {outcome.code.name} {outcome.details!r}"
            )
        assert_serving(fuzz_channel)

    fuzz()
    # The examples reach past decoding: some are answered, some refused as bad input (a method recserve does
    # not implement refuses everything; model control, off on the fuzzing server, every request that decodes).
    allowed = method.allowed()
    if grpc.StatusCode.UNIMPLEMENTED in allowed:
        expected = {"UNIMPLEMENTED"}
    elif grpc.StatusCode.OK not in allowed:
        expected = {"PERMISSION_DENIED", "INVALID_ARGUMENT"}
    else:
        expected = {"OK", "INVALID_ARGUMENT"}
    assert expected <= set(seen), dict(seen)


def test_recommend_answers_as_before_fuzzing(
    fuzz_server: tuple[ServerThread, recommender_pb2.RecommendResponse], fuzz_channel: grpc.Channel
) -> None:
    _, baseline = fuzz_server
    assert_serving(fuzz_channel)
    # Items the fuzzer upserted may rank now; once deleted, the catalog is the model's own again.
    catalog = catalog_pb2_grpc.CatalogStub(fuzz_channel)
    catalog.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=values.WRITTEN_ITEMS), timeout=30)
    answer = recommender_pb2_grpc.RecommenderStub(fuzz_channel).Recommend(BASELINE, timeout=30)
    assert [item.item_id for item in answer.items] == [item.item_id for item in baseline.items]
    assert [item.score for item in answer.items] == pytest.approx(
        [item.score for item in baseline.items], abs=1e-5
    )
    assert len(answer.items) == BASELINE.k
