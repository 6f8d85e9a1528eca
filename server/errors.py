"""Exceptions that carry a gRPC status, and the one place exceptions become status codes.

Servicers and plain modules raise; nothing calls ``context.abort`` except
:func:`status_for`'s caller (the interceptor in :mod:`milsil_server.app`). That way every error,
however unexpected, gets a deliberate code and a one-line message, never UNKNOWN.
"""

from __future__ import annotations

import grpc

from milsil.errors import CheckpointError, MilsilError, NotFoundError


class ServiceError(Exception):
    """An error with an explicit gRPC status code."""

    code = grpc.StatusCode.INTERNAL


class FailedPrecondition(ServiceError):
    """The request is well-formed but the system is not in a state to run it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """Over a limit (concurrency, queue, size); retry later or send less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The server is draining (shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServiceError):
    """The client cancelled or the deadline passed while the request computed."""

    code = grpc.StatusCode.CANCELLED


class AlreadyExists(ServiceError):
    """A resource with the requested id exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ServiceError):
    """Missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line message for an exception raised by a handler."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc) or exc.code.name.lower()
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, CheckpointError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
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
