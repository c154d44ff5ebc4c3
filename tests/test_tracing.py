"""Tracing through a real client -> server -> batcher -> pipeline, with the real SDK and in-memory exporters.

The server samples no new traces here (ratio 0), so every span it records exists because the caller's
`traceparent` said so: that checks propagation and parent-based sampling at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from recserve.client import RecommenderClient
from recserve.server.settings import ServerSettings
from recserve.server.telemetry.tracing import BatchAwareSampler
from tests.serving import ServerThread, broken_ranker

USERS = [f"user-{n}" for n in range(1, 9)]
RECOMMEND = "recserve.v1.Recommender/Recommend"


@pytest.fixture(scope="module")
def server_spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced_server(
    server_settings: ServerSettings, server_spans: InMemorySpanExporter
) -> Iterator[ServerThread]:
    """A server that samples only what callers sampled; 4 requests or 1 s make a batch."""
    provider = TracerProvider(sampler=BatchAwareSampler(0.0))
    provider.add_span_processor(SimpleSpanProcessor(server_spans))
    settings = server_settings.model_copy(update={"max_batch_size": 4, "max_queue_delay_us": 1_000_000})
    with ServerThread(settings, tracer_provider=provider) as running:
        yield running
    provider.shutdown()


@pytest.fixture
def caller() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """The calling application's own tracing, sampling everything."""
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider, spans
    provider.shutdown()


@pytest.fixture(autouse=True)
def _clear(server_spans: InMemorySpanExporter) -> None:
    server_spans.clear()


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def finished_spans(exporter: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    """All finished spans once `count` named `name` have ended.

    The client can see a call's status a moment before the server span around the call ends.
    """
    deadline = time.monotonic() + 10
    while len(by_name(spans := list(exporter.get_finished_spans()), name)) < count:
        assert time.monotonic() < deadline, f"expected {count} {name!r} spans, got {[s.name for s in spans]}"
        time.sleep(0.01)
    return spans


def recommend_in_span(provider: TracerProvider, address: str, user_id: str) -> ReadableSpan:
    """Call Recommend inside a fresh caller span (a new trace); returns that span."""
    with provider.get_tracer("caller").start_as_current_span(f"caller {user_id}") as span:
        with RecommenderClient(address, timeout_s=30) as client:
            client.recommend(user_id)
    return span


def recommend_batch_of_four(provider: TracerProvider, address: str) -> list[ReadableSpan]:
    """Four concurrent callers, each its own trace, served by one batch (max_batch_size 4)."""
    spans: list[ReadableSpan] = []
    threads = [
        threading.Thread(target=lambda u=user: spans.append(recommend_in_span(provider, address, u)))
        for user in USERS[:4]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return spans


def test_span_tree_of_one_batch_serving_four_traces(traced_server, server_spans, caller) -> None:
    provider, _ = caller
    callers = recommend_batch_of_four(provider, traced_server.address)
    spans = finished_spans(server_spans, RECOMMEND, 4)

    requests = by_name(spans, RECOMMEND)
    assert len(requests) == 4
    caller_ids = {(c.context.trace_id, c.context.span_id) for c in callers}
    assert {(r.context.trace_id, r.parent.span_id) for r in requests} == caller_ids
    for request in requests:
        assert request.kind is SpanKind.SERVER
        assert request.parent.is_remote
        assert request.attributes["rpc.system"] == "grpc"
        assert request.attributes["rpc.service"] == "recserve.v1.Recommender"
        assert request.attributes["rpc.method"] == "Recommend"
        assert request.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        assert request.status.status_code is StatusCode.UNSET

    (batch,) = by_name(spans, "batch")
    assert batch.parent is None, "a batch is its own trace, linked to the requests it served"
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (r.context.trace_id, r.context.span_id) for r in requests
    }
    assert batch.attributes["recserve.batch.size"] == 4
    assert batch.attributes["recserve.batch.traced_requests"] == 4
    assert batch.attributes["recserve.model.name"] == "recommender"
    assert batch.attributes["recserve.model.version"] == "1"
    queue_us = (
        batch.attributes["recserve.batch.queue_us.mean"],
        batch.attributes["recserve.batch.queue_us.max"],
    )
    assert 0 <= queue_us[0] <= queue_us[1]

    queues = by_name(spans, "queue")
    assert sorted(q.parent.span_id for q in queues) == sorted(r.context.span_id for r in requests)
    for queue in queues:
        assert [link.context.span_id for link in queue.links] == [batch.context.span_id]
        assert queue.end_time <= batch.start_time + 1_000_000  # the wait ends as the batch starts

    stages = [s for s in spans if s.parent is not None and s.parent.span_id == batch.context.span_id]
    assert [s.name for s in sorted(stages, key=lambda s: s.start_time)] == [
        "history",
        "user_tower",
        "ann",
        "ranker",
    ]
    assert all(s.context.trace_id == batch.context.trace_id for s in stages)
    assert by_name(stages, "user_tower")[0].attributes["recserve.stage.rows"] == 4
    assert by_name(stages, "ranker")[0].attributes["recserve.stage.rows"] >= 4 * 10


def test_unsampled_callers_leave_no_spans(traced_server, server_spans) -> None:
    recommend_batch_of_four(TracerProvider(sampler=ALWAYS_OFF), traced_server.address)  # flags 00
    assert server_spans.get_finished_spans() == ()


def test_calls_without_trace_context_follow_the_server_ratio(traced_server, server_spans) -> None:
    with RecommenderClient(traced_server.address, timeout_s=30) as client:
        client.recommend(USERS[0])
    assert server_spans.get_finished_spans() == ()  # ratio 0 on the server


def test_caller_errors_are_not_server_faults(traced_server, server_spans, caller) -> None:
    provider, _ = caller
    with provider.get_tracer("caller").start_as_current_span("bad k"):
        with RecommenderClient(traced_server.address, timeout_s=30) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.recommend(USERS[0], k=100_000)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (request,) = by_name(finished_spans(server_spans, RECOMMEND, 1), RECOMMEND)
    assert request.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert request.status.status_code is StatusCode.UNSET


def test_failed_batch_marks_request_and_batch_spans_error(traced_server, server_spans, caller) -> None:
    provider, _ = caller
    with broken_ranker(traced_server), provider.get_tracer("caller").start_as_current_span("doomed"):
        with RecommenderClient(traced_server.address, timeout_s=30) as client:
            with pytest.raises(grpc.RpcError):
                client.recommend(USERS[0])
    spans = finished_spans(server_spans, RECOMMEND, 1)
    (request,) = by_name(spans, RECOMMEND)
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    (batch,) = by_name(spans, "batch")
    assert batch.status.status_code is StatusCode.ERROR
    assert "ranker exploded" in batch.status.description
    assert [e.name for e in batch.events] == ["exception"]


def test_health_checks_make_no_spans(traced_server, server_spans, caller) -> None:
    provider, _ = caller
    with provider.get_tracer("caller").start_as_current_span("probe"):
        with RecommenderClient(traced_server.address, timeout_s=30) as client:
            assert client.health() == "SERVING"
    assert server_spans.get_finished_spans() == ()


def test_sampler_follows_parents_ratio_and_links() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

    def context(sampled: bool) -> SpanContext:
        return SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0x01 if sampled else 0x00))

    def decide(sampler, parent=None, links=None) -> Decision:
        ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        return sampler.should_sample(ctx, 0xABC, "span", links=links).decision

    never, always = BatchAwareSampler(0.0), BatchAwareSampler(1.0)
    assert decide(never) is Decision.DROP
    assert decide(always) is Decision.RECORD_AND_SAMPLE
    assert decide(never, parent=context(True)) is Decision.RECORD_AND_SAMPLE
    assert decide(always, parent=context(False)) is Decision.DROP
    assert decide(never, links=[Link(context(False)), Link(context(True))]) is Decision.RECORD_AND_SAMPLE
    assert decide(always, links=[Link(context(False))]) is Decision.DROP


