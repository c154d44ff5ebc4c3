"""What to send to a method: one call of each kind of request, so that every example exercises them all.

The kinds: noise (random bytes, malformed wire data), messages of the method's type with extreme values,
those messages broken afterwards, plain valid messages (twice), and targeted requests where the method has
them (twice: they reach the deepest checks).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from hypothesis import strategies as st

from tests.fuzzing import messages, tensors, wire, writes
from tests.fuzzing.methods import Method

# Requests shaped for one method, beside the generic kinds every method gets.
TARGETED: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "/inference.GRPCInferenceService/ModelInfer": tensors.infer_requests,
    "/inference.GRPCInferenceService/ModelStreamInfer": tensors.infer_requests,
    "/recserve.v1.Events/RecordEvents": writes.record_events,
    "/recserve.v1.Catalog/UpsertItems": writes.upsert_items,
}
MOST_STREAMED = 3  # requests in one client stream
Call = tuple[bytes, ...]  # the request messages of one call


@cache
def kinds(method: Method) -> dict[str, st.SearchStrategy[bytes]]:
    """The kinds of request message `method` gets, by name."""
    extreme = messages.message(method.input_type)
    found = {
        "noise": wire.random_bytes(),
        "extreme": extreme,
        "broken": wire.corrupted(extreme),
        "plain": messages.plain(method.input_type),
    }
    found["plain again"] = found["plain"]  # the answers behind the checks: as many as the refusals
    targeted = TARGETED.get(method.path)
    if targeted is not None:
        found["targeted"] = found["targeted again"] = targeted()
    return found


@cache
def calls(method: Method) -> st.SearchStrategy[tuple[Call, ...]]:
    """One call of every kind: a single request each, or 0 to MOST_STREAMED for a client stream.

    Built once per method: hypothesis keeps what every strategy it has drawn from refers to, and a flatmap
    over the methods would otherwise build new ones, megabytes each, for every example.
    """

    def call(message: st.SearchStrategy[bytes]) -> st.SearchStrategy[Call]:
        if method.client_streaming:
            return st.lists(message, max_size=MOST_STREAMED).map(tuple)
        return message.map(lambda request: (request,))

    return st.tuples(*(call(message) for message in kinds(method).values()))
