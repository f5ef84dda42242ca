"""The hot core: lending a connection (acquire) and taking it back (release).

Design (read this before changing anything in the pool)
-------------------------------------------------------
The pool is one object built in layers, each a class in its own module that adds one
job to the one below, importing only what lies below it::

    leaves    _errors _events _config _stats _tracking _quiet _policy _settings_types
    units     _slots (SlotTable) _waiters (WaiterQueue) _guard (loop/thread/fork)
    boundary  _pg (all asyncpg knowledge) _connection (the lent wrapper)
    PoolState   _state.py    every attribute; the synchronous transitions
    PoolCore    _core.py     this module: lend, take back, wait
    PoolWorkers _workers.py  the async I/O: connect, reset, ping, close, growth
    PoolUpkeep  _upkeep.py   maintenance: lifetimes, idle expiry, keepalive, leaks
    Pool        _pool.py     the public API: settings, open/close, stats, resize
    then        __init__, routing, contrib, testing

``tests/test_layers.py`` enforces the order. The rules every layer follows:

* Every connection is a slot in exactly one :class:`SlotState` (:class:`SlotTable`);
  ``size`` is a sum of counts, never a guess.
* State changes happen in plain synchronous methods. They contain no ``await``, so on
  one event loop they need no lock and cancellation cannot interrupt them. The I/O they
  decide on (connect, reset, ping, close) runs afterwards, in the borrower's task (a
  ping before a lend) or in a pool-owned background task.
* Borrowers wait in a :class:`WaiterQueue` (its push admits them: ``_refusal``): a freed
  connection goes to the oldest waiter still waiting; a waiter cancelled in the same tick
  as it was handed one passes it on. Nothing is lost, and a cancellation always re-raises.
* Decisions with numbers in and a verdict out are pure functions in ``_policy``.
* The hot path (an idle connection, nobody waiting) is the one hand-inlined code of the
  pool: :meth:`_AcquireContext.__aenter__` pops the most recently used idle connection
  and :meth:`PoolCore._returned` pushes it back, with no task, timer, lock or server
  round trip, one clock read each. The acquire after a wait shares its lend block (and
  notes its wait, filed in batches: ``_Recorder.noted``). The release inlines
  :meth:`_Recorder.add` (``tests/test_pool_unit.py`` pins the copy to it) and the clean
  case of :func:`_policy.return_verdict` (``tests/test_policy.py`` pins that). Measure
  with ``python -m benchmarks.icount`` before adding to either.
* Borrowers wait only on the pool. Connections are opened by background tasks and go
  to the oldest waiter, like a returned one (``_workers``).
"""

from __future__ import annotations

import asyncio
import traceback
from _thread import get_ident
from bisect import bisect_left
from collections.abc import Awaitable, Generator
from time import monotonic as _now
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _pg
from ._errors import (
    ConnectionReleasedError,
    PoolError,
    PoolUsageError,
    TooManyWaiters,
)
from ._events import EventKind
from ._guard import check_loop
from ._policy import admission_limit, return_verdict
from ._slots import CHECKING, IDLE, IN_USE, RETURNING, SlotState, _Slot
from ._state import CLOSED, OPEN, PoolState
from ._stats import _NOTED_MAX, HISTOGRAM_BOUNDS

if TYPE_CHECKING:
    from ._connection import PooledConnection

__all__ = ("PoolCore", "_AcquireContext")


_new_object = object.__new__
# The hot path files durations of up to a millisecond with literal comparisons (a
# bisect is a C call with generic float comparisons, several times the cost).
_FIRST_BOUNDS = (0.0001, 0.0005, 0.001)
if HISTOGRAM_BOUNDS[:3] != _FIRST_BOUNDS:  # pragma: no cover - a guard for edits
    raise RuntimeError("asyncpool: HISTOGRAM_BOUNDS changed; update the unrolled buckets")
_LEASE_CLOSED = _pg.LEASE_CLOSED
_LEASE_NEEDS_ROLLBACK = _pg.LEASE_NEEDS_ROLLBACK
# An idle connection lent after this long is first polled for input from the server (a
# session ended by the server must not be lent, see _pg.input_check); sooner it is not:
# a connection given back a moment ago is fine, and the busy hot path stays free of it.
_INPUT_CHECK_AFTER = 0.001


