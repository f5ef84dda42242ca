"""The pool: slot bookkeeping, the FIFO waiter queue, and background upkeep.

Design (read this before changing anything here)
-------------------------------------------------
* Every connection is a :class:`_Slot` in exactly one :class:`SlotState`;
  ``self._state_counts()[state]`` counts them, so ``size`` is a sum, never a guess.
  The idle deque holds exactly the IDLE slots, so the hot path moves a slot between
  IDLE and IN_USE without touching the counters: ``_counts[IDLE] + _counts[IN_USE]``
  is always right, and ``_state_counts()`` settles the split from the deque.
* State changes happen in plain synchronous methods (``_hand_over``,
  ``_returned``, ``_enqueue``, ``_discard``, ``_grow`` ...). They contain no ``await``, so on
  one event loop they need no lock and cancellation cannot interrupt them. The
  I/O they decide on (connect, reset, ping, close) runs afterwards, in the
  borrower's task (ping before lend) or in a pool-owned background task.
* Waiters are futures in a FIFO deque. A connection that becomes available goes
  straight to the oldest waiter whose future is still pending (``_hand_over``); a
  waiter that timed out or was cancelled has a done future and is skipped. If a
  waiter is cancelled in the same tick as it was handed a connection, its
  ``except`` clause finds the result and hands the connection on: nothing is lost.
* The hot path (an idle connection, nobody waiting): ``_AcquireContext.__aenter__``
  pops it and ``_returned`` pushes it back (the one synchronous stretch of
  ``__aenter__`` before its first ``await`` counts as such a method). No task, timer,
  lock or server round trip; one clock read each. Both are inlined and allocate only
  the context and the lease wrapper: measure with ``benchmarks`` before adding to
  them. A deadline timer exists only while a borrower waits.
* Borrowers wait only on the pool. Connections are opened by background tasks
  (at most ``connect_concurrency`` at once) and go to the oldest waiter, like a
  returned one. Failed connects back off exponentially with jitter; while no
  connection is open and the last connect failed, the database is *known down*
  and acquire fails fast with :class:`DatabaseUnavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import traceback
import weakref
from _thread import get_ident
from asyncio.events import _get_running_loop
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from heapq import heapify, heappop, heappush
from time import monotonic as _now
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _pg
from ._compat import AsyncpgPoolMethods
from ._config import (
    PoolConfig,
    check_acquire_timeout,
    check_seconds,
    server_label,
    unknown_keywords,
)
from ._connection import PooledConnection, wrapper_classes
from ._errors import (
    ConnectionBudgetExceeded,
    ConnectionConfigError,
    ConnectionReleasedError,
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolTimeout,
    PoolUsageError,
    TooManyWaiters,
)
from ._events import EventHook, EventKind, PoolEvent, emit
from ._policy import connects_to_start
from ._quiet import quiet
from ._slots import N_STATES, SlotState, _Slot
from ._stats import HISTOGRAM_BOUNDS, PoolStats, _Counters

__all__ = ("Pool", "create_pool")

logger = logging.getLogger("asyncpool")

CONNECTING = SlotState.CONNECTING
IDLE = SlotState.IDLE
IN_USE = SlotState.IN_USE
RETURNING = SlotState.RETURNING
CHECKING = SlotState.CHECKING
CLOSING = SlotState.CLOSING

# Retries after a configuration error (wrong password, unknown database ...) back off to
# this many seconds at most (an outage's cap is reconnect_max_delay).
_CONFIG_RETRY_MAX_DELAY = 30.0

# A background connect or round trip running this long while borrowers wait is given up
# and tried afresh (see Pool._probe); four times the usual connect time when that is more.
_STALL_FLOOR = 1.0

# An idle connection lent after this long is first polled for input from the server (a
# session ended by the server must not be lent, see _pg.input_check); sooner it is not:
# a connection given back a moment ago is fine, and the busy hot path stays free of it.
_INPUT_CHECK_AFTER = 0.001

_new_object = object.__new__
_Future = asyncio.Future
_EXPIRED = float("-inf")
_INF = float("inf")
# The hot path files durations of up to a millisecond with literal comparisons (a
# bisect is a C call with generic float comparisons, several times the cost).
_FIRST_BOUNDS = (0.0001, 0.0005, 0.001)
if HISTOGRAM_BOUNDS[:3] != _FIRST_BOUNDS:  # pragma: no cover - a guard for edits
    raise RuntimeError("asyncpool: HISTOGRAM_BOUNDS changed; update the unrolled buckets")
_LEASE_CLOSED = _pg.LEASE_CLOSED
_LEASE_NEEDS_ROLLBACK = _pg.LEASE_NEEDS_ROLLBACK

# A queued borrower: (future, deadline or _INF, start); see Pool._waiters.
_Waiter = tuple["asyncio.Future[_Slot]", float, float]

_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED = "new", "opening", "open", "closing", "closed"

# Bumped in a child process after fork(): a pool opened before the fork refuses to work.
_fork_generation = 0


# Pools opened in this process: after fork() the child makes their cheap "on the
# pool's loop?" test fail, so every use goes to _check_loop, which refuses.
_opened_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for pool in list(_opened_pools):
        pool._tid_loop = None
        pool._owner_tid = None
        _pg.disown([slot.conn for slot in pool._slots if slot.conn is not None])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_T = TypeVar("_T")

_names_used: dict[str, int] = {}


def _unique_name(label: str) -> str:
    """A pool name not given to another pool of this process: ``label``, then
    ``label#2``, ``label#3`` ... (metrics and tracing tell pools apart by name).
    """
    count = _names_used.get(label, 0) + 1
    _names_used[label] = count
    return label if count == 1 else f"{label}#{count}"


def _refuse_unknown_keywords(
    connect: Callable[..., Awaitable[Any]] | None, connect_kwargs: dict[str, Any]
) -> None:
    """Raise TypeError, at construction, for a keyword that is neither a pool setting
    nor a parameter of the connect function (asyncpg.connect unless ``connect=``).
    A typo would otherwise fail every connect and look like a database outage.
    """
    accepted = _pg.accepted_keywords(connect)
    if accepted is None:
        return  # the connect function takes any keyword
    message = unknown_keywords(connect_kwargs, sorted(accepted | _SETTINGS))
    if message is not None:
        target = "asyncpg.connect()" if connect is None else "the connect= function"
        raise TypeError(
            f"asyncpool.Pool() got an {message} (it is neither a pool setting nor a "
            f"parameter of {target})"
        )


class Pool(AsyncpgPoolMethods):
    """A pool of asyncpg connections for one event loop.

    Create it with :func:`create_pool` (opens it), or construct it and call
    :meth:`open` later (e.g. in a web framework's lifespan hook). Borrow with
    ``async with pool.acquire() as conn:``. See :func:`create_pool` for every
    setting and its default.
    """

    __module__ = "asyncpool"

    # Slots, not a __dict__: with over 30 attributes an instance dict stops sharing its
    # keys, and CPython then reads every `self._x` with a dict lookup instead of at a
    # fixed offset (the hot path reads a dozen of them per borrow).
    __slots__ = (
        "__weakref__",
        "_acquire_timeout",
        "_active",
        "_auto_reset",
        "_backoff",
        "_clock",
        "_close_task",
        "_config",
        "_counters",
        "_counts",
        "_deadline_at",
        "_deadline_seq",
        "_deadline_timer",
        "_deadlines",
        "_done",
        "_down",
        "_empty",
        "_extras",
        "_fork_gen",
        "_generation",
        "_hooks",
        "_idle",
        "_init_size",
        "_last_connect_error",
        "_leak_timeout",
        "_lends_gone",
        "_limit_uses",
        "_loop",
        "_lost_in_burst",
        "_lost_logged_at",
        "_failure",
        "_config_error_logged",
        "_connect_estimate",
        "_failed_at",
        "_idle_timer",
        "_maintenance",
        "_max_queries",
        "_max_size",
        "_max_uses",
        "_max_waiting",
        "_n_waiting",
        "_next_connect_at",
        "_over_max",
        "_owner_tid",
        "_ping_after",
        "_requested_loop",
        "_retry_handle",
        "_setup",
        "_slots",
        "_state",
        "_statement_pooler",
        "_tasks",
        "_tid_loop",
        "_waiters",
    )

    def __init__(
        self,
        dsn: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        acquire_timeout: float = 30.0,
        max_waiting: int | None = None,
        reset: Any = "auto",
        reset_timeout: float = 5.0,
        max_lifetime: float | None = 3600.0,
        lifetime_jitter: float = 0.1,
        max_idle: float | None = 600.0,
        max_uses: int | None = None,
        max_queries: int | None = None,
        ping_after_idle: float | None = 10.0,
        ping_timeout: float = 5.0,
        keepalive_interval: float | None = 60.0,
        connect_timeout: float = 10.0,
        connect_concurrency: int = 2,
        reconnect_initial_delay: float = 0.05,
        reconnect_max_delay: float = 1.0,
        leak_timeout: float | None = None,
        close_timeout: float = 10.0,
        maintenance_interval: float = 1.0,
        tcp_keepalive: bool = True,
        init: Callable[[Any], Awaitable[None]] | None = None,
        setup: Callable[[Any], Awaitable[None]] | None = None,
        connect: Callable[..., Awaitable[Any]] | None = None,
        connect_args: Callable[[], Any] | None = None,
        name: str | None = None,
        pooler: Any = None,
        max_inactive_connection_lifetime: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        init_size: int | None = None,
        instances: int = 1,
        budget_check: str = "warn",
        **connect_kwargs: Any,
    ) -> None:
        if connect_kwargs:
            _refuse_unknown_keywords(connect, connect_kwargs)
        if name is None:
            name = _unique_name(server_label(dsn, connect_kwargs))
        if max_inactive_connection_lifetime is not None:
            # asyncpg's name for max_idle; 0 turns it off there, so it does here.
            max_idle = max_inactive_connection_lifetime or None
        if pooler in ("pgbouncer-transaction", "pgbouncer-statement"):
            # Server sessions are shared: named prepared statements cannot be cached.
            connect_kwargs.setdefault("statement_cache_size", 0)
        self._requested_loop = loop
        # asyncpg 0.32's init_size: connections opened by open() (min_size..max_size).
        self._init_size = min_size if init_size is None else init_size
        self._config = PoolConfig(
            dsn=dsn,
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=acquire_timeout,
            max_waiting=max_waiting,
            reset=reset,
            reset_timeout=reset_timeout,
            max_lifetime=max_lifetime,
            lifetime_jitter=lifetime_jitter,
            max_idle=max_idle,
            max_uses=max_uses,
            max_queries=max_queries,
            ping_after_idle=ping_after_idle,
            ping_timeout=ping_timeout,
            keepalive_interval=keepalive_interval,
            connect_timeout=connect_timeout,
            connect_concurrency=connect_concurrency,
            reconnect_initial_delay=reconnect_initial_delay,
            reconnect_max_delay=reconnect_max_delay,
            leak_timeout=leak_timeout,
            close_timeout=close_timeout,
            maintenance_interval=maintenance_interval,
            tcp_keepalive=tcp_keepalive,
            init=init,
            setup=setup,
            connect=connect,
            connect_args=connect_args,
            connect_kwargs=connect_kwargs,
            name=name,
            pooler=pooler,
            instances=instances,
            budget_check=budget_check,  # type: ignore[arg-type]
        )
        if not (isinstance(self._init_size, int) and min_size <= self._init_size <= max_size):
            raise ValueError(
                f"init_size must be an integer between min_size ({min_size}) and max_size "
                f"({max_size}), got {init_size!r}"
            )
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tid_loop: Any = None
        self._owner_tid: int | None = None
        self._clock: Callable[[], float] = _now  # the loop's clock, set by open()
        self._done: asyncio.Future[None]  # a done future, made by open() (see __aexit__)
        self._fork_gen = _fork_generation
        self._slots: set[_Slot] = set()
        self._counts = [0] * N_STATES
        self._active = 0  # slots not CLOSING: len(self._slots) - self._counts[CLOSING]
        self._idle: deque[_Slot] = deque()
        # Waiters, oldest first: (future, deadline, start) in the loop's clock.
        # The deadline is kept here for borrowers with the pool's acquire_timeout, whose
        # deadlines therefore never decrease along the deque; others have _INF here and
        # their deadline in the heap self._deadlines.
        self._waiters: deque[_Waiter] = deque()
        self._n_waiting = 0
        self._counters = _Counters()
        self._lends_gone = 0  # lends of slots no longer in the pool (see _lends)
        self._over_max = False  # above max_size after resize(): returns check the bound
        self._generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._next_connect_at = 0.0
        self._last_connect_error: BaseException | None = None
        self._failure = _pg.OUTAGE  # the kind of the last connect failure (_pg.classify...)
        self._config_error_logged: tuple[type, str] | None = None
        self._connect_estimate: float | None = None  # seconds a connect takes (an EWMA)
        self._failed_at = _EXPIRED  # (loop time) when the database was last found down
        self._idle_timer: asyncio.TimerHandle | None = None  # see _schedule_idle_expiry
        self._down = False
        self._empty: asyncio.Future[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._hooks: list[EventHook] = []
        self._leak_timeout: float | None = None
        self._setup: Callable[[Any], Awaitable[None]] | None = None
        # Deadlines of waiters with a timeout of their own: (deadline, seq, future, start).
        self._deadlines: list[tuple[float, int, asyncio.Future[_Slot], float]] = []
        self._deadline_seq = 0
        self._deadline_at = _INF
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._lost_logged_at = float("-inf")
        self._lost_in_burst = 0
        self._apply_config()

    def _apply_config(self) -> None:
        """Cache the settings the hot path reads (plain attributes, no lookups)."""
        cfg = self._config
        self._ping_after = _INF if cfg.ping_after_idle is None else cfg.ping_after_idle
        self._max_uses = cfg.max_uses
        self._max_queries = cfg.max_queries
        self._limit_uses = cfg.max_uses is not None or cfg.max_queries is not None
        self._max_size = cfg.max_size
        self._max_waiting = cfg.max_waiting
        self._acquire_timeout = cfg.acquire_timeout
        self._setup = cfg.setup
        self._leak_timeout = cfg.leak_timeout
        self._update_extras()
        self._auto_reset = cfg.reset == "auto" and not cfg.shares_server_sessions
        self._statement_pooler = cfg.pooler == "pgbouncer-statement"

    # ------------------------------------------------------------------ facts

    @property
    def name(self) -> str:
        """The pool's name (in logs, errors and metrics)."""
        return self._config.name

    @property
    def config(self) -> PoolConfig:
        """The pool's validated settings."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`terminate` has begun."""
        return self._state in (_CLOSING, _CLOSED)

    @property
    def size(self) -> int:
        """Connections the pool owns or is opening, in every state."""
        return len(self._slots)

    def stats(self) -> PoolStats:
        """A frozen snapshot of sizes, counters and time summaries."""
        c = self._counters
        n = self._state_counts()
        acquired = self._lends() - c.lends_before
        cfg = self._config
        return PoolStats(
            name=cfg.name,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            size=len(self._slots),
            idle=n[IDLE],
            in_use=n[IN_USE],
            connecting=n[CONNECTING],
            returning=n[RETURNING],
            checking=n[CHECKING],
            closing=n[CLOSING],
            waiting=self._n_waiting,
            acquired_total=acquired,
            released_total=c.use_time.count,
            timeouts_total=c.timeouts_total,
            cancelled_total=c.cancelled_total,
            too_many_waiters_total=c.too_many_waiters_total,
            unavailable_total=c.unavailable_total,
            connections_opened_total=c.connections_opened_total,
            connections_closed_total=c.connections_closed_total,
            connections_lost_total=c.connections_lost_total,
            connect_errors_total=c.connect_errors_total,
            resets_total=c.resets_total,
            resets_skipped_total=c.use_time.count - c.returns_not_skipped,
            pings_total=c.pings_total,
            pings_failed_total=c.pings_failed_total,
            leaks_total=c.leaks_total,
            wait_time=c.wait_time.snapshot(acquired - c.wait_time.count),
            use_time=c.use_time.snapshot(),
            connect_time=c.connect_time.snapshot(),
        )

    def pop_stats(self) -> PoolStats:
        """Return :meth:`stats` and reset the counters (for periodic reporting)."""
        snapshot = self.stats()
        self._counters = _Counters()
        self._counters.lends_before = self._lends()
        return snapshot

    def _lends(self) -> int:
        """Connections lent since the pool was created (each slot counts its own)."""
        return self._lends_gone + sum(slot.uses for slot in self._slots)

    def add_event_hook(self, hook: EventHook) -> None:
        """Call ``hook(event)`` on every :class:`PoolEvent` (connect, acquire, release,
        discard, timeout, leak ...). A hook that raises is logged and ignored.
        """
        self._hooks.append(hook)
        self._update_extras()

    def remove_event_hook(self, hook: EventHook) -> None:
        """Stop calling a hook added with :meth:`add_event_hook`."""
        self._hooks.remove(hook)
        self._update_extras()

    def _update_extras(self) -> None:
        # One test on the hot path instead of three.
        self._extras = (
            bool(self._hooks) or self._leak_timeout is not None or (self._setup is not None)
        )

    def _emit(
        self,
        kind: EventKind,
        seconds: float | None = None,
        reason: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        emit(self._hooks, PoolEvent(kind, self._config.name, seconds, reason, error))

    def __repr__(self) -> str:
        n = self._state_counts()
        return (
            f"<Pool {self.name!r} {self._state} [size={len(self._slots)}/{self._config.max_size}: "
            f"idle={n[IDLE]} in_use={n[IN_USE]} connecting={n[CONNECTING]} "
            f"returning={n[RETURNING]} checking={n[CHECKING]} closing={n[CLOSING]} | "
            f"waiting={self._n_waiting}]>"
        )

    # ---------------------------------------------------------- open / close

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._open_and_return().__await__()

    async def _open_and_return(self) -> Pool:
        await self.open()
        return self

    async def __aenter__(self) -> Pool:
        if self._state == _NEW:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the pool on the running event loop and its first ``min_size`` connections.

        Raises the connect error when ``min_size > 0`` and not one connection could
        be opened (the pool is then closed). If only some fail, the rest are opened
        in the background.
        """
        if self._state != _NEW:
            raise PoolUsageError(f"asyncpool pool {self.name!r} was already opened ({self._state})")
        self._loop = asyncio.get_running_loop()
        # asyncio's loops record the thread running them: comparing it with ours is the
        # cheapest "are we on the pool's loop?" (only one loop runs per thread). Other
        # loops (uvloop) are compared with the running loop instead.
        self._tid_loop = self._loop if hasattr(self._loop, "_thread_id") else None
        # The loop's clock (deadlines are loop times, so a test loop's virtual clock
        # rules them); asyncio's is time.monotonic itself.
        self._clock = (
            _now if type(self._loop).time is asyncio.BaseEventLoop.time else self._loop.time
        )
        self._owner_tid = get_ident()
        _opened_pools.add(self)
        self._done = self._loop.create_future()
        self._done.set_result(None)
        if self._requested_loop is not None and self._requested_loop is not self._loop:
            raise PoolUsageError(
                f"asyncpool pool {self.name!r} was given loop={self._requested_loop!r}, which is "
                "not the running event loop; drop the loop argument (asyncpool always uses the "
                "loop it is opened on)"
            )
        self._fork_gen = _fork_generation
        self._state = _OPENING
        # open() as a whole is bounded by connect_timeout (the connects run in parallel,
        # each bounded by it too; the server check gets what is left).
        deadline = self._loop.time() + self._config.connect_timeout
        slots = [self._new_slot() for _ in range(self._init_size)]
        tasks = [self._spawn(self._connect(slot)) for slot in slots]
        try:
            if tasks:
                await asyncio.wait(tasks)
        except BaseException:
            self.terminate()
            raise
        if slots and not self._idle:
            error = self._last_connect_error or PoolClosed(
                f"asyncpool pool {self.name!r} was closed while opening"
            )
            if self._last_connect_error is not None:
                error.add_note(f"asyncpool pool {self.name!r}: {self._unavailable_message()}")
            self.terminate()
            raise error
        try:
            await self._check_server(deadline)
        except BaseException:
            self.terminate()
            raise
        self._state = _OPEN
        self._maintenance = self._loop.create_task(
            _maintain(weakref.ref(self), self._config.maintenance_interval),
            name=f"asyncpool-maintenance-{self.name}",
        )
        logger.info(
            "asyncpool pool %r opened: %d connection(s), min_size=%d max_size=%d",
            self.name,
            len(self._idle),
            self._config.min_size,
            self._config.max_size,
        )
        self._grow()
        self._schedule_idle_expiry()

    async def _check_server(self, deadline: float) -> None:
        """At open: the connection budget, and whether a pooler sits in between (one
        round trip on a pool connection), done by ``deadline`` (open()'s own bound). With
        no connection open (``min_size=0``) it runs in the background on a temporary
        connection, unless ``budget_check="refuse"`` (open() must then know).
        """
        cfg = self._config
        if cfg.budget_check == "off":
            return
        if not self._idle:
            if cfg.budget_check != "refuse":
                self._spawn(self._check_server_on_own_connection(), "asyncpool-budget-check")
                return
            await self._check_server_on_own_connection(deadline)
            return
        slot = self._idle[-1]
        try:
            async with asyncio.timeout_at(deadline):
                await self._check_server_on(slot.conn)
        except TimeoutError:
            # No answer in time (e.g. a saturated PgBouncer queues the query): the
            # connection is mid-query, so it goes; open() does not wait any longer.
            logger.warning(
                "asyncpool pool %r: the server did not answer the budget check within "
                "connect_timeout=%ss; the connection is replaced", self.name, cfg.connect_timeout,
            )  # fmt: skip
            self._discard(slot, lost=False, reason="budget check timed out")

    async def _check_server_on_own_connection(self, deadline: float | None = None) -> None:
        """The server check on a temporary connection, bounded by ``deadline`` (or by
        ``connect_timeout`` in the background).
        """
        cfg = self._config
        loop = self._loop
        assert loop is not None
        if deadline is None:
            deadline = loop.time() + cfg.connect_timeout
        conn: Any = None
        try:
            async with asyncio.timeout_at(deadline):
                conn = await _pg.open_connection(cfg)
                await self._check_server_on(conn)
        except ConnectionBudgetExceeded:
            raise
        except Exception:
            if cfg.budget_check == "refuse":
                raise
            logger.debug(
                "asyncpool pool %r: budget check skipped (no answer)", self.name, exc_info=True
            )
        finally:
            if conn is not None:
                _pg.terminate(conn)

    async def _check_server_on(self, conn: Any) -> None:
        cfg = self._config
        from ._budget import check_budget

        try:
            await check_budget(
                conn,
                max_size=cfg.max_size,
                instances=cfg.instances,
                policy=cfg.budget_check,
                pool_name=cfg.name,
                pooler=cfg.pooler,
            )
            if cfg.pooler is None:
                with quiet():  # the pool's own query: no tracing span
                    backend_pid = await conn.fetchval("SELECT pg_backend_pid()")
            if cfg.pooler is None and conn.get_server_pid() != backend_pid:
                logger.warning(
                    "asyncpool pool %r: a connection pooler or proxy sits between this pool "
                    "and PostgreSQL (the backend pid differs from the one announced); if it "
                    "is PgBouncer in transaction or statement mode, set pooler=",
                    self.name,
                )
        except (ConnectionBudgetExceeded, TimeoutError):
            raise
        except Exception:  # advisory: a server or connection that cannot answer is no reason
            logger.debug("asyncpool pool %r: budget check failed", self.name, exc_info=True)

    async def close(self, timeout: float | None = None) -> None:
        """Close gracefully: stop lending, fail waiters with :class:`PoolClosed`, wait up to
        ``timeout`` seconds (default ``close_timeout``) for borrowed connections to come
        back, then terminate whatever is left. Never hangs; safe to call twice.
        """
        if self._state == _NEW:
            self._state = _CLOSED
            return
        if self._close_task is None:
            if self._state == _CLOSED:
                return
            self._check_loop()  # refused from another loop, before anything changes
            budget = (
                self._config.close_timeout
                if timeout is None
                else check_acquire_timeout(timeout)  # (the same rule: >= 0, inf waits)
            )
            self._close_task = asyncio.get_running_loop().create_task(self._close(budget))
        try:
            await asyncio.shield(self._close_task)
        except asyncio.CancelledError:
            self.terminate()
            raise

    async def _close(self, timeout: float) -> None:
        loop = self._check_loop()
        self._state = _CLOSING
        self._fail_waiters(
            PoolClosed(f"asyncpool pool {self.name!r} is closing; no more connections are lent")
        )
        self._cancel_background(keep_closers=True)
        self._expire_all()
        for slot in list(self._idle):
            self._retire(slot, "pool closing")
        self._idle.clear()
        if self._slots:
            self._empty = loop.create_future()
            await asyncio.wait([self._empty], timeout=timeout)
        if self._slots:
            logger.warning(
                "asyncpool pool %r: %d connection(s) still busy after close timeout %.1fs; "
                "terminating them",
                self.name,
                len(self._slots),
                timeout,
            )
        pending = list(self._tasks)
        self.terminate()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        logger.info("asyncpool pool %r closed", self.name)

    def terminate(self) -> None:
        """Stop at once: fail waiters, cancel background work, abort every connection.

        In a child process after ``fork()`` it only forgets the inherited connections
        (their sockets belong to the parent). It may be called once the pool's loop has
        stopped or closed, but not from another thread while that loop runs.
        """
        if self._fork_gen != _fork_generation:
            # A forked child: aborting the inherited transports would break the parent's
            # connections (shared sockets and epoll registrations). Just let go.
            self._state = _CLOSED
            self._lends_gone = self._lends()
            self._slots.clear()
            self._idle.clear()
            self._waiters.clear()
            self._tasks.clear()
            self._counts = [0] * N_STATES
            self._active = 0
            self._n_waiting = 0
            return
        if self._state is not _CLOSED:
            self._check_owner()
        self._state = _CLOSED
        self._fail_waiters(PoolClosed(f"asyncpool pool {self.name!r} was terminated"))
        self._cancel_background(keep_closers=False)
        for slot in list(self._slots):
            if slot.conn is not None:
                _pg.terminate(slot.conn)
            self._remove(slot)
        self._idle.clear()

    def _cancel_background(self, *, keep_closers: bool) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
            self._deadline_at = _INF
        self._deadlines.clear()
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        loop_open = self._loop is not None and not self._loop.is_closed()
        if self._maintenance is not None:
            if loop_open:  # a closed loop cannot run a cancellation
                self._maintenance.cancel()
            self._maintenance = None
        for task in list(self._tasks):
            if keep_closers and task.get_name().startswith("asyncpool-close"):
                continue
            if loop_open:
                task.cancel()
            else:
                self._tasks.discard(task)

    def _fail_waiters(self, error: BaseException) -> None:
        while self._waiters:
            fut = self._waiters.popleft()[0]
            if not fut.done():
                self._n_waiting -= 1
                fut.set_exception(error)
                # Mark it retrieved: a waiter cancelled in this same tick never reads it.
                fut.exception()

    # ------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | None = None) -> _AcquireContext:
        """Borrow a connection: ``async with pool.acquire() as conn:`` or ``await``.

        ``timeout`` (seconds, >= 0) is this borrow's deadline, covering waiting,
        connecting and checking; it defaults to the pool's ``acquire_timeout``, and
        ``float("inf")`` means no deadline. A bad ``timeout`` (NaN, negative, a bool or
        not a number) raises :class:`ValueError` or :class:`TypeError` here, whether or
        not a connection is idle. Raises :class:`PoolTimeout`, :class:`PoolClosed`,
        :class:`TooManyWaiters` or :class:`DatabaseUnavailable`.
        """
        if timeout is not None:
            timeout = check_acquire_timeout(timeout)
        context: _AcquireContext = _new_object(_AcquireContext)  # no __init__ call: cheaper
        context._pool = self
        context._timeout = timeout
        context._conn = None
        context._guarded = False
        return context

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        """Refuse (with the explanation) unless called on the pool's open loop, in the
        process that opened it; return the loop.

        The hot paths (``_AcquireContext.__aenter__``, ``_returned``) call this only when
        a cheaper test fails: asyncio's loops record the thread running them, so
        ``loop._thread_id != get_ident()``; other loops (uvloop) are compared by the
        opening thread and ``is_running()``, since only one loop runs per thread. After
        fork() that test always fails (``_after_fork_in_child``).
        """
        loop = self._loop
        if self._fork_gen != _fork_generation:
            raise PoolUsageError(
                f"asyncpool pool {self.name!r} was opened in another process before fork(); "
                "create a new pool in each child process"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop or loop is None:
            if loop is None:
                raise PoolUsageError(
                    f"asyncpool pool {self.name!r} is not open; call `await pool.open()` first"
                )
            raise PoolUsageError(
                f"asyncpool pool {self.name!r} belongs to the event loop it was opened on and "
                "cannot be used from another loop or thread; create one pool per loop"
            )
        if self._tid_loop is None:
            self._owner_tid = get_ident()  # uvloop run from another thread this time
        return loop

    def _check_owner(self) -> None:
        """Refuse a synchronous operation on an open pool from another thread while the
        pool's loop runs there, from inside another loop, or after ``fork()``.
        """
        loop = self._loop
        if loop is None or self._state not in (_OPENING, _OPEN):
            return
        running = _get_running_loop()
        if running is not loop and (
            running is not None or loop.is_running() or self._fork_gen != _fork_generation
        ):
            self._check_loop()  # raises with the explanation

    def _refuse(self) -> PoolClosed | PoolUsageError:
        if self._state in (_NEW, _OPENING):
            return PoolUsageError(
                f"asyncpool pool {self.name!r} is not open; call `await pool.open()` first"
            )
        return PoolClosed(f"asyncpool pool {self.name!r} is closed; no connections are lent")

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
        cfg = self._config
        while self._idle:
            slot = self._idle.pop()
            if slot.conn.is_closed():
                self._set(slot, IN_USE)
                self._discard(slot, lost=True)
            elif now >= slot.expires_at:
                self._set(slot, IN_USE)
                self._retire(slot, "max_lifetime")
            elif (
                cfg.ping_after_idle is not None and now - slot.last_used >= cfg.ping_after_idle
            ) or slot.has_input():
                # Idle long enough to doubt it, or the server sent something while it was
                # idle (most often the end of the session): check it before lending it.
                self._set(slot, CHECKING)
                return slot
            else:
                self._set(slot, IN_USE)
                return slot
        return None

    def _wait_deadline(self, timeout: float | None) -> tuple[float, float]:
        """(start, deadline) of a wait, in the loop's clock."""
        if timeout is None:
            timeout = self._acquire_timeout  # (acquire() validated any other timeout)
        started = self._clock()
        return started, started + timeout

    def _enqueue(
        self, timeout: float | None, started: float | None = None, deadline: float = _INF
    ) -> tuple[asyncio.Future[_Slot], float]:
        """Queue a waiter (sync): the future a connection will be handed over on, and
        the wait's start. The deadline comes from ``timeout`` unless ``started`` is given.
        ``_AcquireContext.__aenter__`` inlines the usual case (the pool's acquire_timeout,
        a full pool, nothing to refuse): keep the two in step.
        """
        if started is None:
            started, deadline = self._wait_deadline(timeout)
            # The pool's acquire_timeout is kept in the deque; other deadlines in the heap.
            ordered = deadline if timeout is None else _INF
        else:
            ordered = _INF  # (a wait that began earlier: its deadline may come first)
        if self._down or self._max_waiting is not None:
            self._may_wait()
        # asyncio.Future itself (not loop.create_future(), a Python call on asyncio's
        # loops): every loop asyncpool supports makes plain asyncio futures.
        fut: asyncio.Future[_Slot] = _Future(loop=self._loop)
        self._waiters.append((fut, ordered, started))
        self._n_waiting += 1
        if self._active < self._max_size:
            self._grow()  # (it returns at once when the pool is full)
        if deadline != ordered:
            self._push_deadline(fut, deadline, started)
        elif deadline < self._deadline_at:
            self._arm_deadlines(deadline)
        return fut, started

    def _push_deadline(self, fut: asyncio.Future[_Slot], deadline: float, started: float) -> None:
        """Track the deadline of a waiter that is not in the deque's deadline order."""
        heap = self._deadlines
        while heap and heap[0][2].done():
            heappop(heap)
        if len(heap) > 2 * self._n_waiting + 256:
            # Entries of waiters served or gone while others waited pile up: compact.
            self._deadlines = heap = [e for e in heap if not e[2].done()]
            heapify(heap)
        self._deadline_seq += 1
        heappush(heap, (deadline, self._deadline_seq, fut, started))
        if deadline < self._deadline_at:
            self._arm_deadlines(deadline)

    def _arm_deadlines(self, deadline: float) -> None:
        """(Re-)arm the one deadline timer for ``deadline``; it serves every waiter."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = deadline
        self._deadline_timer = self._loop.call_at(  # type: ignore[union-attr]
            deadline, self._on_deadlines
        )

    def _handed_late(self, slot: _Slot) -> None:
        """A waiter was handed ``slot`` just before close/terminate: retire it, refuse."""
        if slot in self._slots and slot.state is IN_USE:
            self._retire(slot, "pool closing")
        raise self._refuse()

    async def _wait(self, timeout: float | None) -> tuple[_Slot, float]:
        """The slow path of acquire when idle connections may need a check (ping or
        retirement) first; else queue as a waiter until a connection is handed over or
        the deadline passes. Returns the slot (IN_USE, for the caller to lend at once)
        and the wait's start. Only ``_AcquireContext.__aenter__`` calls it, after
        checking state and loop (which also queues directly when nothing is idle).
        """
        started, deadline = self._wait_deadline(timeout)
        while True:
            if self._state is not _OPEN:
                raise self._refuse()
            slot = None if self._n_waiting else self._take_idle(_now())
            if slot is None:
                fut, _ = self._enqueue(None, started, deadline)
                try:
                    slot = await fut
                except BaseException as exc:
                    self._abandon(fut, exc)
                    raise
                if self._state is not _OPEN:
                    self._handed_late(slot)
            elif slot.state is CHECKING and not await self._check(slot, started, deadline):
                continue
            return slot, started

    def _may_wait(self) -> None:
        """Refuse to queue when the database is known down or the queue is full.

        "Known down": nothing is open, and a connect was refused less than
        ``reconnect_initial_delay`` ago, or the settings were refused (that does not
        change by itself). Past that moment, or while an attempt is under way, the
        borrower waits for a fresh attempt's outcome (within its deadline), and one starts
        now if none is: a server that restarted quickly serves at once, while a server
        that is down is tried at most once per ``reconnect_initial_delay``, cheaply.
        """
        if self._down and not self._open_count():
            loop = self._loop
            assert loop is not None
            if self._failure is _pg.CONFIG_ERROR or (
                self._counts[CONNECTING] == 0
                and loop.time() - self._failed_at < self._config.reconnect_initial_delay
            ):
                self._counters.unavailable_total += 1
                raise self._unavailable_error()
            self._next_connect_at = 0.0  # (the caller's _grow() starts one at once)
        max_waiting = self._config.max_waiting
        if max_waiting is not None and self._n_waiting >= max_waiting:
            self._counters.too_many_waiters_total += 1
            raise TooManyWaiters(
                f"asyncpool pool {self.name!r}: {self._n_waiting} borrowers already wait "
                f"(max_waiting={max_waiting}) and all {len(self._slots)} connections are "
                "busy; raise max_waiting or max_size, or shed load"
            )

    def _on_deadlines(self) -> None:
        """The deadline timer: fail every waiter whose deadline has passed, re-arm."""
        self._deadline_timer = None
        self._deadline_at = _INF
        now = self._loop.time()  # type: ignore[union-attr]
        expired: list[tuple[asyncio.Future[_Slot], float]] = []
        earliest = _INF
        # Deadlines in the deque do not decrease: stop at the first one still ahead.
        for fut, deadline, started in self._waiters:
            if deadline <= now:
                expired.append((fut, started))
            elif deadline != _INF:
                earliest = deadline
                break
        heap = self._deadlines
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            _, _, fut, started = heappop(heap)
            expired.append((fut, started))
        for fut, started in expired:  # (event hooks run here: the deque is not iterated)
            self._on_deadline(fut, started, now)
        waiters = self._waiters
        while waiters and waiters[0][0].done():
            waiters.popleft()
        if heap and heap[0][0] < earliest:
            earliest = heap[0][0]
        if earliest != _INF:
            self._arm_deadlines(earliest)

    def _abandon(self, fut: asyncio.Future[_Slot], exc: BaseException) -> None:
        """A waiter stopped waiting (cancelled, timed out, pool closed). No await here."""
        if isinstance(exc, asyncio.CancelledError):
            self._counters.cancelled_total += 1
        if fut.cancelled() or not fut.done():
            # Task.cancel() cancels the future the task awaits: still counted as waiting.
            fut.cancel()
            self._n_waiting -= 1
        elif fut.exception() is None:
            # Handed a connection in the same tick as it was cancelled: pass it on.
            self._hand_over(fut.result())
        # A connection may have gone idle while this dead waiter still counted as
        # waiting (and so held newcomers back): serve the live waiters from idle now.
        while self._idle and self._n_waiting:
            slot = self._idle.pop()
            self._set(slot, IN_USE)
            if not self._hand_over(slot) and slot.state is IDLE:
                break  # no live waiter after all (an expired slot was retired: go on)
        if len(self._waiters) > 2 * self._n_waiting + 64:
            self._waiters = deque(w for w in self._waiters if not w[0].done())

    def _on_deadline(self, fut: asyncio.Future[_Slot], started: float, now: float) -> None:
        if fut.done():
            return
        self._n_waiting -= 1
        self._counters.timeouts_total += 1
        waited = now - started
        if self._hooks:
            self._emit(EventKind.TIMEOUT, waited)
        error = PoolTimeout(self._diagnose_timeout(waited))
        error.__cause__ = self._last_connect_error
        fut.set_exception(error)

    def _diagnose_timeout(self, waited: float) -> str:
        n = self._state_counts()
        cfg = self._config
        now = _now()
        held = [now - s.acquired_at for s in self._slots if s.state is IN_USE]
        oldest = max(held, default=0.0)
        busy = n[IN_USE] + n[RETURNING] + n[CHECKING]
        if self._last_connect_error is not None and self._down:
            cause = f"the database looks down (last connect error: {self._last_connect_error!r})"
        elif cfg.leak_timeout is not None and oldest > cfg.leak_timeout:
            cause = (
                f"a borrower has held a connection for {oldest:.1f}s, longer than "
                f"leak_timeout={cfg.leak_timeout}s: likely a leak (see the leak warning)"
            )
        elif busy >= cfg.max_size:
            cause = (
                f"the pool is at max_size={cfg.max_size} and every connection is busy: "
                "raise max_size (if the server allows), shorten transactions, or raise "
                "acquire_timeout"
            )
        elif self._last_connect_error is not None:
            cause = f"new connections fail: {self._last_connect_error!r}"
        else:
            cause = "connections are being opened too slowly (see connect_timeout)"
        return (
            f"asyncpool pool {self.name!r}: no connection after waiting {waited:.3f}s "
            f"(size={len(self._slots)}/{cfg.max_size}, in_use={n[IN_USE]}, idle={n[IDLE]}, "
            f"connecting={n[CONNECTING]}, waiting={self._n_waiting}, oldest borrower has held "
            f"its connection {oldest:.3f}s). Likely cause: {cause}"
        )

    async def _check(self, slot: _Slot, started: float, deadline: float) -> bool:
        """Ping a stale idle connection for a borrower (slot is CHECKING). True if usable."""
        now = self._clock()
        budget = min(self._config.ping_timeout, deadline - now)
        if budget <= 0:
            self._set(slot, IN_USE)
            self._hand_over(slot)
            self._counters.timeouts_total += 1
            if self._hooks:
                self._emit(EventKind.TIMEOUT, now - started)
            raise PoolTimeout(self._diagnose_timeout(now - started))
        self._counters.pings_total += 1
        try:
            async with asyncio.timeout(budget):
                await _pg.ping(slot.conn)
        except asyncio.CancelledError:
            # Interrupted mid-ping: the connection's protocol state is unknown.
            self._set(slot, IN_USE)
            self._discard(slot, lost=False)
            raise
        except Exception as exc:
            self._counters.pings_failed_total += 1
            logger.info(
                "asyncpool pool %r: discarding a connection that failed its health check: %r",
                self.name,
                exc,
            )
            self._set(slot, IN_USE)
            self._discard(slot, lost=True)
            return False
        self._set(slot, IN_USE)
        now = slot.last_used = _now()
        if now >= slot.expires_at or slot.generation != self._generation:
            self._retire(slot, "max_lifetime or expire()")  # expired during the ping
            return False
        return True

    async def _run_setup(self, conn: PooledConnection) -> None:
        assert self._config.setup is not None
        try:
            await self._config.setup(conn)
        except BaseException:
            if conn._slot is not None:
                self._release_nowait(conn)
            raise

    # ------------------------------------------------------------ release

    async def release(self, connection: PooledConnection, *, timeout: float | None = None) -> None:
        """Give a connection back. It is usable by others as soon as its reset (if one is
        needed) ends; the reset runs in the background, bounded by ``timeout`` (default
        ``reset_timeout``), so release cannot be cancelled into a leak.
        """
        if timeout is not None:
            timeout = check_seconds("timeout", timeout, none_ok=False, inf_ok=False)
        self._release_nowait(connection, timeout)

    def release_nowait(self, connection: PooledConnection) -> None:
        """Give a connection back without awaiting (for synchronous callers, e.g. an
        adapter's ``close()``); the same as :meth:`release`.
        """
        self._release_nowait(connection)

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
        tid_loop = self._tid_loop  # the cheap test of _check_loop's docstring
        if (
            tid_loop._thread_id != get_ident()
            if tid_loop is not None
            else self._owner_tid != get_ident() or not self._loop.is_running()  # type: ignore[union-attr]
        ) and self._state is not _CLOSED:
            self._check_loop()
        self._returned(conn, slot, timeout)

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
        c = self._counters
        use_time = c.use_time  # _Recorder.add, inlined
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
        if ended == _LEASE_CLOSED:
            c.returns_not_skipped += 1
            self._discard(slot, lost=True)
            return
        if (
            now >= slot.expires_at  # also after expire() and close(): _expire_all()
            or (
                self._limit_uses
                and (
                    (self._max_uses is not None and slot.uses >= self._max_uses)
                    or (
                        self._max_queries is not None
                        and _pg.query_count(slot.conn) >= self._max_queries
                    )
                )
            )
        ):
            c.returns_not_skipped += 1
            self._retire(slot, "lifetime, uses or expire()")
            return
        if not ended and not slot.dirty and self._auto_reset:  # ended: _LEASE_CLEAN (0)
            # A skipped reset: counted as use_time.count - returns_not_skipped.
            waiters = self._waiters  # _hand_over(), inlined
            while waiters:
                fut = waiters.popleft()[0]
                if not fut.done():
                    self._n_waiting -= 1
                    fut.set_result(slot)
                    return
            if self._over_max:
                self._hand_over(slot)  # retires it if the pool is still too large
            else:
                slot.state = IDLE  # IN_USE -> IDLE: no counter changes (module notes)
                self._idle.append(slot)
            return
        self._on_returned_slow(slot, ended == _LEASE_NEEDS_ROLLBACK, timeout)

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

    def _on_returned_slow(self, slot: _Slot, rollback: bool, timeout: float | None) -> None:
        """A returned connection that may need a reset, by the configured mode."""
        cfg = self._config
        mode = cfg.reset
        full = (slot.dirty if mode == "auto" else mode == "full") and not (
            cfg.shares_server_sessions
        )
        if not (rollback or full or callable(mode)):
            self._hand_over(slot)
            return
        self._counters.returns_not_skipped += 1
        if rollback and _pg.unmanaged_transaction(slot.conn):
            self._report_open_transaction(slot)
        if mode == "none":
            # No reset queries allowed: a connection left mid-transaction is replaced.
            self._discard(slot, lost=False)
            return
        self._set(slot, RETURNING)
        budget = cfg.reset_timeout if timeout is None else timeout
        self._spawn(self._reset(slot, rollback, full, budget), "asyncpool-reset")

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
        try:
            await self._probe(self._reset_session(slot.conn, rollback, full), budget)
        except asyncio.CancelledError:
            self._set(slot, IN_USE)
            self._discard(slot, lost=False)
            raise
        except Exception as exc:
            logger.warning(
                "asyncpool pool %r: reset of a returned connection failed (%r); "
                "replacing the connection",
                self.name,
                exc,
            )
            self._set(slot, IN_USE)
            self._discard(slot, lost=True)
            return
        self._counters.resets_total += 1
        self._set(slot, IN_USE)
        if slot.conn.is_closed():
            # asyncpg completes a pending cancellation normally when the connection is
            # lost, so a reset can "succeed" on a dead connection: never lend it.
            self._discard(slot, lost=True)
        elif self._state == _OPEN:
            self._hand_over(slot)
        else:
            self._retire(slot, "pool closing")

    async def _reset_session(self, conn: Any, rollback: bool, full: bool) -> None:
        mode = self._config.reset
        await _pg.reset_connection(conn, full=full, rollback=rollback)
        if callable(mode):
            _pg.forget_listeners(conn)
            await mode(conn)

    async def _probe(self, operation: Awaitable[_T], limit: float) -> _T:
        """Await one background operation on a connection (connect, reset, keepalive) for
        at most ``limit`` seconds, and give it up sooner, once it has run past the stall
        limit while borrowers wait: a connect or a round trip that slow has most likely
        hit a dead network (a half-open socket sends no RST), and a fresh attempt may
        succeed at once. Raises :class:`TimeoutError` either way.
        """
        loop = self._loop
        assert loop is not None
        now = loop.time()
        stall = self._stall_limit()
        async with asyncio.timeout_at(now + limit) as scope:
            if stall >= limit:
                return await operation
            watch = _StallWatch(self, scope, now + stall, stall, now + limit)
            try:
                return await operation
            finally:
                watch.cancel()

    def _stall_limit(self) -> float:
        """How long a background connect or round trip may take while borrowers wait: four
        times the usual connect time, at least _STALL_FLOOR; no limit before a connect has
        succeeded (nothing is known of this server's speed yet).
        """
        estimate = self._connect_estimate
        return _INF if estimate is None else max(_STALL_FLOOR, 4 * estimate)

    def _on_closed(self, slot: _Slot, _conn: Any) -> None:
        """Asyncpg's word that a connection closed (termination listener): an idle one
        leaves the pool at once, so sizes and stats never count a dead connection. Busy
        ones are seen to when they come back; the pool's own closes find the slot gone.
        """
        if slot.state is IDLE and slot in self._slots and slot.conn.is_closed():
            self._idle.remove(slot)
            self._set(slot, IN_USE)
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

    # ------------------------------------------------------ state changes (sync)

    def _expire_all(self) -> None:
        """Make every current connection expired, so that release retires the lent ones
        (one test there covers max_lifetime, expire() and close()). A connection still
        opening gets its expiry when it opens; ``_connect`` checks the generation and
        the pool's state itself.
        """
        for slot in self._slots:
            slot.expires_at = _EXPIRED

    def _state_counts(self) -> list[int]:
        """Slots per :class:`SlotState` (index by state). Settles the IDLE/IN_USE split
        from the idle deque, which holds exactly the IDLE slots; their sum is kept exact
        by every state change.
        """
        counts = self._counts
        ready = counts[IDLE] + counts[IN_USE]
        counts[IDLE] = len(self._idle)
        counts[IN_USE] = ready - counts[IDLE]
        return counts

    def _set(self, slot: _Slot, state: SlotState) -> None:
        counts = self._counts
        if state is CLOSING and slot.state is not CLOSING:
            self._active -= 1
        counts[slot.state] -= 1
        counts[state] += 1
        slot.state = state

    def _new_slot(self) -> _Slot:
        slot = _Slot(self._generation)
        self._slots.add(slot)
        self._counts[CONNECTING] += 1
        self._active += 1
        return slot

    def _remove(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return
        self._slots.remove(slot)
        self._lends_gone += slot.uses
        self._counts[slot.state] -= 1
        if slot.state is not CLOSING:
            self._active -= 1
        if slot.state is IDLE:
            try:
                self._idle.remove(slot)
            except ValueError:
                pass
        # Out of the pool: a late release of its lease (after terminate) finds it closed.
        slot.state = CLOSING
        if slot.conn is not None:
            self._counters.connections_closed_total += 1
        if self._empty is not None and not self._slots and not self._empty.done():
            self._empty.set_result(None)

    def _hand_over(self, slot: _Slot) -> bool:
        """Give a ready slot (state IN_USE, not lent) to the oldest live waiter (True),
        else make it idle (False). A slot that expired (max_lifetime, expire(), close())
        while it was away being reset or pinged is retired instead.
        """
        if _now() >= slot.expires_at or slot.generation != self._generation:
            self._retire(slot, "max_lifetime or expire()")
            return False
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()[0]
            if not fut.done():
                self._n_waiting -= 1
                fut.set_result(slot)
                return True
        if self._state != _OPEN:
            self._retire(slot, "pool closing")
            return False
        if self._over_max:
            if self._active > self._max_size:
                self._retire(slot, "resize")  # max_size shrank while it was lent or busy
                return False
            self._over_max = False
        slot.state = IDLE  # IN_USE -> IDLE: no counter changes (see the module notes)
        self._idle.append(slot)
        return False

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

    def _retire(self, slot: _Slot, reason: str = "retired") -> None:
        """Close a connection politely in the background; its slot counts until closed."""
        if self._hooks:
            self._emit(EventKind.DISCARD, reason=reason)
        if slot.state is IDLE:
            try:
                self._idle.remove(slot)
            except ValueError:
                pass
        self._set(slot, CLOSING)
        self._spawn(self._close_slot(slot), "asyncpool-close")
        self._grow()

    async def _close_slot(self, slot: _Slot) -> None:
        try:
            await _pg.close_gracefully(slot.conn, min(self._config.ping_timeout, 2.0))
        finally:
            self._remove(slot)
            self._grow()

    def _open_count(self) -> int:
        n = self._counts
        return n[IDLE] + n[IN_USE] + n[RETURNING] + n[CHECKING]

    def _spawn(self, coro: Any, name: str = "asyncpool-task") -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "asyncpool pool %r: background task failed", self.name, exc_info=task.exception()
            )

    # ------------------------------------------------------------- growth

    def _grow(self) -> None:
        """Start background connects for waiters and for ``min_size`` (sync)."""
        n = self._counts
        active = self._active
        if active >= self._max_size or self._state is not _OPEN:
            return  # the common case under load: full, nothing to open
        cfg = self._config
        loop = self._loop
        assert loop is not None
        count = connects_to_start(
            active=active,
            connecting=n[CONNECTING],
            returning=n[RETURNING] + n[CHECKING],
            waiting=self._n_waiting,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            concurrency=cfg.connect_concurrency,
            down=self._down,
        )
        if count <= 0:
            return
        now = loop.time()
        if now < self._next_connect_at:
            if self._retry_handle is None:
                self._retry_handle = loop.call_at(self._next_connect_at, self._retry)
            return
        for _ in range(count):
            self._spawn(self._connect(self._new_slot()), "asyncpool-connect")

    def _retry(self) -> None:
        self._retry_handle = None
        self._grow()

    async def _connect(self, slot: _Slot) -> None:
        loop = self._loop
        assert loop is not None
        cfg = self._config
        started = loop.time()
        opened: list[Any] = []  # the connection, once open (its init hook may still fail)
        try:
            conn = await self._probe(self._open_connection(opened), cfg.connect_timeout)
        except asyncio.CancelledError:
            for conn in opened:
                _pg.terminate(conn)
            self._remove(slot)
            raise
        except Exception as exc:
            for conn in opened:
                _pg.terminate(conn)
            self._remove(slot)
            self._on_connect_failed(exc, init_failed=bool(opened))
            return
        now = _now()
        elapsed = loop.time() - started
        estimate = self._connect_estimate
        self._connect_estimate = (
            elapsed if estimate is None else 0.8 * estimate + 0.2 * elapsed
        )  # fmt: skip
        c = self._counters
        c.connections_opened_total += 1
        c.connect_time.add(elapsed)
        if self._hooks:
            self._emit(EventKind.CONNECT, elapsed)
        slot.conn = conn
        slot.end_lease = _pg.lease_ender(conn)
        slot.has_input = _pg.input_check(conn)
        _pg.on_termination(conn, functools.partial(self._on_closed, slot))
        slot.wrapper, slot.guarded_wrapper = wrapper_classes(type(conn))
        slot.created_at = slot.last_used = now
        if cfg.max_lifetime is not None:
            slot.expires_at = now + cfg.max_lifetime * (1 - cfg.lifetime_jitter * random.random())
        if self._down:
            logger.warning("asyncpool pool %r: the database is reachable again", self.name)
        self._down = False
        self._backoff = 0.0
        self._next_connect_at = 0.0
        self._last_connect_error = None
        self._config_error_logged = None
        self._set(slot, IN_USE)
        if self._state == _OPENING:
            self._hand_over_opening(slot)
        elif self._state != _OPEN or slot.generation != self._generation:
            self._retire(slot, "stale generation")
        else:
            self._hand_over(slot)
            self._grow()
            if self._idle_timer is None:
                self._schedule_idle_expiry()

    async def _open_connection(self, opened: list[Any]) -> Any:
        cfg = self._config
        conn = await _pg.open_connection(cfg)
        opened.append(conn)
        if cfg.init is not None:
            await cfg.init(conn)
            if conn.is_closed():  # (as asyncpg's pool: an init may close to refuse it)
                raise ConnectionError("the init hook closed the new connection")
        return conn

    def _hand_over_opening(self, slot: _Slot) -> None:
        self._set(slot, IDLE)
        self._idle.append(slot)

    def _on_connect_failed(self, exc: BaseException, *, init_failed: bool) -> None:
        """Count, back off and report a failed connect; fail waiters only when the failure
        is definite (refused, or the settings are wrong) and no connection is open: a
        connect that timed out is merely slow, and its waiters keep their own deadlines.
        """
        cfg = self._config
        loop = self._loop
        assert loop is not None
        self._counters.connect_errors_total += 1
        self._last_connect_error = exc
        kind = _pg.OUTAGE if init_failed else _pg.classify_connect_error(exc)
        self._failure = kind
        if self._hooks:
            self._emit(EventKind.CONNECT_FAILED, error=exc)
        cap = cfg.reconnect_max_delay
        if kind is _pg.CONFIG_ERROR:
            cap = max(cap, _CONFIG_RETRY_MAX_DELAY)  # a wrong password is not a blip
        if kind is _pg.TIMED_OUT:
            # It already took its whole time limit (or the stall limit, with borrowers
            # waiting): that paces the attempts; try again at once, e.g. on a healed network.
            delay = 0.0
        else:
            self._backoff = min(max(self._backoff * 2, cfg.reconnect_initial_delay), cap)
            delay = self._backoff * random.uniform(0.5, 1.0)
            self._next_connect_at = loop.time() + delay
        what = "init hook failed on a new connection" if init_failed else "connect failed"
        definite = kind is not _pg.TIMED_OUT and not init_failed
        if self._state is _OPENING:
            # open() raises the error itself (and closes the pool if nothing opened).
            logger.debug("asyncpool pool %r: %s while opening: %r", self.name, what, exc)
        elif kind is _pg.CONFIG_ERROR:
            key = (type(exc), str(exc))
            if key != self._config_error_logged:  # once per distinct refusal
                self._config_error_logged = key
                logger.error(
                    "asyncpool pool %r: %s; retrying every %.0fs at most until the settings "
                    "change (pool.set_connect_kwargs() retries at once)",
                    self.name, self._unavailable_message(), _CONFIG_RETRY_MAX_DELAY,
                )  # fmt: skip
        elif definite and self._open_count() == 0:
            if not self._down:
                logger.error(
                    "asyncpool pool %r: %s and no connection is open: %r; the database is "
                    "treated as down, retrying with backoff", self.name, what, exc,
                )  # fmt: skip
        else:
            logger.warning(
                "asyncpool pool %r: %s: %r (next attempt in %.2fs)", self.name, what, exc, delay
            )
        if definite and self._open_count() == 0:
            self._down = True
            self._failed_at = loop.time()
            if self._state is _OPEN and self._n_waiting:
                self._counters.unavailable_total += self._n_waiting
                self._fail_waiters(self._unavailable_error())
        self._grow()

    def _unavailable_message(self) -> str:
        """Why no connection can be opened, by the last failure's kind, for errors and logs."""
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

    # ------------------------------------------------------------ upkeep

    def _schedule_idle_expiry(self) -> None:
        """(Re-)arm the pool's one idle-expiry timer: for the oldest idle connection's
        ``max_idle``, or ``max_idle`` from now when none is idle; none while the pool
        holds no more than ``min_size`` (nothing may expire then; a new connection
        re-arms it).
        """
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cfg = self._config
        max_idle = cfg.max_idle
        if (
            max_idle is None
            or max_idle == _INF
            or self._state is not _OPEN
            or self._active <= cfg.min_size
        ):
            return
        loop = self._loop
        assert loop is not None
        now = _now()
        oldest = min((slot.last_used for slot in self._idle), default=now)
        self._idle_timer = loop.call_later(max(oldest + max_idle - now, 0.0), self._expire_idle)

    def _expire_idle(self) -> None:
        """The idle-expiry timer: close connections idle ``max_idle`` or longer, oldest
        first, while the pool holds more than ``min_size``; then re-arm.
        """
        self._idle_timer = None
        if self._state is not _OPEN:
            return
        cfg = self._config
        assert cfg.max_idle is not None
        now = _now()
        for slot in sorted(self._idle, key=lambda slot: slot.last_used):
            if self._active <= cfg.min_size or now - slot.last_used < cfg.max_idle:
                break
            self._retire(slot, "max_idle")
        self._schedule_idle_expiry()

    def _housekeep(self) -> None:
        """One maintenance pass (sync): lifetimes, idle limits, keepalive, leaks, refill."""
        if self._state != _OPEN:
            return
        cfg = self._config
        loop = self._loop
        assert loop is not None
        now = _now()
        # Oldest-returned first: the deque's left end has been idle longest.
        for slot in list(self._idle):
            if slot.conn.is_closed():
                self._idle.remove(slot)
                self._set(slot, IN_USE)
                self._discard(slot, lost=True)
            elif now >= slot.expires_at or slot.generation != self._generation:
                self._retire(slot, "max_lifetime or expire()")
            elif (
                cfg.keepalive_interval is not None
                and now - slot.last_used >= cfg.keepalive_interval
            ):
                self._idle.remove(slot)
                self._set(slot, CHECKING)
                self._spawn(self._keepalive(slot), "asyncpool-keepalive")
        if cfg.leak_timeout is not None:
            for slot in self._slots:
                if (
                    slot.state is IN_USE
                    and not slot.leak_reported
                    and slot.stack is not None
                    and now - slot.acquired_at >= cfg.leak_timeout
                ):
                    slot.leak_reported = True
                    self._counters.leaks_total += 1
                    if self._hooks:
                        self._emit(EventKind.LEAK, now - slot.acquired_at, "held too long")
                    logger.warning(
                        "asyncpool pool %r: a connection has been held for %.1fs "
                        "(leak_timeout=%ss); it was acquired at:\n%s",
                        self.name,
                        now - slot.acquired_at,
                        cfg.leak_timeout,
                        slot.stack,
                    )
        self._grow()

    async def _keepalive(self, slot: _Slot) -> None:
        self._counters.pings_total += 1
        try:
            await self._probe(_pg.ping(slot.conn), self._config.ping_timeout)
        except asyncio.CancelledError:
            self._set(slot, IN_USE)
            self._discard(slot, lost=False)
            raise
        except Exception as exc:
            self._counters.pings_failed_total += 1
            logger.info(
                "asyncpool pool %r: keepalive failed, replacing connection: %r", self.name, exc
            )
            self._set(slot, IN_USE)
            self._discard(slot, lost=True)
            return
        slot.last_used = _now()
        self._set(slot, IN_USE)
        self._hand_over(slot)

    # ------------------------------------------------------------ operations

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the pool's bounds. Extra idle connections close now; extra busy ones
        close when returned; missing ones open in the background.
        """
        import dataclasses

        self._check_owner()
        self._config = dataclasses.replace(
            self._config,
            min_size=self._config.min_size if min_size is None else min_size,
            max_size=self._config.max_size if max_size is None else max_size,
        )
        self._apply_config()
        excess = self._active - self._config.max_size
        for slot in list(self._idle)[: max(excess, 0)]:
            self._retire(slot, "resize")
        if self._active > self._max_size:
            self._over_max = True  # busy ones close as they come back (_hand_over)
        self._grow()
        self._schedule_idle_expiry()

    def expire(self) -> None:
        """Retire every current connection gracefully (idle now, busy ones when returned);
        new connections replace them, e.g. after a credentials rotation or failover.
        """
        self._check_owner()
        self._generation += 1
        self._expire_all()
        for slot in list(self._idle):
            self._retire(slot, "expire()")
        self._grow()

    def set_connect_kwargs(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use new connection arguments for connections opened from now on (e.g. rotated
        credentials). A connect that is backing off after a failure is tried again at once.
        """
        import dataclasses

        accepted = _pg.accepted_keywords(self._config.connect)
        message = None if accepted is None else unknown_keywords(connect_kwargs, accepted)
        if message is not None:
            raise TypeError(f"set_connect_kwargs() got an {message}")
        if self._config.shares_server_sessions:
            connect_kwargs.setdefault("statement_cache_size", 0)
        self._config = dataclasses.replace(self._config, dsn=dsn, connect_kwargs=connect_kwargs)
        self._apply_config()
        self._backoff = 0.0
        self._next_connect_at = 0.0
        self._down = False  # known with the old arguments; borrowers wait for the new ones
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._state is _OPEN:
            self._grow()


#: The pool's own settings: the keyword parameters of Pool().
_SETTINGS: frozenset[str] = frozenset(
    name
    for name, p in inspect.signature(Pool.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


class _StallWatch:
    """One timer that gives up a background operation of the pool (see ``Pool._probe``)
    once it has run past the stall limit while borrowers wait: it moves the operation's
    timeout to now. While nobody waits it looks again every stall limit, until the
    operation's own time limit.
    """

    __slots__ = ("_handle", "_interval", "_limit_at", "_pool", "_scope")

    def __init__(
        self, pool: Pool, scope: asyncio.Timeout, first: float, interval: float, limit_at: float
    ) -> None:
        self._pool = pool
        self._scope = scope
        self._interval = interval
        self._limit_at = limit_at
        loop = pool._loop
        assert loop is not None
        self._handle: asyncio.TimerHandle | None = loop.call_at(first, self._look)

    def _look(self) -> None:
        pool = self._pool
        loop = pool._loop
        assert loop is not None
        now = loop.time()
        self._handle = None
        if pool._n_waiting:
            self._scope.reschedule(now)  # the operation raises TimeoutError
        elif now + self._interval < self._limit_at:
            self._handle = loop.call_at(now + self._interval, self._look)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _maintain(pool_ref: weakref.ref[Pool], interval: float) -> None:
    """The pool's one background maintenance loop (holds only a weak reference)."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        pool = pool_ref()
        if pool is None:
            return
        try:
            pool._housekeep()
        except Exception:  # never let upkeep die silently
            logger.exception("asyncpool pool %r: maintenance failed", pool.name)
        del pool


class _AcquireContext:
    """What :meth:`Pool.acquire` returns: awaitable, and an async context manager.

    The hot path lives here, inlined (a method call is a tenth of what an idle
    acquire costs): lend the most recently used idle connection when it needs no
    check. Its state change is synchronous and ends before the first ``await``;
    everything else goes to :meth:`Pool._wait`.
    """

    __slots__ = ("_conn", "_guarded", "_pool", "_timeout")

    # Made by Pool.acquire(), never by calling the class.
    _pool: Pool
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
        if pool._state is not _OPEN:
            raise pool._refuse()
        tid_loop = pool._tid_loop  # the cheap test of Pool._check_loop's docstring
        if (
            tid_loop._thread_id != get_ident()
            if tid_loop is not None
            else pool._owner_tid != get_ident() or not pool._loop.is_running()  # type: ignore[union-attr]
        ):
            pool._check_loop()
        idle = pool._idle
        if idle and not pool._n_waiting:
            slot = idle[-1]
            now = _now()
            idle_for = now - slot.last_used
            if (
                now < slot.expires_at
                and idle_for < pool._ping_after
                and not slot.conn.is_closed()
                # A connection idle for a while is polled for input first (_take_idle):
                # one poll(0) where the pool is not busy; none on a connection just given back.
                and (idle_for < _INPUT_CHECK_AFTER or not slot.has_input())
            ):
                idle.pop()
                slot.state = IN_USE  # IDLE -> IN_USE: no counter changes (module notes)
                slot.uses += 1
                slot.acquired_at = now
                slot.dirty = False
                # (no __init__ call: see PooledConnection)
                conn = _new_object(slot.guarded_wrapper if self._guarded else slot.wrapper)
                conn._pool = pool
                conn._slot = slot
                conn._con = slot.conn
                conn._lease = slot.uses
                if pool._extras:
                    pool._on_lent(slot, 0.0, 2)
                    if pool._setup is not None:
                        await pool._run_setup(conn)
                self._conn = conn
                return conn
            slot, started = await pool._wait(self._timeout)  # idle ones to check first
        else:  # nothing idle, or others wait first: queue
            timeout = self._timeout
            if (
                timeout is None
                and pool._active >= pool._max_size
                and not pool._down
                and pool._max_waiting is None
            ):  # Pool._enqueue, inlined for the usual wait (see there)
                clock = pool._clock
                started = clock()
                deadline = started + pool._acquire_timeout
                fut: asyncio.Future[_Slot] = _Future(loop=pool._loop)
                pool._waiters.append((fut, deadline, started))
                pool._n_waiting += 1
                if deadline < pool._deadline_at:
                    pool._arm_deadlines(deadline)
            else:
                fut, started = pool._enqueue(timeout)
            try:
                slot = await fut
            except BaseException as exc:
                pool._abandon(fut, exc)
                raise
            if pool._state is not _OPEN:
                pool._handed_late(slot)
        # Lend a slot handed over after a wait (or checked by Pool._wait).
        slot.uses += 1
        slot.acquired_at = _now()
        clock = pool._clock  # (a local: `pool._clock()` takes CPython's slow method lookup)
        waited = clock() - started
        slot.dirty = False
        wait_time = pool._counters.wait_time  # _Recorder.add, inlined
        wait_time.sum += waited
        if waited > wait_time.max:
            wait_time.max = waited
        if waited <= 0.001:  # the first three buckets, unrolled (see _FIRST_BOUNDS)
            wait_time.buckets[0 if waited <= 0.0001 else 1 if waited <= 0.0005 else 2] += 1
        else:
            wait_time.buckets[bisect_left(HISTOGRAM_BOUNDS, waited)] += 1
        conn = _new_object(slot.guarded_wrapper if self._guarded else slot.wrapper)  # as above
        conn._pool = pool
        conn._slot = slot
        conn._con = slot.conn
        conn._lease = slot.uses
        if pool._extras:
            pool._on_lent(slot, waited, 2)
            if pool._setup is not None:
                await pool._run_setup(conn)
        self._conn = conn
        return conn

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
                if pool._fork_gen != _fork_generation:
                    pool._check_loop()  # refuses: a forked child must not touch the pool
                # No loop check otherwise: `async with` runs this in the task that ran
                # __aenter__, which checked it is on the pool's loop (so in its thread).
                pool._returned(conn, slot, None)
        return pool._done


if TYPE_CHECKING:
    from typing import Unpack

    from ._settings_types import PoolSettings


def create_pool(dsn: str | None = None, **kwargs: Unpack[PoolSettings]) -> Pool:
    """Create a pool; ``await`` it to open it, or use ``async with create_pool(...) as pool``.

    Settings (defaults in brackets):

    - ``min_size`` [1], ``max_size`` [10]: connections kept open / the hard cap.
    - ``acquire_timeout`` [30 s]: default deadline of each acquire (finite on purpose).
    - ``max_waiting`` [None = unbounded]: cap on queued borrowers (:class:`TooManyWaiters`).
    - ``reset`` ["auto"]: what release does. ``"auto"`` rolls back an open transaction
      and runs a full session reset only after statements that may change session
      state (else no round trip); ``"full"`` always resets; ``"rollback"`` only ends
      transactions; ``"none"`` never queries (a connection left in a transaction is
      replaced); or an async callable run after the rollback.
    - ``reset_timeout`` [5 s], ``max_lifetime`` [3600 s, minus up to ``lifetime_jitter``
      10 %], ``max_idle`` [600 s, above min_size], ``max_uses`` / ``max_queries`` [None].
    - ``ping_after_idle`` [10 s]: ping a connection idle at least this long before lending
      it; ``ping_timeout`` [5 s]; ``keepalive_interval`` [60 s] for idle connections.
    - ``connect_timeout`` [10 s], ``connect_concurrency`` [2], reconnect backoff
      ``reconnect_initial_delay`` [0.05 s] doubling to ``reconnect_max_delay`` [1 s].
    - ``leak_timeout`` [None]: warn, with the acquiring stack, about long-held connections.
    - ``init`` / ``setup``: async hooks per new connection / per checkout.
    - ``connect``: a replacement for ``asyncpg.connect``; ``connect_args``: a (sync or
      async) callable returning connection arguments at each connect.
    - Any other keyword goes to ``asyncpg.connect`` (``user``, ``password``, ``ssl``,
      ``statement_cache_size``, ``server_settings`` ...).
    """
    return Pool(dsn, **kwargs)
