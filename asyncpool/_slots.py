"""Connection slots: one explicit state per connection the pool owns.

Every connection the pool owns (or is opening) lives in exactly one
:class:`_Slot`, and every slot is in exactly one :class:`SlotState`. The pool
keeps a count per state, so ``size == sum(counts)`` is an invariant the tests
check after every scenario.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._connection import PooledConnection

__all__ = ("SlotState", "_Slot")


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
        self.wrapper: type[PooledConnection] = None  # type: ignore[assignment]
        self.guarded_wrapper: type[PooledConnection] = None  # type: ignore[assignment]
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
