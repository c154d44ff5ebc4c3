"""What one call of a load test came to, in ghz's words: Go's status names and error texts.

ghz is written in Go, so its reports spell statuses (`NotFound`) and errors (`rpc error: code = ... desc =
...`) as Go's gRPC does; both load loops (grpc.aio in `runner`, grpc++ in `native_channel`) record calls
through these functions so that their reports read the same.
"""

from __future__ import annotations

import grpc
import grpc.aio

# gRPC status codes as Go spells them (codes.Code.String()), which is what ghz reports.
GO_STATUS_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
# What Go's gRPC says for calls cut off by closing the connection (ghz's default --duration-stop=close).
CLOSING_ERROR = "rpc error: code = Canceled desc = grpc: the client connection is closing"
# Python says "Deadline Exceeded" where Go (and so ghz) says "context deadline exceeded".
_GO_DETAILS = {(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"): "context deadline exceeded"}

CallResult = tuple[int, int, str, str]
"""(end time in perf_counter ns, latency ns, Go status name, error text or "")."""


def status_name(code: grpc.StatusCode) -> str:
    """The Go spelling of a status code, e.g. NOT_FOUND -> "NotFound"."""
    return GO_STATUS_NAMES.get(code, "Unknown")


def error_text(error: grpc.aio.AioRpcError) -> str:
    """The error as Go's status.Error prints it: `rpc error: code = NotFound desc = ...`."""
    return go_error_text(error.code(), error.details() or "")


def go_error_text(code: grpc.StatusCode, details: str) -> str:
    """`rpc error: code = NotFound desc = ...`, with Go's wording where Python's differs."""
    details = _GO_DETAILS.get((code, details), details)
    return f"rpc error: code = {status_name(code)} desc = {details}"


_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The status code with this number (UNKNOWN for numbers gRPC does not define)."""
    return _CODE_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def native_result(record: tuple[int, int, int, str]) -> CallResult:
    """A result from the native closed loop's (end ns, latency ns, code, details); code -1 = cut off."""
    end, latency, code, details = record
    if code == 0:
        return end, latency, "OK", ""
    if code < 0:
        return end, latency, "Canceled", CLOSING_ERROR
    status = status_code(code)
    return end, latency, status_name(status), go_error_text(status, details)
