"""Compute slots: at most N computations at once, the waiting requests queued fairly by client.

A lab shares one server among several QuPath users and "Run for project" batches, so the
waiting requests are not served first come, first served: every client (a user with a
token of its own, or without tokens a host: :func:`milsil_server.auth.client_of`, so all
connections of one user share one queue) has a queue of its own, and a free slot goes to
the clients' queues in turn (round-robin). A client that floods the server with requests,
over one connection or fifty, therefore delays another client's single request by at most
one request per flooding client, not by the whole flood.

A streamed call (Heatmap, Annotate, MeasureObjects) holds a slot only while it computes
(:class:`Turn`, :meth:`ComputeSlots.turns`): it is admitted through the queue as below,
gives the slot back whenever it waits for its client's next message, and takes its turn
again (never refused, never displaced) when a band's pixels are there.

The queue is bounded (``max_waiting`` requests in all, since each waiting request holds an
RPC thread). When it is full, a new request is answered "busy"
(:class:`milsil_server.errors.Busy`; both clients wait and retry with jittered backoff up
to their deadline) unless it may take the place of another client's newest waiting
request, which is then answered "busy" instead:

- its client has fewer waiting requests than that queue by two or more (a flood never
  locks other clients out), or
- its client has no more waiting requests than that queue, and has been retrying since
  ``AGE_MARGIN`` seconds or more before that request arrived (the first refusal of the
  retrying caller, one connection, is remembered while it retries). So the queue holds the
  clients that have waited longest, and a client outside it does not wait by luck: without
  this, clients retrying with growing backoff lose the race for a free place more and more
  often.

The same age rule holds among one client's own connections (a user's many parallel calls,
or every connection of one host without tokens): a caller retrying since ``AGE_MARGIN``
seconds or more before its client's newest waiting request arrived takes that request's
place (which keeps its own age for its retry). The client's share of the queue does not
change; its own calls are served oldest first instead of by luck.

Usage in a servicer::

    with slots.queued(context.is_active, client_of(context), context.peer()) as ticket:
        for status in ticket.waiting():      # a QueueStatus whenever the position changes
            yield progress_message(status)   # streaming RPCs tell the client where it stands
        ...compute...                        # the slot is held here, freed on exit

or, for RPCs that answer once, ``with slots.acquire(...) as device:``.

Every slot belongs to a device (``devices``: one entry per slot; ``milsil serve --devices
cuda:0,cuda:1`` gives each GPU a slot), and the one queue feeds them all: a granted
ticket says which (``ticket.device``, ``turn.device`` while held), and the call computes
there. A free slot is the lowest-numbered one, except that a streamed call taking its turn
again gets its previous device when that one is free (its model copy is warm there).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from milsil_server.errors import Busy, Cancelled

POLL_SECONDS = 0.2  # how often a waiting request checks that its client is still there
AGE_MARGIN = 1.0  # seconds a retrying client must be older than a waiting request to take its place
FORGET_SECONDS = 30.0  # a refused client that has not retried for this long is forgotten
REMEMBERED = 4096  # refused clients remembered at most


@dataclass(frozen=True)
class QueueStatus:
    """Where a waiting request stands: ``position`` 1 is served next; ``waiting`` in all."""

    position: int
    waiting: int


class Ticket:
    """One request's place: waiting in its client's queue, then holding a slot."""

    def __init__(
        self,
        slots: ComputeSlots,
        client: str,
        is_active: Callable[[], bool],
        since: float,
        admitted: bool = False,
        caller: str = "",
    ) -> None:
        self.slots, self.client, self.is_active = slots, client, is_active
        self.caller = caller  # the connection (gRPC peer) it came from: its retries' age
        self.since = since  # when its client started waiting (first refusal, or arrival)
        # A turn of a call already admitted (Turn.hold): never refused, never displaced.
        self.admitted = admitted
        self.granted = False
        self.displaced = False
        self.done = False
        self.slot = -1  # the slot it got (an index of ComputeSlots.devices), once granted
        self.prefer = -1  # the slot to give it when free (a turn's previous one)

    @property
    def device(self) -> Any:
        """The device of the slot it got (None before it is granted)."""
        return self.slots.devices[self.slot] if self.granted else None

    def waiting(self) -> Iterator[QueueStatus]:
        """Wait for a slot, yielding the queue status whenever it changes (nothing if a slot
        is free at once). Raises Busy if displaced, Cancelled if the client went away."""
        last = None
        while True:
            with self.slots._cond:  # noqa: SLF001 - one lock for the whole queue
                if self.granted:
                    return
                if self.displaced:
                    raise Busy(
                        "server busy: the compute queue is full and this request gave its "
                        "place to another client's",
                        reason="displaced",
                    )
                status = self.slots._status(self)  # noqa: SLF001
            if status != last:
                last = status
                yield status
            if not self.is_active():
                raise Cancelled("request cancelled while waiting for compute")
            with self.slots._cond:  # noqa: SLF001
                if not (self.granted or self.displaced):
                    self.slots._cond.wait(POLL_SECONDS)  # noqa: SLF001


class Turn:
    """A streamed call's hold on compute: the slot its admission got, given up
    (:meth:`release_if_wanted`) while the call waits for its client's next message and
    another request waits for a slot, and taken again
    (:meth:`hold`, queued in its client's turn but never refused) when it has pixels to
    compute. So a client that stops sending holds memory, never a slot."""

    def __init__(
        self, slots: ComputeSlots, admission: Ticket, is_active: Callable[[], bool]
    ) -> None:
        self.slots, self.client, self.is_active = slots, admission.client, is_active
        self._admission: Ticket | None = admission
        self._ticket: Ticket | None = None
        self._last_slot = -1  # the slot of its previous turn, preferred for the next

    @property
    def device(self) -> Any:
        """The device of the slot held now (None while none is held)."""
        return None if self._ticket is None else self._ticket.device

    def waiting(self) -> Iterator[QueueStatus]:
        """The admission's wait (see :meth:`Ticket.waiting`); the slot is then held."""
        if self._admission is not None:
            yield from self._admission.waiting()
            self._ticket, self._admission = self._admission, None

    @property
    def held(self) -> bool:
        return self._ticket is not None

    def hold(self) -> None:
        """Hold a slot (waiting quietly for this client's turn if none is held)."""
        if self._ticket is not None:
            return
        ticket = self.slots._enqueue(  # noqa: SLF001
            self.client, self.is_active, admitted=True, prefer=self._last_slot
        )
        try:
            for _status in ticket.waiting():
                pass
        except BaseException:
            self.slots._leave(ticket)  # noqa: SLF001
            raise
        self._ticket = ticket

    def release_if_wanted(self) -> None:
        """Give the slot back if another request waits for one (a call waiting for its
        client calls this at every check, so a newcomer waits a check's time at most)."""
        if self._ticket is not None and self.slots.waiting > 0:
            self.release()

    def release(self) -> None:
        """Give the slot back (the next client in turn gets it)."""
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self._last_slot = ticket.slot
            self.slots._leave(ticket)  # noqa: SLF001


class ComputeSlots:
    """At most ``slots`` computations at once and at most ``max_waiting`` waiting for one,
    served round-robin across clients (see the module docstring). ``devices``: the device
    of each slot (then ``slots`` is their number); without it every slot's device is None
    (the caller's one device)."""

    def __init__(
        self,
        slots: int = 1,
        max_waiting: int = 8,
        clock: Callable[[], float] = time.monotonic,
        devices: Sequence[Any] | None = None,
    ) -> None:
        self.devices = list(devices) if devices else [None] * max(1, slots)
        self.slots = len(self.devices)
        self.max_waiting = max(0, max_waiting)
        self.clock = clock
        # Refused callers while they retry: (client, connection) -> (first refusal, latest).
        self._refused: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._cond = threading.Condition()
        self._free = list(range(self.slots))  # free slots, lowest first
        # Clients with waiting requests, in the order they are served next (the ring).
        self._queues: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._waiting = 0

    @property
    def in_use(self) -> int:
        """Slots computing now."""
        with self._cond:
            return self.slots - len(self._free)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot (the queue length)."""
        with self._cond:
            return self._waiting

    @contextmanager
    def queued(
        self, is_active: Callable[[], bool], client: str = "", caller: str = ""
    ) -> Iterator[Ticket]:
        """A ticket for ``client``'s queue (Busy when the queue is full); the slot it gets
        is freed, or its place given up, when the block ends. Exhaust ``ticket.waiting()``
        before computing. ``caller``: the connection, whose retries keep their age."""
        ticket = self._enqueue(client or "-", is_active, caller=caller)
        try:
            yield ticket
        finally:
            self._leave(ticket)

    @contextmanager
    def acquire(
        self, is_active: Callable[[], bool], client: str = "", caller: str = ""
    ) -> Iterator[Any]:
        """Hold a slot for the block, waiting quietly (RPCs that answer once); yields the
        slot's device."""
        with self.queued(is_active, client, caller) as ticket:
            for _status in ticket.waiting():
                pass
            yield ticket.device

    @contextmanager
    def turns(
        self, is_active: Callable[[], bool], client: str = "", caller: str = ""
    ) -> Iterator[Turn]:
        """A streamed call's compute turns: admitted like :meth:`queued` (exhaust
        ``turn.waiting()``, which yields the queue status), then holding a slot only while
        it computes (:class:`Turn`); the slot is freed when the block ends."""
        with self.queued(is_active, client, caller) as ticket:
            turn = Turn(self, ticket, is_active)
            try:
                yield turn
            finally:
                turn.release()

    # ------------------------------------------------------------------ internals

    def _enqueue(
        self,
        client: str,
        is_active: Callable[[], bool],
        admitted: bool = False,
        caller: str = "",
        prefer: int = -1,
    ) -> Ticket:
        with self._cond:
            now = self.clock()
            first, last = self._refused.pop((client, caller), (now, now))
            since = first if now - last < FORGET_SECONDS else now
            ticket = Ticket(self, client, is_active, since, admitted, caller)
            ticket.prefer = prefer
            if self._free and not self._queues:
                self._grant(ticket)
                return ticket
            if (
                not admitted
                and self._waiting >= self.max_waiting
                and not self._displace_for(ticket)
            ):
                self._remember((client, caller), since, now)
                raise Busy(
                    f"server busy: the compute queue is full ({self._waiting} waiting, "
                    f"limit {self.max_waiting})",
                    reason="queue_full",
                )
            self._queues.setdefault(client, deque()).append(ticket)
            self._waiting += 1
            self._dispatch()
        return ticket

    def _displace_for(self, ticket: Ticket) -> bool:
        """Queue full: give ``ticket`` another client's newest place if the rules allow
        (module docstring); the longest queue's first, then the youngest request's."""
        own = len(self._queues.get(ticket.client, ()))
        best, best_key = None, None
        for client, queue in self._queues.items():
            newest = next((t for t in reversed(queue) if not t.admitted), None)
            if client == ticket.client or newest is None:
                continue
            longer = len(queue) > own + 1
            older = len(queue) >= own + 1 and ticket.since + AGE_MARGIN <= newest.since
            key = (len(queue), newest.since)
            if (longer or older) and (best_key is None or key > best_key):
                best, best_key = client, key
        if best is None:
            own_newest = next(
                (t for t in reversed(self._queues.get(ticket.client, ())) if not t.admitted), None
            )
            if own_newest is None or ticket.since + AGE_MARGIN > own_newest.since:
                return False
            best = ticket.client  # the same client's newest request: oldest first among its own
        queue = self._queues[best]
        victim = next(t for t in reversed(queue) if not t.admitted)
        queue.remove(victim)
        if not queue:
            del self._queues[best]
        victim.displaced = True
        self._waiting -= 1
        self._remember((best, victim.caller), victim.since, self.clock())  # keeps its age
        self._cond.notify_all()
        return True

    def _remember(self, caller: tuple[str, str], since: float, now: float) -> None:
        first, _last = self._refused.pop(caller, (since, now))
        self._refused[caller] = (min(first, since), now)
        while len(self._refused) > REMEMBERED:
            self._refused.popitem(last=False)

    def _dispatch(self) -> None:
        """Give free slots to the clients' queues in turn (caller holds the lock)."""
        granted = False
        while self._free and self._queues:
            client, queue = next(iter(self._queues.items()))
            ticket = queue.popleft()
            self._waiting -= 1
            self._grant(ticket)
            granted = True
            del self._queues[client]
            if queue:
                self._queues[client] = queue  # to the back of the ring
        if granted:
            self._cond.notify_all()

    def _grant(self, ticket: Ticket) -> None:
        """Give ``ticket`` a free slot: its preferred one if free, else the lowest (caller
        holds the lock)."""
        slot = ticket.prefer if ticket.prefer in self._free else self._free[0]
        self._free.remove(slot)
        ticket.slot = slot
        ticket.granted = True

    def _leave(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.done:
                return
            ticket.done = True
            if ticket.granted:
                self._free = sorted([*self._free, ticket.slot])
                self._dispatch()
                self._cond.notify_all()
            elif not ticket.displaced:
                queue = self._queues.get(ticket.client)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                    self._waiting -= 1
                    if not queue:
                        del self._queues[ticket.client]
                self._cond.notify_all()

    def _status(self, ticket: Ticket) -> QueueStatus:
        """Round-robin position: tickets of earlier rounds, then this round's earlier clients."""
        k = self._queues[ticket.client].index(ticket)
        ahead = 0
        before = True
        for client, queue in self._queues.items():
            if client == ticket.client:
                before = False
            ahead += min(len(queue), k) + (1 if before and len(queue) > k else 0)
        return QueueStatus(ahead + 1, self._waiting)
