"""The pool's state, and the synchronous transitions every other layer builds on.

The pool is one object built in layers, each a class in its own module that adds one
job to the one below (see ``_core.py`` for the whole picture)::

    PoolState (here)   every attribute, and the state changes: hand over, discard,
                       retire, remove, the errors of a pool that cannot lend
    PoolCore           the hot paths: lend (acquire) and take back (release), waiting
    PoolWorkers        the async I/O: connect, reset, ping, keepalive, close, growth
    Pool               the public API: settings, open/close, stats, maintenance

Nothing here awaits: on one event loop these methods need no lock, and a cancellation
cannot interrupt them. They decide, and hand the I/O they decide on (a close, a reset)
to a background task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

from . import _pg
from ._config import PoolConfig, server_label
from ._errors import (
    ConnectionConfigError,
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolOverloaded,
    PoolTimeout,
    PoolUsageError,
)
from ._events import EventHook, EventKind, PoolEvent, emit
from ._policy import admission_limit, diagnose_timeout
from ._sizer import Sizer
from ._slots import (
    CHECKING,
    CLOSING,
    CONNECTING,
    IDLE,
    IN_USE,
    RETURNING,
    SlotTable,
    _Slot,
)
from ._stats import _Counters
from ._waiters import WaiterQueue

if TYPE_CHECKING:
    from collections import deque

__all__ = ("CLOSED", "CLOSING_POOL", "NEW", "OPEN", "OPENING", "PoolState")

logger = logging.getLogger("asyncpool.pool")


# The pool's own lifecycle (not a slot's).
NEW, OPENING, OPEN, CLOSING_POOL, CLOSED = "new", "opening", "open", "closing", "closed"

EXPIRED = float("-inf")
INF = float("inf")


class PoolState:
    """Every attribute of a pool, and its synchronous state changes (internal)."""

    __module__ = "asyncpool"

    # Slots, not a __dict__: with this many attributes an instance dict stops sharing its
    # keys, and CPython then reads every `self._x` with a dict lookup instead of at a
    # fixed offset (the hot path reads a dozen of them per borrow). Subclasses add none.
    __slots__ = (
        "__weakref__",
        "_acquire_timeout",
        "_admit_queue",
        "_auto_reset",
        "_backoff",
        "_clock",
        "_close_task",
        "_closers",
        "_config",
        "_config_error_logged",
        "_connect_estimate",
        "_counters",
        "_done",
        "_down",
        "_empty",
        "_extras",
        "_failed_at",
        "_failure",
        "_forked",
        "_generation",
        "_hooks",
        "_idle",
        "_idle_timer",
        "_init_size",
        "_last_connect_error",
        "_leak_timeout",
        "_lends_gone",
        "_limit_uses",
        "_loop",
        "_hold_mark",
        "_lost_in_burst",
        "_lost_logged_at",
        "_mean_hold",
        "_overload_logged_at",
        "_maintenance",
        "_max_queries",
        "_max_size",
        "_max_uses",
        "_max_waiting",
        "_next_connect_at",
        "_over_max",
        "_owner_tid",
        "_ping_after",
        "_requested_loop",
        "_retry_handle",
        "_setup",
        "_sizer",
        "_slots",
        "_state",
        "_statement_pooler",
        "_table",
        "_tasks",
        "_tid_loop",
        "_waiters",
    )

    def __init__(self, config: PoolConfig, init_size: int, loop: Any) -> None:
        self._config = config
        self._init_size = init_size  # asyncpg 0.32's init_size: connections open() opens
        self._requested_loop = loop
        self._state = NEW
        # The loop, its thread and the process (set by open(); see _guard).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tid_loop: Any = None
        self._owner_tid: int | None = None
        self._forked = False
        self._clock: Callable[[], float] = _now  # the loop's clock, set by open()
        self._done: asyncio.Future[None]  # a done future, made by open() (see __aexit__)
        self._table = SlotTable()
        # (The table's own containers, under the names the hot paths read.)
        self._slots: set[_Slot] = self._table.slots
        self._idle: deque[_Slot] = self._table.idle
        self._waiters: WaiterQueue[_Slot] = WaiterQueue(
            self._timed_out, self._shed, self._on_standing, self._refusal
        )
        # A lease's usual length, and the use-time (count, sum) it came from (_upkeep).
        self._mean_hold = 0.0
        self._hold_mark = (0, 0.0)
        self._admit_queue = INF  # the admission limit for the pool's own timeout
        self._overload_logged_at = float("-inf")
        self._counters = _Counters()
        self._lends_gone = 0  # lends of slots no longer in the pool (see _lends)
        self._over_max = False  # above the limit (resize, autosize): returns check the bound
        self._generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closers: set[asyncio.Task[Any]] = set()  # (of _tasks) polite closes: close() waits
        self._maintenance: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._empty: asyncio.Future[None] | None = None
        self._hooks: list[EventHook] = []
        # Connecting: backoff, failures, and what they tell (see PoolWorkers).
        self._retry_handle: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._next_connect_at = 0.0
        self._last_connect_error: BaseException | None = None
        self._failure = _pg.OUTAGE  # the kind of the last connect failure
        self._config_error_logged: tuple[type, str] | None = None
        self._connect_estimate: float | None = None  # seconds a connect takes (an EWMA)
        self._failed_at = EXPIRED  # (loop time) when the database was last found down
        self._down = False
        self._idle_timer: asyncio.TimerHandle | None = None  # see _upkeep
        self._lost_logged_at = float("-inf")
        self._lost_in_burst = 0
        self._leak_timeout: float | None = None
        self._setup: Callable[[Any], Awaitable[None]] | None = None
        self._sizer = (
            Sizer(config.min_size, config.max_size, config.instances) if config.autosize else None
        )
        self._apply_config()

    def _apply_config(self) -> None:
        """Cache the settings the hot path reads (plain attributes, no lookups)."""
        cfg = self._config
        self._ping_after = INF if cfg.ping_after_idle is None else cfg.ping_after_idle
        self._max_uses = cfg.max_uses
        self._max_queries = cfg.max_queries
        self._limit_uses = cfg.max_uses is not None or cfg.max_queries is not None
        self._max_size = cfg.max_size if self._sizer is None else self._sizer.limit
        self._max_waiting = INF if cfg.max_waiting is None else cfg.max_waiting
        self._acquire_timeout = cfg.acquire_timeout
        self._setup = cfg.setup
        self._leak_timeout = cfg.leak_timeout
        self._update_extras()
        self._auto_reset = cfg.reset == "auto" and not cfg.shares_server_sessions
        self._statement_pooler = cfg.pooler == "pgbouncer-statement"
        self._waiters.adaptive = cfg.overload == "adaptive"
        self._update_admission()

    def _update_admission(self) -> None:
        """Work out the admission limits (after a new hold-time measure, or new settings)."""
        self._admit_queue = (
            admission_limit(self._max_size, self._mean_hold, self._acquire_timeout)
            if self._waiters.adaptive
            else INF
        )
        self._waiters.gate = min(self._admit_queue, self._max_waiting)  # see PoolCore._refusal

    def _update_extras(self) -> None:
        self._extras = (  # one test on the hot path instead of three
            bool(self._hooks) or self._leak_timeout is not None or (self._setup is not None)
        )

    @property
    def name(self) -> str:
        """The pool's name (in logs, errors and metrics)."""
        return self._config.name

    def _emit(
        self,
        kind: EventKind,
        seconds: float | None = None,
        reason: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        emit(self._hooks, PoolEvent(kind, self._config.name, seconds, reason, error))

    def _lends(self) -> int:
        """Connections lent since the pool was created (each slot counts its own)."""
        return self._lends_gone + sum(slot.uses for slot in self._slots)

    # ------------------------------------------------------- a slot's fate (sync)

    def _hand_over(self, slot: _Slot) -> bool:
        """Give a ready slot (IN_USE, not lent) to the oldest live waiter (True), else
        make it idle (False). A slot that expired (max_lifetime, expire(), close())
        while it was away being reset or pinged is retired instead.
        """
        if _now() >= slot.expires_at or slot.generation != self._generation:
            self._retire(slot, "max_lifetime or expire()")
            return False
        if self._over_max:  # (before the waiters: a pool above its limit shrinks even then)
            if self._table.active > self._max_size:
                self._retire(slot, "above the limit")  # resize() or autosize shrank it
                return False
            self._over_max = False
        if self._waiters.give(slot):
            return True
        if self._state != OPEN:
            self._retire(slot, "pool closing")
            return False
        slot.state = IDLE  # IN_USE -> IDLE: no counter changes (see SlotTable)
        self._idle.append(slot)
        return False

    def _expire_all(self) -> None:
        """Make every current connection expired, so that release retires the lent ones
        (one test there covers max_lifetime, expire() and close()). A connection still
        opening gets its expiry when it opens; the connect checks the generation and the
        pool's state itself.
        """
        for slot in self._slots:
            slot.expires_at = EXPIRED

    def _remove(self, slot: _Slot) -> None:
        if not self._table.remove(slot):
            return
        self._lends_gone += slot.uses
        if slot.conn is not None:
            self._counters.connections_closed_total += 1
        if self._empty is not None and not self._slots and not self._empty.done():
            self._empty.set_result(None)

    def _discard(self, slot: _Slot, *, lost: bool, reason: str = "") -> None:
        """Abort a connection now (no I/O wait) and free its slot; refill if needed."""
        if lost:
            self._counters.connections_lost_total += 1
            self._log_lost()
        if self._hooks:
            self._emit(EventKind.DISCARD, reason=reason or ("lost" if lost else "aborted"))
        if slot.conn is not None:
            _pg.terminate(slot.conn)
        self._remove(slot)
        self._grow()

    def _retire(self, slot: _Slot, reason: str = "retired") -> None:
        """Close a connection politely in the background; its slot counts until closed."""
        if self._hooks:
            self._emit(EventKind.DISCARD, reason=reason)
        if slot.state is IDLE and slot in self._idle:
            self._idle.remove(slot)
        self._table.move(slot, CLOSING)
        self._spawn(self._close_slot(slot), "asyncpool-close", closer=True)
        self._grow()

    def _log_lost(self) -> None:
        """One WARNING per burst of lost connections (a restart loses them all at once)."""
        now = _now()
        self._lost_in_burst += 1
        if now - self._lost_logged_at >= 5.0:
            logger.warning(
                "asyncpool pool %r: lost %d connection(s) (closed by the server or broken); "
                "replacing them",
                self.name,
                self._lost_in_burst,
            )
            self._lost_logged_at = now
            self._lost_in_burst = 0

    def _on_closed(self, slot: _Slot, _conn: Any) -> None:
        """Asyncpg's word that a connection closed (termination listener): an idle one
        leaves the pool at once, so sizes and stats never count a dead connection. Busy
        ones are seen to when they come back; the pool's own closes find the slot gone.
        """
        if slot.state is IDLE and slot in self._slots and slot.conn.is_closed():
            self._table.take(slot, IN_USE)
            self._discard(slot, lost=True)

    def _reclaim_later(self, slot: _Slot, lend: int) -> None:
        """Called from a lost wrapper's ``__del__`` (any thread, any time)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._reclaim, slot, lend)
        except RuntimeError:  # loop closed meanwhile
            pass

    def _reclaim(self, slot: _Slot, lend: int) -> None:
        if slot.state is not IN_USE or slot.uses != lend or slot not in self._slots:
            return
        self._counters.leaks_total += 1
        if self._hooks:
            self._emit(EventKind.LEAK, reason="garbage-collected without release")
        logger.warning(
            "asyncpool pool %r: a connection was garbage-collected without being released; "
            "its slot is recovered (use `async with pool.acquire()`).%s",
            self.name,
            f"\nIt was acquired at:\n{slot.stack}" if slot.stack else "",
        )
        self._discard(slot, lost=False, reason="garbage-collected")

    # ------------------------------------------------------------ background tasks

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, closer: bool = False
    ) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        if closer:
            self._closers.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._closers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "asyncpool pool %r: background task failed", self.name, exc_info=task.exception()
            )

    # The layers above provide these: PoolCore the first, PoolWorkers the rest.
    def _refusal(self, live: int, position: int, remaining: float, in_order: bool) -> Any:
        raise NotImplementedError

    def _grow(self) -> None:
        raise NotImplementedError

    def _after_fork(self) -> None:
        raise NotImplementedError

    async def _close_slot(self, slot: _Slot) -> None:
        raise NotImplementedError

    # ------------------------------------------------- why no connection is lent

    def _refuse(self) -> PoolError:
        """The error for a borrower of a pool that is not open."""
        if self._state in (NEW, OPENING):
            return PoolUsageError(
                f"asyncpool pool {self.name!r} is not open; call `await pool.open()` first"
            )
        return PoolClosed(f"asyncpool pool {self.name!r} is closed; no connections are lent")

    def _timed_out(self, started: float, now: float) -> PoolTimeout:
        """A waiter's deadline passed (the waiter queue's callback): count, tell, and
        make the error that explains why.
        """
        self._counters.timeouts_total += 1
        waited = now - started
        if self._hooks:
            self._emit(EventKind.TIMEOUT, waited)
        error = PoolTimeout(self._diagnose_timeout(waited))
        error.__cause__ = self._last_connect_error
        return error

    def _shed(self, started: float, now: float) -> PoolOverloaded:
        """A waiter dropped from a standing queue (the waiter queue's callback)."""
        self._counters.overload_shed_total += 1
        self._warn_overloaded()
        waited = now - started
        if self._hooks:
            self._emit(EventKind.TIMEOUT, waited, reason="overload: shed")
        return PoolOverloaded(
            f"asyncpool pool {self.name!r}: overloaded; this borrower waited {waited:.3f}s "
            f"and its time left no longer covers a usual lease ({self._mean_hold:.3f}s), so "
            "it is told now. Newer borrowers are served first while the pool is past its "
            "capacity: shed load upstream, raise max_size if the server allows, or pass "
            "overload='fifo' to turn this off"
        )

    def _refuse_overloaded(self, position: int, remaining: float) -> PoolOverloaded:
        """A borrower refused at once by admission control (see PoolCore._refusal)."""
        self._counters.overload_refused_total += 1
        self._warn_overloaded()
        if self._hooks:
            self._emit(EventKind.TIMEOUT, 0.0, reason="overload: refused")
        return PoolOverloaded(
            f"asyncpool pool {self.name!r}: overloaded; {position - 1} borrowers wait ahead "
            f"of this one for {self._max_size} connections held {self._mean_hold:.3f}s on "
            f"average, more than its {remaining:.3f}s left, so it is refused now instead of "
            "timing out later: shed load upstream, raise max_size if the server allows, or "
            "pass overload='fifo' to turn this off"
        )

    def _on_standing(self, standing: bool) -> None:
        """The waiter queue started or stopped standing (its callback)."""
        logger.debug("asyncpool pool %r: waiter queue standing: %s", self.name, standing)

    def _warn_overloaded(self) -> None:
        """One WARNING, at most every 10 s, while overload control turns borrowers away."""
        now = _now()
        if now - self._overload_logged_at >= 10.0:
            self._overload_logged_at = now
            logger.warning(
                "asyncpool pool %r: overloaded: borrowers who cannot be served before their "
                "deadline are told at once, the newest served first (%d refused, %d dropped "
                "so far; overload='fifo' turns this off)",
                self.name,
                self._counters.overload_refused_total,
                self._counters.overload_shed_total,
            )

    def _diagnose_timeout(self, waited: float) -> str:
        n = self._table.state_counts()
        cfg = self._config
        now = _now()
        held = [now - s.acquired_at for s in self._slots if s.state is IN_USE]
        error = self._last_connect_error
        return diagnose_timeout(
            waited=waited,
            name=self.name,
            size=len(self._slots),
            max_size=cfg.max_size,
            in_use=n[IN_USE],
            idle=n[IDLE],
            connecting=n[CONNECTING],
            busy=n[IN_USE] + n[RETURNING] + n[CHECKING],
            waiting=self._waiters.live,
            oldest_held=max(held, default=0.0),
            leak_timeout=cfg.leak_timeout,
            down=self._down,
            last_error=None if error is None else repr(error),
        )

    def _unavailable_message(self) -> str:
        """Why no connection can be opened, by the last failure's kind (errors, logs)."""
        exc = self._last_connect_error
        cfg = self._config
        where = server_label(cfg.dsn, cfg.connect_kwargs)
        at = "" if where == "asyncpool" else f" at {where}"  # (no host known: connect=)
        if self._failure is _pg.CONFIG_ERROR and exc is not None:
            return (
                f"the server{at} refused the pool's connection settings "
                f"({type(exc).__name__}: {exc}); {_pg.config_advice(exc)}"
            )
        if self._failure is _pg.SERVER_FULL:
            return (
                f"the server{at} is full: it refuses new connections ({exc!r}); "
                "raise its max_connections, or lower max_size or the number of instances"
            )
        return f"the database{at} is unreachable (the last connect failed: {exc!r})"

    def _unavailable_error(self) -> PoolError:
        """The error a borrower gets while no connection is open and connects fail."""
        exc = self._last_connect_error
        message = f"asyncpool pool {self.name!r}: {self._unavailable_message()}"
        error: PoolError
        if self._failure is _pg.CONFIG_ERROR:
            error = ConnectionConfigError(message, exc)
        else:
            error = DatabaseUnavailable(message + "; retrying in the background", exc)
        error.__cause__ = exc
        return error
