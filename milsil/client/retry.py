"""Busy is not failure: wait and retry when the server says "busy", up to the deadline.

The server marks every RESOURCE_EXHAUSTED with the trailing-metadata key ``milsil-retry``
(``proto/milsil/v1/inference_service.proto`` documents it): ``busy`` (a queue is full; the
same request may succeed later) or ``never`` (too large; final). gRPC's own "Concurrent RPC
limit exceeded!" (every RPC thread of the server taken) carries no key and is busy too.

:class:`Retrier` runs one call again after a jittered exponential backoff ("full jitter":
a uniform delay up to ``min(max_delay, first_delay * 2**attempt)``) while the answer is
busy and the call's deadline allows; each attempt gets the time that is left. A call that
streams results is retried only before its first result (the server sends busy before
any), so nothing is delivered twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

RETRY_KEY = "milsil-retry"
GRPC_CONCURRENCY_LIMIT = "Concurrent RPC limit exceeded!"
T = TypeVar("T")


def retry_hint(error: grpc.RpcError) -> str | None:
    """The server's ``milsil-retry`` value ("busy"/"never") of a failed call, if any."""
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - errors raised before the call started have none
        return None
    for key, value in trailers:
        if key == RETRY_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def is_busy(error: BaseException) -> bool:
    """True when the call was refused because the server is busy (worth retrying)."""
    if not isinstance(error, grpc.RpcError) or not hasattr(error, "code"):
        return False
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    hint = retry_hint(error)
    if hint is not None:
        return hint == "busy"
    return (error.details() or "").strip() == GRPC_CONCURRENCY_LIMIT


LAST_TRY_SECONDS = 0.1
"""Time kept for the final try of a busy call: waits end this long before the deadline."""


class Retrier:
    """Backoff policy of one client: ``enabled``, delays, and ``on_wait`` for waiting lines."""

    def __init__(
        self,
        enabled: bool = True,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
        on_wait: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.enabled = enabled
        self.first_delay, self.max_delay = first_delay, max_delay
        self.on_wait = on_wait
        self.rng = rng or random.Random()

    def say(self, line: str) -> None:
        if self.on_wait is not None:
            self.on_wait(line)

    def _delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.max_delay, self.first_delay * 2**attempt))

    def _backoff(self, error: grpc.RpcError, attempt: int, deadline: float | None, what: str):
        """Sleep before the next attempt, or re-raise ``error`` when it is final or late."""
        if not (self.enabled and is_busy(error)):
            raise error
        delay = self._delay(attempt)
        if deadline is not None:
            # The last try still runs before the deadline: a wait that would pass it is
            # shortened; with too little time left for a try the busy answer is the result.
            left = deadline - time.monotonic()
            if left <= LAST_TRY_SECONDS:
                raise error
            delay = min(delay, left - LAST_TRY_SECONDS)
        detail = (error.details() or "").strip()
        if not detail.startswith("server busy"):
            detail = f"server busy ({detail})"
        self.say(f"milsil: waiting: {what}: {detail}; retrying in {delay:.1f} s")
        time.sleep(delay)

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.001, deadline - time.monotonic())

    def call(self, what: str, attempt: Callable[[float | None], T], timeout: float | None) -> T:
        """``attempt(timeout_left)`` until it is not busy or the deadline passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while True:
            try:
                return attempt(self._left(deadline))
            except grpc.RpcError as error:
                self._backoff(error, n, deadline, what)
                n += 1

    def unary(self, method, request: Any, metadata, timeout: float | None) -> Any:
        """``method(request)`` (``request`` may be a function making a fresh request
        stream for each attempt) with ``metadata``, retried while busy."""

        def attempt(left: float | None) -> Any:
            payload = request() if callable(request) else request
            return method(payload, metadata=metadata, timeout=left)

        return self.call(method_name(method), attempt, timeout)

    def streaming(
        self, method, request: Any, metadata, timeout: float | None, is_result=None
    ) -> Iterator[Any]:
        """As :meth:`unary` for a call with streamed answers (see :meth:`stream`)."""

        def attempt(left: float | None) -> Any:
            payload = request() if callable(request) else request
            return method(payload, metadata=metadata, timeout=left)

        return self.stream(method_name(method), attempt, timeout, is_result)

    def stream(
        self,
        what: str,
        attempt: Callable[[float | None], Iterable[Any]],
        timeout: float | None,
        is_result: Callable[[Any], bool] | None = None,
    ) -> Iterator[Any]:
        """The messages of ``attempt(timeout_left)``, retried while busy before any result.

        Messages for which ``is_result`` is false (queue status, progress) may be repeated
        by a retry; results never are.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while True:
            results = 0
            try:
                for message in attempt(self._left(deadline)):
                    if is_result is None or is_result(message):
                        results += 1
                    yield message
                return
            except grpc.RpcError as error:
                if results:
                    raise
                self._backoff(error, n, deadline, what)
                n += 1


def method_name(method: Any) -> str:
    """ "Heatmap" for a stub's multi-callable (the last part of its method path)."""
    path = getattr(method, "_method", b"") or b""
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    return str(path).rsplit("/", 1)[-1] or "call"


def queue_line(what: str, position: int, waiting: int) -> str:
    """The waiting line for a queue status message."""
    return f"milsil: waiting: {what}: queued for compute, position {position} of {waiting}"
