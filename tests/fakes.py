"""A fake server and connections for deterministic tests of the pool's state machine.

The fake quacks like the parts of ``asyncpg.Connection`` the pool uses. Connects can
be held open (``server.hold_connects``) and completed or failed one by one by the
test, so every interleaving is forced on purpose rather than hoped for.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class FakeConnection:
    def __init__(self, server: FakeServer, number: int) -> None:
        self.server = server
        self.number = number
        self.closed = False
        self.in_transaction = False
        self.queries: list[str] = []
        self._top_xact = None
        self.query_delay = 0.0
        self.hang = False

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.number}{' closed' if self.closed else ''}>"

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        if self.closed:
            raise ConnectionResetError("fake connection is closed")
        self.queries.append(query)
        self.server.queries.append((self.number, query))
        if self.hang:
            await asyncio.Event().wait()
        if self.query_delay:
            await asyncio.sleep(self.query_delay)
        if self.closed:
            raise ConnectionResetError("fake connection was closed mid-query")
        words = query.strip().upper()
        if words.startswith("BEGIN"):
            self.in_transaction = True
        elif words.startswith(("ROLLBACK", "COMMIT")):
            self.in_transaction = False
        return "OK"

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        await self.execute(query, *args)
        return 1

    async def close(self, *, timeout: float | None = None) -> None:
        if self.server.hang_close and not self.closed:
            await asyncio.Event().wait()
        self.closed = True
        self.server.closed += 1

    def terminate(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.closed += 1


class FakeServer:
    """Hands out FakeConnections; lets a test hold, complete or fail connects."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.connections: list[FakeConnection] = []
        self.queries: list[tuple[int, str]] = []
        self.hold_connects = False
        self.pending: deque[asyncio.Future[None]] = deque()
        self.fail_with: BaseException | None = None
        self.connect_delay = 0.0
        self.hang_close = False
        self.attempts = 0

    @property
    def open_count(self) -> int:
        return self.opened - self.closed

    async def connect(self, *args: Any, **kwargs: Any) -> FakeConnection:
        self.attempts += 1
        if self.hold_connects:
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pending.append(gate)
            await gate
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.fail_with is not None:
            raise self.fail_with
        self.opened += 1
        conn = FakeConnection(self, self.opened)
        self.connections.append(conn)
        return conn

    def release_connect(self, error: BaseException | None = None) -> None:
        gate = self.pending.popleft()
        if error is None:
            gate.set_result(None)
        else:
            gate.set_exception(error)

    async def wait_pending(self, n: int = 1) -> None:
        for _ in range(1000):
            if len(self.pending) >= n:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"expected {n} pending connects, have {len(self.pending)}")


def check_slots(pool: Any) -> None:
    """Every slot counted exactly once, and the waiters too (no size bound: a model
    step may leave the pool above max_size while resized connections close)."""
    stats = pool.stats()
    pool._table.check()  # each slot once in its state, the idle deque exactly the IDLE ones
    assert stats.size == len(pool._slots)
    assert stats.size == (
        stats.idle
        + stats.in_use
        + stats.connecting
        + stats.returning
        + stats.checking
        + stats.closing
    )
    assert len(pool._idle) == stats.idle
    live = sum(1 for fut in pool._waiters.futures() if not fut.done())
    assert live == stats.waiting, (live, stats.waiting)


def check_invariants(pool: Any) -> None:
    """The pool's bookkeeping adds up: every slot counted exactly once, within size."""
    check_slots(pool)
    stats = pool.stats()
    assert all(s.state == 1 for s in pool._idle)
    assert stats.size <= stats.max_size + stats.closing
