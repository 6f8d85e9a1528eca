"""The server-wide memory budget (``--max-memory``) that region calls reserve from.

A call reserves what it will allocate *before* allocating it (:class:`Reservation`), and
hands it back when it ends, however it ends; freed heap goes back to the system
(:func:`trim_memory`) so calls served by different threads do not add up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Busy, ResourceExhausted

MB = 2**20


class MemoryBudget:
    """Server-wide bytes that region calls may hold at once (``--max-memory``).

    A call reserves what it will allocate *before* allocating it; a reservation that can
    never fit (more than the whole budget) is RESOURCE_EXHAUSTED and final, one that does
    not fit now because other calls hold memory is busy (the client retries later).
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = int(limit_bytes)
        self.in_use = 0
        self._lock = threading.Lock()

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A reservation returned to the budget when the block ends (done, error, cancel)."""
        held = Reservation(self)
        try:
            yield held
        finally:
            held.release()

    def _take(self, nbytes: int, what: str) -> None:
        with self._lock:
            if nbytes > self.limit:
                raise ResourceExhausted(
                    f"{what} needs {nbytes / MB:,.0f} MB of server memory; this server allows "
                    f"{self.limit / MB:,.0f} MB for all calls (--max-memory): send a narrower "
                    "region, a larger downsample or smaller tiles",
                    reason="memory",
                )
            if self.in_use + nbytes > self.limit:
                raise Busy(
                    f"server busy: {what} needs {nbytes / MB:,.0f} MB and other calls hold "
                    f"{self.in_use / MB:,.0f} of {self.limit / MB:,.0f} MB; retry later",
                    reason="memory_busy",
                )
            self.in_use += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes


class Reservation:
    """One call's share of a :class:`MemoryBudget`; only ever grows until released."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget, self.held = budget, 0

    def ensure(self, nbytes: int, what: str = "this region") -> None:
        """Hold at least ``nbytes`` in all (raises when the budget cannot give it)."""
        extra = int(nbytes) - self.held
        if extra > 0:
            self.budget._take(extra, what)  # noqa: SLF001 - the budget's own accounting
            self.held += extra

    def release(self) -> None:
        if self.held:
            self.budget._give(self.held)  # noqa: SLF001
            self.held = 0


def trim_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Each gRPC thread allocates from its own malloc arena, which keeps what a call freed:
    without this, calls served by different threads would add up in the resident memory
    instead of reusing it."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def default_max_memory() -> int:
    """A quarter of the machine's memory (at least 1 GiB): ``--max-memory``'s default."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return max(2**30, total // 4)
