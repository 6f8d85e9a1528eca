"""A streamed call's incoming messages, with a limit on how long the client may be silent.

gRPC's request iterator blocks until the client's next message, with no limit: a client
that stops sending (a laptop asleep mid-upload, a stuck script) would hold its call, its
memory and anything else it holds, until its own deadline. An :class:`Inbox` reads the
messages on a thread of its own (one message ahead at most, so gRPC's flow control still
holds the client back) and the call waits for each with ``--stream-idle-timeout``:

* a message already there (or there within ``GRACE_SECONDS``: the reader thread's
  hand-over) is handed over at once, and the call keeps its compute turn;
* otherwise ``on_wait`` runs, and again at every check while the call waits (a streamed
  region gives its compute slot back if another call waits for one, see
  :class:`~.slots.Turn`; once its tiles are read by a receiver thread, :mod:`.intake`
  does that on the call's thread instead), and the call waits, checking that the client
  is still there;
* no message for ``idle_seconds``: :class:`StreamIdle` (DEADLINE_EXCEEDED, naming the
  limit); a client that cancelled: :class:`~.errors.Cancelled` (CANCELLED, never INTERNAL).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from .errors import Cancelled, ServiceError

POLL_SECONDS = 0.2  # how often a waiting call checks that its client is still there
GRACE_SECONDS = 0.05  # a message the client has sent reaches the call within this
_END = object()


class StreamIdle(ServiceError):
    """The client sent nothing for ``--stream-idle-timeout`` seconds."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "stream_idle"


class Failed:
    """What a reader thread raised, handed to the thread it reads for (raised there)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Inbox:
    """The messages of ``requests``, each waited for at most ``idle_seconds`` (0: no limit).

    Use as a context manager (the reader thread is told to stop when the block ends; it
    ends itself once gRPC ends the call)."""

    def __init__(
        self,
        requests: Iterable[Any],
        idle_seconds: float,
        is_active: Callable[[], bool],
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.idle_seconds = float(idle_seconds or 0)
        self.is_active = is_active
        self.on_wait = on_wait
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._read, args=(iter(requests),), name="milsil-inbox", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            item = self._queue.get(timeout=GRACE_SECONDS)
        except queue.Empty:
            item = self._wait()
        if item is _END:
            self._done = True
            if not self.is_active():  # gRPC ends the requests of a cancelled call quietly
                raise Cancelled("the client cancelled the call while sending")
            raise StopIteration
        if isinstance(item, Failed):
            self._done = True
            if not self.is_active():
                raise Cancelled("the client cancelled the call while sending") from None
            raise item.exc
        return item

    def _wait(self) -> Any:
        limit = self.idle_seconds
        deadline = time.monotonic() + limit if limit > 0 else None
        while True:
            if self.on_wait is not None:
                self.on_wait()
            wait = (
                POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            )
            try:
                return self._queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                pass
            if not self.is_active():
                raise Cancelled(
                    "the client cancelled the call (or its deadline passed) while sending"
                )
            if self._closed.is_set():  # the call has ended (a region's receiver thread stops)
                self._done = True
                raise Cancelled("the call ended while it waited for the client's next message")
            if deadline is not None and time.monotonic() >= deadline:
                self._done = True
                raise StreamIdle(
                    f"the client sent nothing for {limit:g} s (the server's "
                    "--stream-idle-timeout); the call was ended and its memory returned: "
                    "send the next message sooner, or ask for a longer limit"
                )

    def _read(self, requests: Iterator[Any]) -> None:
        """The reader thread: every message, then the end (or the error) of the stream."""
        try:
            for message in requests:
                if not self._put(message):
                    return
            self._put(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the call, which maps it
            self._put(Failed(exc))

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
