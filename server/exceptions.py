"""Domain errors. Each maps to exactly one gRPC status in `recserve.server.errors`; none knows gRPC."""

from __future__ import annotations


class RecserveError(Exception):
    """Base class: the message is shown to the caller, so it must say what to change."""


class InvalidArgumentError(RecserveError):
    """The request is malformed or out of the configured limits."""


class NotFoundError(RecserveError):
    """The request names an id the model does not know."""


class QueueFullError(RecserveError):
    """The batcher's queue is at its limit; the caller should back off and retry."""


class OverloadedError(QueueFullError):
    """The queue cannot serve the request in time (its deadline, or the server's queue-wait bound)."""


class DeadlineExceededError(RecserveError):
    """The caller's deadline passed before the request could run."""


class UnavailableError(RecserveError):
    """The server cannot serve now (model loading, shutting down); retrying later may succeed."""


class ModelExecutionError(RecserveError):
    """A model or index call failed; only the batch it ran in is affected."""


class UnauthenticatedError(RecserveError):
    """The call carries no credential, or one the server does not know."""


class PermissionDeniedError(RecserveError):
    """The operation is not allowed on this server (a service that is off, a missing role)."""


class UnimplementedError(RecserveError):
    """The server does not implement the operation asked for (an optional part of a protocol)."""


class StartupError(Exception):
    """The server cannot start as configured (an unusable state directory, a damaged log): fix and restart."""
