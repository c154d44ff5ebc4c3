"""Bearer tokens and roles, against a real server: who may read, who may write, and nothing leaks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from recserve.client import Event, RecommenderClient
from recserve.inference import grpc_service_pb2 as inference_pb2
from recserve.inference import grpc_service_pb2_grpc as inference_grpc
from recserve.server.auth import Role, TokenStore, new_token, token_entry
from recserve.server.auth.tokens import TokensFileError, parse_tokens
from recserve.server.exceptions import StartupError
from recserve.server.settings import AuthSettings, ServerSettings, StateSettings
from recserve.v1 import events_pb2, events_pb2_grpc
from tests.serving import ServerThread
from tests.tokens import Tokens, bearer


def write_tokens(path: Path, entries: list[dict[str, object]]) -> None:
    path.write_text(yaml.safe_dump({"tokens": entries}))


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("tokens: [", "not valid YAML"),
        ("users: []", "top-level `tokens:` list"),
        ("tokens: [{name: a, sha256: abc, roles: [read]}]", "tokens[0].sha256 must be 64 hex digits"),
        (f"tokens: [{{name: a, sha256: {'ab' * 32}, roles: [root]}}]", "tokens[0].roles must be"),
        (f"tokens: [{{sha256: {'ab' * 32}, roles: [read]}}]", "tokens[0].name must be"),
    ],
)
def test_a_bad_tokens_file_is_refused_saying_where(text: str, complaint: str) -> None:
    with pytest.raises(TokensFileError, match=complaint.replace("[", r"\[")):
        parse_tokens(text, "tokens.yaml")


def test_a_changed_tokens_file_is_reread_and_a_broken_one_keeps_the_last_tokens(tmp_path: Path) -> None:
    path, old, new = tmp_path / "tokens.yaml", new_token(), new_token()
    write_tokens(path, [token_entry("old", old, [Role.WRITE])])
    store = TokenStore(path, reload_interval_s=0.05)
    assert store.find(old).name == "old" and store.find(new) is None
    write_tokens(path, [token_entry("new", new, [Role.READ])])
    time.sleep(0.1)
    assert store.find(old) is None and store.find(new).name == "new"
    path.write_text("tokens: {broken")
    time.sleep(0.1)
    assert store.find(new).name == "new"
    time.sleep(0.1)
    assert store.find(new).name == "new"
    assert store.reload_failures == 1, "the same broken content is refused (and logged) once"


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """File systems stamp mtimes coarsely: two writes in one tick look alike by size and time."""
    path, first, second = tmp_path / "tokens.yaml", new_token(), new_token()
    write_tokens(path, [token_entry("first", first, [Role.WRITE])])
    before = path.stat()
    store = TokenStore(path, reload_interval_s=0.05)
    write_tokens(path, [token_entry("first", second, [Role.WRITE])])  # same length: tokens are fixed-size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    time.sleep(0.1)
    assert store.find(first) is None and store.find(second).name == "first"


def test_admin_grants_every_role_and_the_others_only_their_own(tmp_path: Path) -> None:
    path, reader, operator = tmp_path / "tokens.yaml", new_token(), new_token()
    write_tokens(path, [token_entry("r", reader, [Role.READ]), token_entry("o", operator, [Role.ADMIN])])
    store = TokenStore(path)
    assert [store.find(reader).grants(role) for role in Role] == [True, False, False]
    assert all(store.find(operator).grants(role) for role in Role)


@pytest.fixture(scope="module")
def secured(server_settings: ServerSettings, tokens: Tokens, tmp_path_factory) -> Iterator[ServerThread]:  # noqa: ANN001
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "catalog_enabled": True,
            "auth": tokens.settings(require_for_reads=True),
            "state": StateSettings(state_dir=tmp_path_factory.mktemp("auth-state")),
        }
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def channel(secured: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured.address) as opened:
        yield opened


def record(channel: grpc.Channel, user_id: str, metadata: tuple = ()) -> events_pb2.RecordEventsResponse:
    request = events_pb2.RecordEventsRequest(
        events=[events_pb2.UserEvent(user_id=user_id, item_id="item-1", type=events_pb2.CLICK)]
    )
    return events_pb2_grpc.EventsStub(channel).RecordEvents(request, metadata=metadata, timeout=10)


def status_of(call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def test_a_write_without_a_token_is_unauthenticated_and_changes_nothing(
    channel: grpc.Channel, secured: ServerThread, tokens: Tokens
) -> None:
    code, details = status_of(lambda: record(channel, "no-token-user"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in details and "`write` role" in details
    code, details = status_of(lambda: record(channel, "no-token-user", bearer(new_token())))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "not known" in details
    with RecommenderClient(secured.address, metadata=bearer(tokens.read_write)) as client:
        assert client.user_history("no-token-user") == []


def test_a_token_without_the_role_is_permission_denied(channel: grpc.Channel, tokens: Tokens) -> None:
    code, details = status_of(lambda: record(channel, "reader-user", bearer(tokens.read)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "token 'reader' lacks the `write` role that recserve.v1.Events/RecordEvents needs"


@pytest.mark.parametrize("holder", ["write", "admin", "read_write"])
def test_write_and_admin_tokens_write(channel: grpc.Channel, tokens: Tokens, holder: str) -> None:
    assert record(channel, f"{holder}-user", bearer(getattr(tokens, holder))).accepted == 1


def test_the_scheme_is_case_insensitive(channel: grpc.Channel, tokens: Tokens) -> None:
    metadata = (("authorization", f"bearer {tokens.write}"),)
    assert record(channel, "lower-case-user", metadata).accepted == 1


def test_reads_need_the_read_role_when_required(secured: ServerThread, tokens: Tokens) -> None:
    with RecommenderClient(secured.address, timeout_s=10) as anonymous:
        code, _ = status_of(lambda: anonymous.recommend("user-1", k=3))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with RecommenderClient(secured.address, timeout_s=10, metadata=bearer(tokens.write)) as writer:
        code, details = status_of(lambda: writer.recommend("user-1", k=3))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "`read` role" in details
    with RecommenderClient(secured.address, timeout_s=10, metadata=bearer(tokens.read)) as reader:
        assert len(reader.recommend("user-1", k=3).items) == 3


def test_the_inference_protocol_needs_the_read_role_too(channel: grpc.Channel, tokens: Tokens) -> None:
    stub = inference_grpc.GRPCInferenceServiceStub(channel)
    code, _ = status_of(lambda: stub.ServerMetadata(inference_pb2.ServerMetadataRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    answer = stub.ServerMetadata(inference_pb2.ServerMetadataRequest(), metadata=bearer(tokens.read))
    assert answer.name == "recserve"


def test_model_control_authenticates_before_saying_it_is_off(channel: grpc.Channel, tokens: Tokens) -> None:
    stub = inference_grpc.GRPCInferenceServiceStub(channel)
    request = inference_pb2.RepositoryModelUnloadRequest(model_name="recommender")
    code, details = status_of(lambda: stub.RepositoryModelUnload(request, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "model_control_mode" not in details
    code, details = status_of(lambda: stub.RepositoryModelUnload(request, metadata=bearer(tokens.read)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "`admin` role" in details
    code, details = status_of(lambda: stub.RepositoryModelUnload(request, metadata=bearer(tokens.admin)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "model_control_mode: explicit" in details


def test_health_and_reflection_stay_open(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "recserve.v1.Events" in [service.name for service in answer.list_services_response.service]


def test_tokens_added_and_revoked_in_the_file_apply_without_a_restart(
    channel: grpc.Channel, tokens: Tokens
) -> None:
    original = tokens.file.read_text()
    fresh = new_token()
    document = yaml.safe_load(original)
    entries = [entry for entry in document["tokens"] if entry["name"] != "writer"]
    try:
        write_tokens(tokens.file, [*entries, token_entry("fresh", fresh, [Role.WRITE])])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                record(channel, "fresh-user", bearer(fresh))
                break
            except grpc.RpcError:
                time.sleep(0.05)
        assert record(channel, "fresh-user", bearer(fresh)).accepted == 1
        code, _ = status_of(lambda: record(channel, "revoked-user", bearer(tokens.write)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        tokens.file.write_text(original)
        time.sleep(0.2)


def test_write_services_without_tokens_do_not_start(server_settings: ServerSettings, tmp_path: Path) -> None:
    settings = server_settings.model_copy(
        update={"events_enabled": True, "state": StateSettings(state_dir=tmp_path)}
    )
    with pytest.raises(StartupError, match="no tokens are configured, so anyone could write"):
        ServerThread(settings).start()


def test_unauthenticated_writes_must_be_asked_for(server_settings: ServerSettings, tmp_path: Path) -> None:
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "auth": AuthSettings(allow_unauthenticated_writes=True),
            "state": StateSettings(state_dir=tmp_path),
        }
    )
    with ServerThread(settings) as running, RecommenderClient(running.address) as client:
        assert client.record_events([Event("open-user", "item-1")]).accepted == 1


def test_tokens_never_reach_logs_spans_or_metrics(
    server_settings: ServerSettings, tokens: Tokens, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "auth": tokens.settings(require_for_reads=True),
            "state": StateSettings(state_dir=tmp_path),
        }
    )
    caplog.set_level("DEBUG")
    unknown = new_token()
    with ServerThread(settings, tracer_provider=provider) as running:
        with grpc.insecure_channel(running.address) as channel:
            for token in (tokens.read, tokens.write, unknown):
                try:
                    record(channel, "leak-user", bearer(token))
                except grpc.RpcError:
                    pass
        import urllib.request

        metrics = urllib.request.urlopen(running.metrics_url, timeout=10).read().decode()
    provider.shutdown()
    exported = repr([(span.name, dict(span.attributes), span.events) for span in spans.get_finished_spans()])
    assert "RecordEvents" in exported
    for token in (tokens.read, tokens.write, unknown):
        assert token not in caplog.text and token not in exported and token not in metrics
    assert "Bearer" not in exported and "authorization" not in metrics