class PoolCore(PoolState):
    """Lending and taking back: the hot paths and the waiting path (internal)."""

    __slots__ = ()

    # ------------------------------------------------------------ waiting (sync)

    def _on_lent(self, slot: _Slot, waited: float, frames: int) -> None:
        """Event hooks and leak tracking of a lend; ``frames``: pool frames on the stack."""
        if self._hooks:
            self._emit(EventKind.ACQUIRE, waited)
        if self._leak_timeout is not None:
            slot.leak_reported = False
            slot.stack = "".join(traceback.format_stack(limit=10 + frames)[:-frames])

    def _take_idle(self, now: float) -> _Slot | None:
        """Pop an idle connection for a borrower; retire expired or broken ones on the way.

        Returns the slot in IN_USE (ready) or CHECKING (the caller must ping it).
        """
        table = self._table
        ping_after = self._config.ping_after_idle
        while self._idle:
            slot = self._idle.pop()
            if slot.conn.is_closed():
                table.move(slot, IN_USE)
                self._discard(slot, lost=True)
            elif now >= slot.expires_at:
                table.move(slot, IN_USE)
                self._retire(slot, "max_lifetime")
            elif (ping_after is not None and now - slot.last_used >= ping_after) or (
                slot.has_input()
            ):
                # Idle long enough to doubt it, or the server sent something while it was
                # idle (most often the end of the session): check it before lending it.
                table.move(slot, CHECKING)
                return slot
            else:
                table.move(slot, IN_USE)
                return slot
        return None

    def _enqueue(self, started: float, deadline: float, in_order: bool) -> asyncio.Future[_Slot]:
        """Queue a borrower (sync), refusing when the pool is not open or the database is
        down (the queue's push refuses by :meth:`_refusal`), and start a connect for it
        if the pool may grow.
        """
        if self._state is not OPEN:
            raise self._refuse()
        if self._down:
            self._check_down()
        fut = self._waiters.push(started, deadline, in_order)
        if self._table.active < self._max_size:
            self._grow()  # (it returns at once when the pool is full)
        return fut

    def _check_down(self) -> None:
        """Refuse to queue when the database is known down.

        "Known down": nothing is open, and a connect was refused less than
        ``reconnect_initial_delay`` ago, or the settings were refused (that does not
        change by itself). Past that moment, or while an attempt is under way, the
        borrower waits for a fresh attempt's outcome (within its deadline), and one starts
        now if none is: a server that restarted quickly serves at once, while a server
        that is down is tried at most once per ``reconnect_initial_delay``, cheaply.
        """
        if self._down and not self._table.open_count():
            loop = self._loop
            assert loop is not None
            if self._failure is _pg.CONFIG_ERROR or (
                self._table.counts[SlotState.CONNECTING] == 0
                and loop.time() - self._failed_at < self._config.reconnect_initial_delay
            ):
                self._counters.unavailable_total += 1
                raise self._unavailable_error()
            self._next_connect_at = 0.0  # (the caller's _grow() starts one at once)

    def _refusal(
        self, live: int, position: int, remaining: float, in_order: bool
    ) -> PoolError | None:
        """The waiter queue's admission callback (see ``_waiters``): the error that turns
        a newcomer away, or None to queue it. Refused: at ``max_waiting``; and, with
        overload control, further back than the queue can serve in its time left
        (:func:`_policy.admission_limit`; for the pool's own timeout worked out once per
        maintenance pass).
        """
        if live >= self._max_waiting:  # (inf when unbounded)
            self._counters.too_many_waiters_total += 1
            return TooManyWaiters(
                f"asyncpool pool {self.name!r}: {live} borrowers already wait (max_waiting="
                f"{self._config.max_waiting}) and all {len(self._slots)} connections are busy; "
                "raise max_waiting or max_size, or shed load"
            )
        if not (live and (live >= self._admit_queue or not in_order) and self._waiters.adaptive):
            return None
        if position <= (
            self._admit_queue
            if in_order
            else admission_limit(self._max_size, self._mean_hold, remaining)
        ):
            return None
        return self._refuse_overloaded(position, remaining)

    def _abandon(self, fut: asyncio.Future[_Slot], exc: BaseException) -> None:
        """A waiter stopped waiting (cancelled, timed out, pool closed). No await here."""
        if isinstance(exc, asyncio.CancelledError):
            self._counters.cancelled_total += 1
        handed = self._waiters.abandon(fut)
        if handed is not None:  # handed a connection in the same tick: pass it on
            self._hand_over(handed)
        # A connection may have gone idle while this dead waiter still counted as
        # waiting (and so held newcomers back): serve the live waiters from idle now.
        while self._idle and self._waiters.live:
            slot = self._idle.pop()
            self._table.move(slot, IN_USE)
            if not self._hand_over(slot) and slot.state is IDLE:
                break  # no live waiter after all (an expired slot was retired: go on)

    def _handed_late(self, slot: _Slot) -> None:
        """A waiter was handed ``slot`` just before close/terminate: retire it, refuse."""
        if slot in self._slots and slot.state is IN_USE:
            self._retire(slot, "pool closing")
        raise self._refuse()

    # ------------------------------------------------------------ waiting (async)

    async def _checked_idle(self, started: float, deadline: float) -> _Slot | None:
        """The idle connections that need a look before a lend (a ping, or retirement):
        the first usable one (IN_USE, for the caller to lend), or None when none is left
        and the borrower must queue.
        """
        while self._idle and not self._waiters.live:
            if self._state is not OPEN:
                raise self._refuse()
            slot = self._take_idle(_now())
            if slot is None:
                return None
            if slot.state is not CHECKING or await self._check(slot, started, deadline):
                return slot
        return None

    async def _check(self, slot: _Slot, started: float, deadline: float) -> bool:
        """Ping a doubtful idle connection for a borrower (PoolWorkers provides it)."""
        raise NotImplementedError

    async def _run_setup(self, conn: PooledConnection) -> None:
        assert self._config.setup is not None
        try:
            await self._config.setup(conn)
        except BaseException:
            if conn._slot is not None:
                self._release_nowait(conn)
            raise

    # ------------------------------------------------------------ taking back

    def _release_nowait(self, conn: PooledConnection, timeout: float | None = None) -> None:
        try:
            slot = conn._slot
            mine = conn._pool is self
        except AttributeError:
            raise PoolUsageError(
                f"release() takes a connection lent by asyncpool pool {self.name!r}, got {conn!r}"
            ) from None
        if slot is None or not mine:
            self._check_release(conn)
            return
        tid_loop = self._tid_loop  # the cheap test of _guard's module notes
        if (
            tid_loop._thread_id != get_ident()
            if tid_loop is not None
            else self._owner_tid != get_ident() or not self._loop.is_running()  # type: ignore[union-attr]
        ) and self._state is not CLOSED:
            check_loop(self)
        self._returned(conn, slot, timeout)

    def _check_release(self, conn: PooledConnection) -> None:
        """A release that is not of a live lease of this pool: return for a second
        release of the same connection (harmless, as in asyncpg), else raise.
        """
        if conn._slot is None:
            if conn._pool is self:
                return
            raise ConnectionReleasedError(
                f"this connection was already released to asyncpool pool {conn._pool.name!r}"
            )
        raise PoolUsageError(
            f"this connection belongs to asyncpool pool {conn._pool.name!r}, not {self.name!r}"
        )

    def _returned(self, conn: PooledConnection, slot: _Slot, timeout: float | None) -> None:
        """End the lease of ``conn`` (live, of this pool) on ``slot`` (sync), on the pool's
        loop (the caller checked): the hot path of release, also called straight from
        ``_AcquireContext.__aexit__``.
        """
        conn._con = None
        conn._slot = None
        if slot.state is not IN_USE:  # terminated while lent (pool.terminate)
            return
        now = _now()
        held = now - slot.acquired_at
        use_time = self._counters.use_time  # _Recorder.add, inlined (pinned by a test)
        use_time.sum += held
        if held > use_time.max:
            use_time.max = held
        if held <= 0.001:  # the first three buckets, unrolled (see _FIRST_BOUNDS)
            use_time.buckets[0 if held <= 0.0001 else 1 if held <= 0.0005 else 2] += 1
        else:
            use_time.buckets[bisect_left(HISTOGRAM_BOUNDS, held)] += 1
        if self._hooks:
            self._emit(EventKind.RELEASE, held)
        slot.last_used = now  # (slot.stack, if any, stays for a report; the next lend sets it)
        if slot.callbacks is not None:
            _pg.remove_callbacks(slot.conn, slot.callbacks)
            slot.callbacks = None
        end_lease = slot.end_lease  # (a local: see _AcquireContext.__aenter__)
        ended = end_lease()
        if (
            not ended  # _LEASE_CLEAN (0): return_verdict's clean case, inlined (pinned)
            and not slot.dirty
            and self._auto_reset
            and now < slot.expires_at
            and not self._limit_uses
        ):
            # A skipped reset: counted as use_time.count - returns_not_skipped.
            if self._over_max:
                self._hand_over(slot)  # retires it while the pool is above its limit
            elif not (self._waiters.live and self._waiters.give(slot)):
                slot.state = IDLE  # IN_USE -> IDLE: no counter changes (see SlotTable)
                self._idle.append(slot)
            return
        self._on_returned_slow(slot, ended, now, timeout)

    def _on_returned_slow(self, slot: _Slot, ended: int, now: float, timeout: float | None) -> None:
        """A returned connection that is not simply clean: decide by the return verdict."""
        cfg = self._config
        mode = cfg.reset
        verdict = return_verdict(
            closed=ended == _LEASE_CLOSED,
            used_up=now >= slot.expires_at  # also after expire() and close(): _expire_all()
            or (self._max_uses is not None and slot.uses >= self._max_uses)
            or (self._max_queries is not None and _pg.query_count(slot.conn) >= self._max_queries),
            needs_rollback=ended == _LEASE_NEEDS_ROLLBACK,
            dirty=slot.dirty,
            mode="custom" if callable(mode) else mode,
            shares_sessions=cfg.shares_server_sessions,
        )
        action = verdict.action
        if action == "hand over":
            self._hand_over(slot)
            return
        self._counters.returns_not_skipped += 1
        if action == "discard":
            self._discard(slot, lost=ended == _LEASE_CLOSED)
        elif action == "retire":
            self._retire(slot, "lifetime, uses or expire()")
        else:
            if verdict.rollback and _pg.unmanaged_transaction(slot.conn):
                self._report_open_transaction(slot)
            self._table.move(slot, RETURNING)
            budget = cfg.reset_timeout if timeout is None else timeout
            self._spawn(
                self._reset(slot, verdict.rollback, verdict.full, budget), "asyncpool-reset"
            )

    def _report_open_transaction(self, slot: _Slot) -> None:
        """A borrower gave back a connection inside a transaction it began itself (a bug
        in the caller: its work is rolled back). Told through the event loop's exception
        handler, as asyncpg's pool does, with where it was acquired when known.
        """
        where = f"; it was acquired at:\n{slot.stack}" if slot.stack else ""
        loop = self._loop
        assert loop is not None
        loop.call_exception_handler(
            {
                "message": (
                    f"asyncpool pool {self.name!r}: Resetting connection with an active "
                    f"transaction {slot.conn!r} (it is rolled back; end transactions with "
                    f"`async with conn.transaction()`){where}"
                )
            }
        )

    async def _reset(self, slot: _Slot, rollback: bool, full: bool, budget: float) -> None:
        """Reset a returned connection (PoolWorkers provides it)."""
        raise NotImplementedError


