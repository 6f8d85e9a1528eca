"""Exceptions that carry a gRPC status, and the one place exceptions become status codes.

Servicers and plain modules raise; nothing calls ``context.abort`` except
:func:`status_for`'s caller (the interceptor in :mod:`milsil_server.app`). That way every error,
however unexpected, gets a deliberate code and a one-line message, never UNKNOWN.
"""

from __future__ import annotations

import grpc

from milsil.errors import CheckpointError, MilsilError, NotFoundError, UnavailableHereError


class ServiceError(Exception):
    """An error with an explicit gRPC status code."""

    code = grpc.StatusCode.INTERNAL


class FailedPrecondition(ServiceError):
    """The request is well-formed but the system is not in a state to run it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


# Trailing-metadata key of every RESOURCE_EXHAUSTED the server sends (documented in the
# .proto files): "busy" = the same request may succeed later (both clients wait and retry
# with jittered backoff up to their deadline); "never" = it can never fit (too large).
RETRY_KEY = "milsil-retry"


class ResourceExhausted(ServiceError):
    """Over a limit the request can never fit (size, count): final, send less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = "never"

    def __init__(self, message: str = "", reason: str = "too_large") -> None:
        super().__init__(message)
        self.reason = reason


class Busy(ResourceExhausted):
    """The server is busy (a queue is full): the same request may succeed later."""

    retry = "busy"

    def __init__(self, message: str = "", reason: str = "queue_full") -> None:
        super().__init__(message, reason)


class Unavailable(ServiceError):
    """The server is draining (shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "draining"


class Cancelled(ServiceError):
    """The client cancelled or the deadline passed while the request computed."""

    code = grpc.StatusCode.CANCELLED


class AlreadyExists(ServiceError):
    """A resource with the requested id exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ServiceError):
    """Missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line message for an exception raised by a handler."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc) or exc.code.name.lower()
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, CheckpointError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnavailableHereError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, MilsilError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, MemoryError):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "out of memory while serving the request; send smaller regions",
        )
    name = type(exc).__name__
    if "OutOfMemoryError" in name:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"device out of memory ({name}); send smaller regions",
        )
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error ({name}{': ' + text if text else ''}); see the server log",
    )


def rejection(exc: BaseException, code: grpc.StatusCode) -> tuple[str | None, str | None]:
    """``(retry, reason)`` of a refused request: the ``milsil-retry`` value ("busy" or
    "never", for RESOURCE_EXHAUSTED only) and the reason the metrics count it under."""
    reason = getattr(exc, "reason", None)
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None, reason
    if isinstance(exc, ResourceExhausted):
        return exc.retry, reason
    return "never", "out_of_memory"  # MemoryError / device OOM: the request is too large
