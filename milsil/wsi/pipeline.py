"""The whole-slide pipeline's stages: readers ahead of the compute, a writer behind it.

A slide's tiles are independent until they are stored, so reading tile ``k+1`` (OpenSlide
decoding, RGB conversion, normalisation, the mirrored halo), computing tile ``k`` and
storing tile ``k-1`` (memory-mapped logits, the resume log, its fsync) can run at once.
Each stage keeps the tile order, so the result is the sequential one bit for bit:

* :func:`read_ahead` runs ``read(item)`` on a pool of reader threads, at most ``depth``
  tiles ahead, and hands the results back in the items' order.
* :class:`OrderedWriter` runs the stores on one thread in submission order, a bounded
  number behind, and raises a failed store in the caller's thread.
* :func:`to_device_ahead` (CUDA only) copies the next tile from pinned host memory to the
  device on a side stream while the current one is computed.

Threads, not processes: OpenSlide's C library documents that one ``openslide_t`` may be
used "concurrently from multiple threads without locking" (openslide/openslide
README.txt; 3.3.1 release notes: "Parallelize concurrent openslide_read_region calls on an
openslide_t"), and openslide-python calls it through ctypes, which releases the GIL, as do
numpy and torch for the conversions. So all readers share the slide's one handle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(
    items: Iterable[T], read: Callable[[T], R], readers: int, depth: int | None = None
) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` in the order of ``items``, read by ``readers`` threads ahead.

    At most ``depth`` (default ``readers + 1``: every reader busy and one tile ready) reads
    are queued, running or done beyond the one the caller holds, which bounds the memory of
    tiles read but not yet computed (about 13 MB a 1024-pixel tile with its halo).
    ``readers == 0`` reads each item when it is asked for, on the caller's thread (the
    sequential pipeline). A read's exception is raised here, at its item; closing the
    iterator early cancels the reads not yet started and waits for the running ones.
    """
    if readers <= 0:
        for item in items:
            yield item, read(item)
        return
    depth = max(1, depth if depth is not None else readers + 1)
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(readers, thread_name_prefix="milsil-reader") as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(read, item)))
                if len(pending) >= depth:
                    break
            while pending:
                item, future = pending.popleft()
                result = future.result()
                # Refill before handing the tile over, so reading continues during its compute.
                for nxt in source:
                    pending.append((nxt, pool.submit(read, nxt)))
                    break
                yield item, result
        finally:
            for _, future in pending:
                future.cancel()


class OrderedWriter:
    """Runs stores on one background thread, in submission order, at most ``depth`` behind.

    ``threaded=False`` runs each store at once on the caller's thread (the sequential
    pipeline). :meth:`submit` raises a failed earlier store; :meth:`close` waits for all of
    them and raises the first failure. Use as a context manager: leaving it waits for the
    stores (even on an exception, so nothing computed is lost from the resume log).
    """

    def __init__(self, threaded: bool = True, depth: int = 4) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="milsil-writer") if threaded else None
        self._pending: deque[Future[Any]] = deque()
        self._depth = max(1, depth)

    def submit(self, store: Callable[..., Any], *args: Any) -> None:
        """Queue ``store(*args)`` behind the earlier stores."""
        if self._pool is None:
            store(*args)
            return
        while self._pending and (self._pending[0].done() or len(self._pending) >= self._depth):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(store, *args))

    def close(self) -> None:
        """Wait for every store; the first failure is raised."""
        error: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, the first one
                error = error or exc
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if error is not None:
            raise error

    def __enter__(self) -> OrderedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: finish the stores, keep the first exception
            self.close()
        except BaseException:  # noqa: BLE001, S110 - the exception in flight wins
            pass


def to_device_ahead(tiles: Iterator[tuple[T, Any]], device: Any) -> Iterator[tuple[T, Any]]:
    """On CUDA, ``(item, tensor)`` with the tensor on ``device``, copied one tile ahead.

    Each host tensor is pinned and copied on a side stream, so the copy of tile ``k+1``
    runs while tile ``k`` is computed on the current stream; the current stream waits for
    a tile's copy before using it. Any other device: the tiles pass through unchanged
    (the model's own ``.to(device)`` moves them). Not run in this repository's CPU tests:
    it needs a CUDA device.
    """
    import torch

    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        yield from tiles
        return
    side = torch.cuda.Stream(device=device)
    staged: tuple[T, Any, Any] | None = None
    for item, host in tiles:
        pinned = host if host.is_pinned() else host.pin_memory()
        with torch.cuda.stream(side):
            on_device = pinned.to(device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(side)
        if staged is not None:
            yield _ready(staged, device)
        staged = (item, on_device, copied)
    if staged is not None:
        yield _ready(staged, device)


def _ready(staged: tuple[Any, Any, Any], device: Any) -> tuple[Any, Any]:
    """The staged tile, with the current stream made to wait for its copy."""
    import torch

    item, tensor, copied = staged
    current = torch.cuda.current_stream(device)
    current.wait_event(copied)
    tensor.record_stream(current)  # its memory is not reused before the compute is done
    return item, tensor