def test_new_traces_are_decided_before_any_span_exists() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import Decision

    assert BatchAwareSampler(0.0).sample_new_trace() is None
    always = BatchAwareSampler(1.0)
    context = always.sample_new_trace()
    assert context is not None
    assert not trace.get_current_span(context).get_span_context().is_valid, "a new trace: no parent"
    assert BatchAwareSampler(0.0).should_sample(context, 0xABC, "rpc").decision is Decision.RECORD_AND_SAMPLE
    sampled = sum(BatchAwareSampler(0.25).sample_new_trace() is not None for _ in range(4000))
    assert 800 < sampled < 1200


def test_a_caller_that_gives_up_ends_its_spans(traced_server, server_spans, caller) -> None:
    provider, _ = caller
    with provider.get_tracer("caller").start_as_current_span("impatient"):
        with RecommenderClient(traced_server.address) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.recommend(USERS[0], timeout_s=0.2)  # a lone request waits 1 s for its batch
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    spans = finished_spans(server_spans, RECOMMEND, 1)
    deadline = time.monotonic() + 5
    while not by_name(spans, "queue") and time.monotonic() < deadline:  # ends when the batch would start
        time.sleep(0.05)
        spans = list(server_spans.get_finished_spans())
    (request,) = by_name(spans, RECOMMEND)
    assert request.attributes["rpc.grpc.status_code"] in (
        grpc.StatusCode.CANCELLED.value[0],
        grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    )
    (queue,) = by_name(spans, "queue")
    assert queue.attributes["recserve.dropped"] in ("cancelled", "deadline exceeded")
    assert not by_name(spans, "batch"), "nobody was left to serve: no batch ran"


def test_a_traced_write_has_its_store_step_as_a_child(
    server_settings: ServerSettings, tmp_path, caller, tokens
) -> None:  # noqa: ANN001
    from recserve.client import Event, Item
    from recserve.server.settings import StateSettings
    from tests.tokens import bearer

    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=BatchAwareSampler(0.0))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = server_settings.model_copy(
        update={
            "events_enabled": True,
            "catalog_enabled": True,
            "auth": tokens.settings(),
            "state": StateSettings(state_dir=tmp_path),
        }
    )
    caller_provider, _ = caller
    with (
        ServerThread(settings, tracer_provider=provider) as server,
        RecommenderClient(server.address, metadata=bearer(tokens.write)) as client,
    ):
        with caller_provider.get_tracer("test").start_as_current_span("caller"):
            client.record_events([Event("traced-user", "item-1"), Event("traced-user", "item-2")])
            client.upsert_items([Item("traced-item", ("tag-1",))])
        finished = finished_spans(spans, "recserve.v1.Catalog/UpsertItems", 1)
    provider.shutdown()
    for method, steps in (
        ("recserve.v1.Events/RecordEvents", ["store"]),
        ("recserve.v1.Catalog/UpsertItems", ["embed", "store"]),
    ):
        (rpc,) = by_name(finished, method)
        children = [s for s in finished if s.parent is not None and s.parent.span_id == rpc.context.span_id]
        assert [s.name for s in sorted(children, key=lambda s: s.start_time)] == steps
    (store,) = [s for s in by_name(finished, "store") if s.attributes["recserve.state.records"] == 2]
    assert store.context.trace_id == by_name(finished, "recserve.v1.Events/RecordEvents")[0].context.trace_id
