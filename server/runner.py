"""Long work behind a streaming RPC: a background thread whose progress the RPC yields.

:func:`in_background` runs a library call (``annotate_slide``, ``slide_heatmap``) in a
thread and turns its progress reports into stream messages; :class:`WorkLocks` lets one
request at a time use a resumable work folder. Neither knows what the work is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from milsil_server.errors import Cancelled


class WorkLocks:
    """One lock per work folder name, created on first use."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, key: str, is_active: Callable[[], bool]) -> Iterator[None]:
        """One request at a time per key; a second waits (e.g. a retry after a timeout)."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        while not lock.acquire(timeout=0.2):
            if not is_active():
                raise Cancelled("request cancelled while another request computed the same slide")
        try:
            yield
        finally:
            lock.release()


def in_background(
    fn: Callable[[Callable[[Any], None], Callable[[], bool]], Any],
    is_active: Callable[[], bool],
    on_progress: Callable[[Any], Any],
) -> Generator[Any, None, Any]:
    """Run ``fn(progress, should_stop)`` in a thread; yield ``on_progress(p)``; return its result.

    ``should_stop`` turns true once the client is gone (``is_active()`` false) or the
    caller stops iterating. The thread is always joined (it stops at its next check), so
    a work folder and a compute slot are released only when nothing writes to them.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or not is_active()

    def progress(p: Any) -> None:
        events.put(("progress", p))

    def target() -> None:
        try:
            events.put(("done", fn(progress, should_stop)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the RPC thread
            events.put(("error", exc))

    worker = threading.Thread(target=target, name="milsil-slide", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "progress":
                yield on_progress(value)
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        stop.set()
        worker.join()
