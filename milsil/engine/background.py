"""Work a training run does beside its optimisation steps, off the critical path: the next
batches assembled on a thread (:class:`Prefetch`) and checkpoints written on another
(:class:`CheckpointWriter`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from milsil.models import atomic_torch_save


class Prefetch:
    """Iterate ``source`` on a background thread, up to ``depth`` items ahead.

    Decoding and augmenting the next batch (numpy and PIL release the GIL) then overlaps the
    current optimisation step. An exception in the source is raised where the item would
    have been; :meth:`close` stops the thread (a run stopped mid-epoch).
    """

    _END = object()

    def __init__(self, source: Iterator[Any], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(source,), name="milsil-prefetch", daemon=True
        )
        self._thread.start()

    def _fill(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, exc))

    def _put(self, entry: tuple[Any, BaseException | None]) -> bool:
        """Wait for room in the queue; False when :meth:`close` was called meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        item, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        if item is self._END:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class CheckpointWriter:
    """Write checkpoint payloads on one background thread, in the order submitted.

    Order is what keeps a run resumable: ``best.pt`` is submitted before the ``last.pt``
    that names it, and both are atomic, so a crash leaves the previous pair or the new one.
    A payload must own its tensors (:func:`milsil.models.checkpoint_payload` with
    ``copy=True``): the model goes on training while it is written. At most one epoch's
    writes are in flight (:meth:`wait` before the next epoch's); an error in a write is
    raised by the next :meth:`wait`.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milsil-checkpoint")
        self._pending: list[Future] = []

    def submit(self, path: Path, payload: dict[str, Any]) -> None:
        self._pending.append(self._pool.submit(atomic_torch_save, payload, path))

    def wait(self) -> None:
        """Return once everything submitted is on disk (or raise the first write's error)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