class _AcquireContext:
    """What :meth:`Pool.acquire` returns: awaitable, and an async context manager.

    The hot path lives here, inlined (a method call is a tenth of what an idle acquire
    costs): lend the most recently used idle connection when it needs no check. Its
    state change is synchronous and ends before the first ``await``; everything else
    goes to the slow path (:meth:`PoolCore._checked_idle`, then the queue: straight to
    :meth:`WaiterQueue.push` for the usual wait, else :meth:`PoolCore._enqueue`), and
    both end in the same lend block.
    """

    __slots__ = ("_conn", "_guarded", "_pool", "_timeout")

    # Made by Pool.acquire(), never by calling the class.
    _pool: PoolCore
    _timeout: float | None
    _conn: PooledConnection | None
    # True for `await pool.acquire()`: nothing but the borrower ends that lease, so its
    # wrapper reclaims the connection if dropped unreleased (see wrapper_classes).
    _guarded: bool

    def __await__(self) -> Generator[Any, None, PooledConnection]:
        self._guarded = True
        return self.__aenter__().__await__()

    async def __aenter__(self) -> PooledConnection:
        pool = self._pool
        if pool._state is not OPEN:
            raise pool._refuse()
        tid_loop = pool._tid_loop  # the cheap test of _guard's module notes
        if (
            tid_loop._thread_id != get_ident()
            if tid_loop is not None
            else pool._owner_tid != get_ident() or not pool._loop.is_running()  # type: ignore[union-attr]
        ):
            check_loop(pool)
        idle = pool._idle
        waited = 0.0
        slot: _Slot | None = None
        if idle and not pool._waiters.live:
            slot = idle[-1]
            now = _now()
            idle_for = now - slot.last_used
            if not (
                now < slot.expires_at
                and idle_for < pool._ping_after
                and not slot.conn.is_closed()
                # A connection idle for a while is polled for input first (_take_idle):
                # one poll(0) where the pool is not busy; none on one just given back.
                and (idle_for < _INPUT_CHECK_AFTER or not slot.has_input())
            ):
                slot = None  # idle ones to check (or retire) first: the slow path below
        if slot is not None:
            idle.pop()
            slot.state = IN_USE  # IDLE -> IN_USE: no counter changes (see SlotTable)
            slot.acquired_at = now
        else:  # the slow path: check idle ones, else queue
            timeout = self._timeout
            clock = pool._clock
            started = clock()
            deadline = started + (pool._acquire_timeout if timeout is None else timeout)
            if idle and not pool._waiters.live:
                slot = await pool._checked_idle(started, deadline)
                if slot is None:  # (not in arrival order: that may have taken a while)
                    fut = pool._enqueue(started, deadline, False)
            elif not pool._down and pool._table.active >= pool._max_size:
                # The usual wait: open (tested above), not known down, full (nothing to
                # grow), so _enqueue would only push; the queue's push may still refuse.
                fut = pool._waiters.push(started, deadline, timeout is None)
            else:
                fut = pool._enqueue(started, deadline, timeout is None)
            if slot is None:
                try:
                    slot = await fut
                except BaseException as exc:
                    pool._abandon(fut, exc)
                    raise
                if pool._state is not OPEN:
                    pool._handed_late(slot)
            slot.acquired_at = _now()
            waited = clock() - started
            noted = pool._counters.wait_time.noted  # filed in batches (see _Recorder)
            noted.append(waited)
            if len(noted) >= _NOTED_MAX:
                pool._counters.wait_time.file_noted()
        # The lend block, for both paths.
        slot.uses += 1
        slot.dirty = False
        conn = _new_object(slot.guarded_wrapper if self._guarded else slot.wrapper)
        conn._pool = pool  # (no __init__ call: see PooledConnection)
        conn._slot = slot
        conn._con = slot.conn
        conn._lease = slot.uses
        if pool._extras:
            pool._on_lent(slot, waited, 2)
            if pool._setup is not None:
                await pool._run_setup(conn)
        self._conn = conn
        return conn  # type: ignore[no-any-return]

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # Not a coroutine: release never waits, so hand back an already-done future
        # (cheaper than a coroutine object; nothing to cancel either way).
        conn = self._conn
        self._conn = None
        pool = self._pool
        if conn is not None:
            slot = conn._slot
            if slot is not None:  # else released inside the block already
                if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                    # Cancelled anywhere inside the block (perhaps between asyncpg's
                    # prepare and execute): make the reset end whatever the session holds.
                    slot.dirty = True
                if pool._forked:
                    check_loop(pool)  # refuses: a forked child must not touch the pool
                # No loop check otherwise: `async with` runs this in the task that ran
                # __aenter__, which checked it is on the pool's loop (so in its thread).
                pool._returned(conn, slot, None)
        return pool._done
