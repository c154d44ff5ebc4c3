"""A request that does not decode is INVALID_ARGUMENT naming the field with invalid UTF-8, if that is why."""

from __future__ import annotations

import time

import grpc
import pytest

from recserve.server.decoding import invalid_utf8_field
from recserve.v1 import events_pb2, recommender_pb2


def test_the_path_of_the_invalid_field_is_found() -> None:
    request = events_pb2.RecordEventsRequest(
        events=[
            events_pb2.UserEvent(user_id="u", item_id="fine"),
            events_pb2.UserEvent(user_id="u", item_id="bXd"),
        ]
    )
    raw = request.SerializeToString().replace(b"bXd", b"b\xffd")
    assert invalid_utf8_field(events_pb2.RecordEventsRequest.DESCRIPTOR, raw) == "events[1].item_id"
    assert invalid_utf8_field(events_pb2.RecordEventsRequest.DESCRIPTOR, request.SerializeToString()) is None
    assert invalid_utf8_field(events_pb2.RecordEventsRequest.DESCRIPTOR, b"\xff\xff\xff") is None


def test_the_server_names_the_field(channel: grpc.Channel) -> None:
    recommend = channel.unary_unary("/recserve.v1.Recommender/Recommend")
    raw = (
        recommender_pb2.RecommendRequest(user_id="uXer", k=3).SerializeToString().replace(b"uXer", b"u\xc3er")
    )
    with pytest.raises(grpc.RpcError) as caught:
        recommend(raw, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "user_id is not valid UTF-8; string fields must be UTF-8"


def test_the_walk_is_linear_in_the_request_whatever_it_holds() -> None:
    # A varint never ends in continuation bytes: read as one number it grew a big integer bit by bit, a
    # quadratic walk (1 s for 200 kB; hours for a 4 MiB request, the event loop frozen all along).
    endless_varint = b"\xff" * 4_000_000
    # Two million tiny fields, the invalid string last: walking them all took a second.
    many_fields = b"\x30\x01" * 2_000_000 + b"\x0a\x01\xff"
    descriptor = recommender_pb2.RecommendRequest.DESCRIPTOR
    started = time.perf_counter()
    assert invalid_utf8_field(descriptor, endless_varint) is None
    assert invalid_utf8_field(descriptor, many_fields) is None
    assert invalid_utf8_field(descriptor, b"\x30\x01" * 1000 + b"\x0a\x01\xff") == "user_id"
    assert time.perf_counter() - started < 1.0


def test_a_request_of_endless_varints_is_refused_at_once(channel: grpc.Channel) -> None:
    recommend = channel.unary_unary("/recserve.v1.Recommender/Recommend")
    with pytest.raises(grpc.RpcError) as caught:
        recommend(b"\xff" * 4_000_000, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request is not a valid recserve.v1.RecommendRequest")
