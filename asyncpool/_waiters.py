"""The queue of borrowers waiting for a connection: futures with deadlines, one timer.

Each waiter is a future in a deque, oldest first. :meth:`WaiterQueue.give` hands an
item (a connection's slot) to the oldest waiter still waiting: a waiter that timed out
or was cancelled has a done future and is skipped, so a hand-off is never lost. A
waiter cancelled in the same tick as it was handed an item gives it back through
:meth:`WaiterQueue.abandon`, for the caller to pass on.

Deadlines. Most waiters use the pool's default timeout: their deadlines never decrease
along the deque, so the deque itself orders them. A waiter with a timeout of its own
goes into a heap as well. One timer, armed for the earliest deadline, serves them all;
when it fires, every waiter past its deadline is failed with the error the owner's
``timed_out(started, now)`` callback makes, and the timer re-arms. No waiter's deadline
waits on another's: the timer scans the deque only up to the first default deadline
still ahead, and the heap by its own order.

Discipline. First come, first served, while the queue moves. With ``adaptive`` on,
when the oldest waiter still waiting has used half of its time
(:func:`_policy.standing_after`), the queue stands: the pool is past its capacity (one
timer watches the oldest waiter for that moment, so a moving queue pays nothing). Then
:meth:`WaiterQueue.give` serves the newest waiter instead (adaptive LIFO), whose
deadline is furthest away, and drops from the front the waiters whose time left is
below ``min_useful`` (the pool's usual hold time: they could not finish a query),
failing them with the owner's ``shed(started, now)`` error. When the queue moves again
it is first come, first served again. ``on_standing(bool)`` hears each change.

Admission. :meth:`WaiterQueue.push` may turn a newcomer away instead of queueing it:
once ``gate`` waiters wait (the owner sets it: its ``max_waiting``, or the queue length
its default deadline cannot wait out), or while others wait for one with a deadline of
its own (``adaptive``), it asks the owner's ``refusal(live, position, remaining,
in_order)`` callback, and raises the error it returns. ``position`` is the newcomer's
place in line (first while the queue stands: it is served next). Below the gate a
newcomer queues with one comparison.

Synchronous throughout: no ``await``, so on one event loop these operations need no
lock and cannot be interrupted by a cancellation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from time import monotonic
from typing import Generic, TypeVar

from ._policy import standing_after

__all__ = ("WaiterQueue",)

_T = TypeVar("_T")
_INF = float("inf")
_Future = asyncio.Future


def _admit_all(live: int, position: int, remaining: float, in_order: bool) -> None:
    """The default ``refusal``: turn nobody away."""


class WaiterQueue(Generic[_T]):
    """Borrowers waiting for an item, first come first served, each with a deadline."""

    __slots__ = (
        "_clock",
        "_fifo",
        "_heap",
        "_loop",
        "_on_standing",
        "_refusal",
        "_seq",
        "_shed",
        "_timed_out",
        "_timer",
        "_timer_at",
        "_watch",
        "adaptive",
        "gate",
        "live",
        "min_useful",
        "served_newest",
        "shed_total",
        "standing",
    )

    def __init__(
        self,
        timed_out: Callable[[float, float], BaseException],
        shed: Callable[[float, float], BaseException] | None = None,
        on_standing: Callable[[bool], None] | None = None,
        refusal: Callable[[int, int, float, bool], BaseException | None] | None = None,
    ) -> None:
        """``timed_out(started, now)``: the error for a waiter whose deadline passed
        (called once per such waiter, in the timer's callback); ``shed(started, now)``:
        the error for a waiter dropped from a standing queue; ``refusal``: see Admission
        in the module notes.
        """
        self._timed_out = timed_out
        self._shed = shed or timed_out
        self._on_standing = on_standing
        self._refusal = refusal or _admit_all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = monotonic
        # (future, deadline if in arrival order else inf, start, deadline), oldest first.
        self._fifo: deque[tuple[asyncio.Future[_T], float, float, float]] = deque()
        # Deadlines of waiters with their own timeout: (deadline, seq, future, start).
        self._heap: list[tuple[float, int, asyncio.Future[_T], float]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._watch: asyncio.TimerHandle | None = None  # for the oldest's standing_after()
        #: Waiters still waiting (futures not done).
        self.live = 0
        #: Waiters from which push() asks ``refusal`` about a newcomer (module notes).
        self.gate = _INF
        #: Serve the newest waiter while the queue stands (see the module notes).
        self.adaptive = False
        #: Seconds a waiter must have left to be worth serving in a standing queue.
        self.min_useful = 0.0
        #: True while the queue stands (as of the last hand-over).
        self.standing = False
        self.served_newest = 0
        self.shed_total = 0

    def bind(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        """Use ``loop`` for futures and the timer, ``clock`` for starts and deadlines
        (the loop's clock: when the pool opens).
        """
        self._loop = loop
        self._clock = clock

    def futures(self) -> list[asyncio.Future[_T]]:
        """Every queued future, oldest first, done or not (for invariant checks)."""
        return [entry[0] for entry in self._fifo]

    def push(self, started: float, deadline: float, in_order: bool) -> asyncio.Future[_T]:
        """Queue a waiter: the future its item will be handed over on, unless the owner
        refuses it (Admission in the module notes: the error is raised here). ``in_order``:
        its deadline is not earlier than any default deadline queued before it (the pool's
        own timeout); else it also goes into the heap. ``deadline=inf``: no deadline.
        """
        live = self.live
        if live >= self.gate or (not in_order and live and self.adaptive):
            refusal = self._refusal(
                live, 1 if self.standing else live + 1, deadline - started, in_order
            )
            if refusal is not None:
                raise refusal
        # asyncio.Future itself (not loop.create_future(), a Python call on asyncio's
        # loops): every loop asyncpool supports makes plain asyncio futures.
        fut: asyncio.Future[_T] = _Future(loop=self._loop)
        if in_order:
            self._fifo.append((fut, deadline, started, deadline))
            if deadline < self._timer_at:
                self._arm(deadline)
        else:
            self._fifo.append((fut, _INF, started, deadline))
            if deadline != _INF:
                self._push_heap(fut, deadline, started)
        self.live = live + 1
        if self._watch is None and self.adaptive and not self.standing:
            self._arm_watch()
        return fut

    def give(self, item: _T) -> bool:
        """Hand ``item`` to a live waiter (True), or to nobody (False): the oldest, or
        the newest while the queue stands (``adaptive``; see the module notes).
        """
        fifo = self._fifo
        if self.standing and self._still_standing():  # (set by the watch timer: _look)
            return self._give_newest(item, self._clock())
        while fifo:
            fut = fifo.popleft()[0]
            if not fut.done():
                self.live -= 1
                fut.set_result(item)
                return True
        return False

    def _still_standing(self) -> bool:
        """Whether a queue marked standing still stands; if not, watch it again."""
        fifo = self._fifo
        while fifo and fifo[0][0].done():
            fifo.popleft()
        if fifo:
            _, _, started, deadline = fifo[0]
            if self._clock() > standing_after(started, deadline):
                return True
        self._set_standing(False)  # the queue moves again, or is gone
        self._arm_watch()
        return False

    def _give_newest(self, item: _T, now: float) -> bool:
        fifo = self._fifo
        useful = self.min_useful  # (0 until the pool knows its usual lease: no shedding)
        while fifo and (fifo[0][0].done() or (useful and fifo[0][3] - now < useful)):
            fut, _, started, _ = fifo.popleft()
            if not fut.done():  # too little time left to finish a query: tell it now
                self.live -= 1
                self.shed_total += 1
                fut.set_exception(self._shed(started, now))
        while fifo:
            fut = fifo.pop()[0]
            if not fut.done():
                self.live -= 1
                self.served_newest += 1
                fut.set_result(item)
                if not self.live:  # drained: the overload is over
                    self._set_standing(False)
                return True
        return False

    def _arm_watch(self) -> None:
        """Arm the watch for the moment the oldest live waiter will show a standing queue."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        fifo = self._fifo
        while fifo and fifo[0][0].done():
            fifo.popleft()
        if fifo:
            _, _, started, deadline = fifo[0]
            at = standing_after(started, deadline)
            if at != _INF:
                loop = self._loop
                assert loop is not None
                self._watch = loop.call_at(at, self._look)

    def _look(self) -> None:
        """The watch: is the oldest live waiter past its standing_after() moment."""
        self._watch = None
        fifo = self._fifo
        while fifo and fifo[0][0].done():
            fifo.popleft()
        if not fifo:
            return
        _, _, started, deadline = fifo[0]
        if self._clock() > standing_after(started, deadline):
            if not self.standing:
                self._set_standing(True)
        else:  # a younger waiter is the oldest now: watch it
            self._arm_watch()

    def _set_standing(self, standing: bool) -> None:
        self.standing = standing
        if self._on_standing is not None:
            self._on_standing(standing)

    def abandon(self, fut: asyncio.Future[_T]) -> _T | None:
        """A waiter stopped waiting (cancelled, or its task gave up): forget it. Returns
        the item it was handed in the same tick, if any, for the caller to pass on.
        """
        handed: _T | None = None
        if fut.cancelled() or not fut.done():
            # Task.cancel() cancels the future the task awaits: still counted as live.
            fut.cancel()
            self.live -= 1
        elif fut.exception() is None:
            handed = fut.result()
        if len(self._fifo) > 2 * self.live + 64:  # dead entries pile up: compact
            self._fifo = deque(entry for entry in self._fifo if not entry[0].done())
        return handed

    def fail_all(self, error: BaseException) -> None:
        """Fail every live waiter with ``error`` (the pool is closing, or down)."""
        while self._fifo:
            fut = self._fifo.popleft()[0]
            if not fut.done():
                self.live -= 1
                fut.set_exception(error)
                fut.exception()  # retrieved: a waiter cancelled in this tick never reads it

    def close(self) -> None:
        """Stop the timer and forget the deadlines (the pool is closing)."""
        for handle in (self._timer, self._watch):
            if handle is not None:
                handle.cancel()
        self._timer = self._watch = None
        self._timer_at = _INF
        self._heap.clear()

    # ------------------------------------------------------------------ deadlines

    def _push_heap(self, fut: asyncio.Future[_T], deadline: float, started: float) -> None:
        heap = self._heap
        while heap and heap[0][2].done():
            heappop(heap)
        if len(heap) > 2 * self.live + 256:
            # Entries of waiters served or gone while others waited pile up: compact.
            self._heap = heap = [e for e in heap if not e[2].done()]
            heapify(heap)
        self._seq += 1
        heappush(heap, (deadline, self._seq, fut, started))
        if deadline < self._timer_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The timer: fail every waiter whose deadline has passed, then re-arm."""
        self._timer = None
        self._timer_at = _INF
        loop = self._loop
        assert loop is not None
        now = loop.time()
        expired: list[tuple[asyncio.Future[_T], float]] = []
        earliest = _INF
        for fut, deadline, started, _ in self._fifo:  # in-order deadlines: stop at the first
            if deadline <= now:  # one still ahead (own-timeout entries hold inf here)
                expired.append((fut, started))
            elif deadline != _INF:
                earliest = deadline
                break
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            _, _, fut, started = heappop(heap)
            expired.append((fut, started))
        for fut, started in expired:  # (callbacks run here: the deque is not iterated)
            if not fut.done():
                self.live -= 1
                fut.set_exception(self._timed_out(started, now))
        fifo = self._fifo
        while fifo and fifo[0][0].done():
            fifo.popleft()
        if heap and heap[0][0] < earliest:
            earliest = heap[0][0]
        if earliest != _INF:
            self._arm(earliest)
