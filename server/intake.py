"""A streamed region's two threads: one receives the tiles, the call's own computes.

On one thread, receiving and computing take turns: the client's next tiles wait for every
band's compute, and the compute waits for every tile's transfer and decode. A
:class:`Handover` runs the receiving side (:meth:`.region_stream.RegionStream.events`) on a
thread of its own, so band k is computed while the tiles of band k+1 arrive:

* the *receiver* reads the request stream (through the call's :class:`~.inbox.Inbox`: its
  idle limit and cancel handling hold as before), checks and decodes each tile into the
  band canvas, and hands over, in order, each band ready to compute and each tile placed;
* the *call's thread* takes them (:meth:`Handover.get`) and computes the bands; while it
  has nothing to compute it runs ``on_wait`` (a streamed call gives its compute slot back
  when another call waits for one, :class:`~.slots.Turn`), as it did while it waited for
  the client itself;
* *bounded*: a band is handed over only once the one before it is computed
  (:meth:`Handover.hand_band` waits for :meth:`Handover.band_done`), so a call holds at
  most the band computing and the next one; meanwhile the receiver reads no further, and
  gRPC's flow control holds the client back;
* *errors* of either side end the call as before: the receiver's (a bad tile, the idle
  limit, a cancel) are raised on the call's thread after the events before them, with
  their own status and message; when the call's thread ends, however it ends,
  :meth:`Handover.stop` makes the receiver stop, and returns once the receiver no longer
  touches the call's canvas (so its memory can be freed and its reservation returned).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .inbox import GRACE_SECONDS, POLL_SECONDS, Failed

END = object()  # the receiver is done: every tile placed, every band handed over


class Stopped(Exception):
    """The call's thread has ended: the receiver stops where it is."""


class Handover:
    """Runs ``receive(handover)`` on a thread of its own; the call's thread takes what it
    hands over (:meth:`get`) until :data:`END`.

    ``receive`` does its work on shared state inside :meth:`working` (one unit at a time:
    a tile, or the bands left at the end) and hands over items with :meth:`put` and bands
    with :meth:`hand_band`; anything it raises is raised by :meth:`get` in its turn."""

    def __init__(
        self,
        receive: Callable[[Handover], None],
        on_wait: Callable[[], None] | None = None,
        name: str = "milsil-receiver",
    ) -> None:
        self.on_wait = on_wait
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._band_free = threading.Semaphore(1)  # no band handed over and not yet computed
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # held by the receiver while it works on shared state
        self._thread = threading.Thread(target=self._run, args=(receive,), name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the receiver's side

    @contextmanager
    def working(self) -> Iterator[None]:
        """One unit of the receiver's work on shared state (:meth:`stop` waits for it to end);
        raises :class:`Stopped` once the call's thread has ended."""
        with self._lock:
            if self._stopped.is_set():
                raise Stopped
            yield

    def put(self, item: Any) -> None:
        """Hand over an event (never waits)."""
        self._queue.put(item)

    def hand_band(self, band: Any, own: Callable[[Any], Any]) -> None:
        """Hand over a band once the previous one is computed; ``own(band)`` (a copy of what
        the receiver goes on to overwrite) is made only then, so at most two bands exist."""
        while not self._band_free.acquire(timeout=POLL_SECONDS):
            if self._stopped.is_set():
                raise Stopped
        if self._stopped.is_set():
            raise Stopped
        self._queue.put(own(band))

    def _run(self, receive: Callable[[Handover], None]) -> None:
        try:
            receive(self)
            self._queue.put(END)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised on the call's thread
            self._queue.put(Failed(exc))

    # ------------------------------------------------------------------ the call's side

    def get(self) -> Any:
        """The next item (or :data:`END`), raising what the receiver raised. While none is
        there (after ``GRACE_SECONDS``: an item on its way keeps the call's turn), runs
        ``on_wait`` at every check."""
        try:
            item = self._queue.get(timeout=GRACE_SECONDS)
        except queue.Empty:
            item = self._wait()
        if isinstance(item, Failed):
            raise item.exc
        return item

    def _wait(self) -> Any:
        while True:
            if self.on_wait is not None:
                self.on_wait()
            try:
                return self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue

    def band_done(self) -> None:
        """The band handed over last is computed (or dropped): the next may come."""
        self._band_free.release()

    def stop(self) -> None:
        """End the receiver: returns once it works on shared state no more (it may still
        wait for its client, then ends without touching anything)."""
        self._stopped.set()
        self._band_free.release()  # a receiver waiting to hand a band over wakes and stops
        with self._lock:
            pass
