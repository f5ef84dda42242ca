"""Connection slots: one explicit state per connection the pool owns.

Every connection the pool owns (or is opening) lives in exactly one :class:`_Slot`,
and every slot is in exactly one :class:`SlotState`. :class:`SlotTable` holds them
with a count per state, so ``size == sum(counts)`` is an invariant
(:meth:`SlotTable.check`, which the tests call after every scenario).

The legal transitions, and who makes them::

    CONNECTING -> IN_USE      connect succeeded (then handed over, or made IDLE)
    CONNECTING -> (removed)   connect failed or was cancelled
    IDLE       -> IN_USE      lent (the hot path), or taken for a waiter
    IDLE       -> CHECKING    taken to be pinged (before a lend, or keepalive)
    IDLE       -> CLOSING     retired (lifetime, idle limit, resize, expire)
    IN_USE     -> IDLE        given back clean with nobody waiting (the hot path)
    IN_USE     -> RETURNING   given back, to be reset
    IN_USE     -> CLOSING     retired at release
    RETURNING  -> IN_USE      reset done (then handed over)
    CHECKING   -> IN_USE      ping answered
    any        -> (removed)   discarded (lost, broken, aborted) or closed

IN_USE also covers the moments when pool code holds a slot between two steps (a
reset just done, a connect just made): the slot is not idle and not lent to anyone
else, and the next step moves it on before the pool's code awaits anything.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = (
    "CHECKING",
    "CLOSING",
    "CONNECTING",
    "IDLE",
    "IN_USE",
    "N_STATES",
    "RETURNING",
    "SlotState",
    "SlotTable",
    "_Slot",
)


class SlotState(enum.IntEnum):
    """The state of one connection slot."""

    CONNECTING = 0
    """A connection is being opened for this slot (it counts toward ``size``)."""
    IDLE = 1
    """Open and ready to lend."""
    IN_USE = 2
    """Lent to a borrower (or handed to a waiter that is about to resume)."""
    RETURNING = 3
    """Returned by its borrower; the pool is resetting it before the next lend."""
    CHECKING = 4
    """The pool is pinging it (before a lend, or as a background keepalive)."""
    CLOSING = 5
    """Being closed; it still holds a server connection until the close ends."""

    __module__ = "asyncpool"


N_STATES = len(SlotState)


def _no_lease() -> int:
    raise RuntimeError("asyncpool internal error: a lease ended on a slot without a connection")


def _no_input() -> bool:
    return False


class _Slot:
    """One connection and its lifecycle facts (internal)."""

    __slots__ = (
        "acquired_at",
        "callbacks",
        "conn",
        "created_at",
        "dirty",
        "end_lease",
        "expires_at",
        "generation",
        "has_input",
        "last_used",
        "leak_reported",
        "stack",
        "state",
        "guarded_wrapper",
        "uses",
        "wrapper",
    )

    def __init__(self, generation: int) -> None:
        self.state = SlotState.CONNECTING
        self.conn: Any = None
        # _pg.lease_ender(conn), made when the connection opens.
        self.end_lease: Callable[[], int] = _no_lease
        # _pg.input_check(conn): has the server sent something while the slot was idle?
        self.has_input: Callable[[], bool] = _no_input
        # The classes of the wrappers lent for this connection, by `async with` and by
        # `await pool.acquire()` (_connection.wrapper_classes), set when it opens.
        self.wrapper: Any = None
        self.guarded_wrapper: Any = None
        self.generation = generation
        self.created_at = 0.0
        self.expires_at = float("inf")
        self.last_used = 0.0
        self.acquired_at = 0.0
        # Lends so far; also the lease number a lost wrapper's reclaim is checked against.
        self.uses = 0
        self.dirty = False
        self.leak_reported = False
        self.stack: str | None = None
        # (remove-method name, callback) pairs a borrower registered through the wrapper.
        self.callbacks: list[tuple[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"<slot {self.state.name} uses={self.uses}>"


# The states as plain names, for the pool's modules (one global lookup, no enum access).
CONNECTING = SlotState.CONNECTING
IDLE = SlotState.IDLE
IN_USE = SlotState.IN_USE
RETURNING = SlotState.RETURNING
CHECKING = SlotState.CHECKING
CLOSING = SlotState.CLOSING
_IDLE, _IN_USE, _CLOSING, _CONNECTING = IDLE, IN_USE, CLOSING, CONNECTING


class SlotTable:
    """The pool's slots, a count per state, and the idle ones, most recently used last.

    The idle deque holds exactly the IDLE slots, so the hot paths move a slot between
    IDLE and IN_USE by touching only the deque and ``slot.state``: ``counts[IDLE] +
    counts[IN_USE]`` stays right, and :meth:`state_counts` settles the split from the
    deque. Every other transition goes through :meth:`move`.
    """

    __slots__ = ("active", "counts", "idle", "slots")

    def __init__(self) -> None:
        self.slots: set[_Slot] = set()
        self.counts = [0] * N_STATES
        #: Slots not CLOSING (being opened included): what max_size bounds.
        self.active = 0
        self.idle: deque[_Slot] = deque()

    def new(self, generation: int) -> _Slot:
        """A slot for a connection about to be opened (CONNECTING)."""
        slot = _Slot(generation)
        self.slots.add(slot)
        self.counts[_CONNECTING] += 1
        self.active += 1
        return slot

    def move(self, slot: _Slot, state: SlotState) -> None:
        """Move ``slot`` to ``state``, keeping the counts (not for IDLE: see make_idle)."""
        counts = self.counts
        if state is _CLOSING and slot.state is not _CLOSING:
            self.active -= 1
        counts[slot.state] -= 1
        counts[state] += 1
        slot.state = state

    def make_idle(self, slot: _Slot) -> None:
        """A ready slot (IN_USE) becomes IDLE, most recently used."""
        self.move(slot, _IDLE)
        self.idle.append(slot)

    def take(self, slot: _Slot, state: SlotState) -> None:
        """Take an IDLE slot out of the idle deque into ``state``."""
        self.idle.remove(slot)
        self.move(slot, state)

    def remove(self, slot: _Slot) -> bool:
        """Forget ``slot`` (in any state); False if it was already gone. It is left
        CLOSING, so a late release of its lease finds it closed.
        """
        if slot not in self.slots:
            return False
        self.slots.remove(slot)
        self.counts[slot.state] -= 1
        if slot.state is not _CLOSING:
            self.active -= 1
        if slot.state is _IDLE:
            try:
                self.idle.remove(slot)
            except ValueError:
                pass
        slot.state = _CLOSING
        return True

    def clear(self) -> None:
        """Forget every slot (after fork(): the connections are the parent's)."""
        self.slots.clear()
        self.idle.clear()
        self.counts = [0] * N_STATES
        self.active = 0

    def state_counts(self) -> list[int]:
        """Slots per :class:`SlotState` (index by state), the IDLE/IN_USE split settled
        from the idle deque.
        """
        counts = self.counts
        ready = counts[_IDLE] + counts[_IN_USE]
        counts[_IDLE] = len(self.idle)
        counts[_IN_USE] = ready - counts[_IDLE]
        return counts

    def open_count(self) -> int:
        """Slots holding an open connection that is not closing."""
        n = self.state_counts()
        return n[_IDLE] + n[_IN_USE] + n[SlotState.RETURNING] + n[SlotState.CHECKING]

    def check(self) -> None:
        """Assert the invariants: each slot counted once in its state, the idle deque
        exactly the IDLE slots, ``active`` exactly the slots not CLOSING.
        """
        by_state = [0] * N_STATES
        for slot in self.slots:
            by_state[slot.state] += 1
        counts = self.state_counts()
        assert by_state == counts, (by_state, counts)
        assert self.active == len(self.slots) - counts[_CLOSING], (self.active, counts)
        assert len(set(self.idle)) == len(self.idle)
        assert all(slot.state is _IDLE and slot in self.slots for slot in self.idle)
