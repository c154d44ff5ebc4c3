"""A request that does not decode is INVALID_ARGUMENT naming the field with invalid UTF-8, if that is why."""

from __future__ import annotations

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
