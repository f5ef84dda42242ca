"""The pool's public face: settings, open and close, borrowing and giving back, stats,
resize and expire (the top layer; ``_core.py`` describes the whole design).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import Generator
from time import monotonic as _now
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _guard, _pg
from ._compat import AsyncpgPoolMethods
from ._config import PoolConfig, check_acquire_timeout, check_seconds, unknown_keywords
from ._core import _AcquireContext
from ._errors import PoolClosed, PoolUsageError
from ._events import EventHook
from ._slots import CHECKING, CLOSING, CONNECTING, IDLE, IN_USE, RETURNING
from ._state import CLOSED, CLOSING_POOL, NEW, OPEN, OPENING
from ._stats import PoolStats, _Counters
from ._upkeep import PoolUpkeep, maintain

if TYPE_CHECKING:
    from typing import Unpack

    from ._connection import PooledConnection
    from ._settings_types import PoolSettings

__all__ = ("Pool", "create_pool")

logger = logging.getLogger("asyncpool.pool")


_new_object = object.__new__


class Pool(PoolUpkeep, AsyncpgPoolMethods):
    """A pool of asyncpg connections for one event loop.

    Create it with :func:`create_pool` (opens it), or construct it and call
    :meth:`open` later (e.g. in a web framework's lifespan hook). Borrow with
    ``async with pool.acquire() as conn:``. See :func:`create_pool` for every
    setting and its default.
    """

    __module__ = "asyncpool"
    __slots__ = ()

    def __init__(self, dsn: str | None = None, **settings: Unpack[PoolSettings]) -> None:
        kwargs: dict[str, Any] = dict(settings)
        loop = kwargs.pop("loop", None)
        config = PoolConfig.from_kwargs(
            dsn, kwargs, connect_keywords=_pg.accepted_keywords(kwargs.get("connect"))
        )
        init_size = config.min_size if config.init_size is None else config.init_size
        super().__init__(config, init_size, loop)

    # ------------------------------------------------------------------ facts

    @property
    def config(self) -> PoolConfig:
        """The pool's validated settings."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`terminate` has begun."""
        return self._state in (CLOSING_POOL, CLOSED)

    @property
    def size(self) -> int:
        """Connections the pool owns or is opening, in every state."""
        return len(self._slots)

    def stats(self) -> PoolStats:
        """A frozen snapshot of sizes, counters and time summaries."""
        c = self._counters
        n = self._table.state_counts()
        acquired = self._lends() - c.lends_before
        cfg = self._config
        return PoolStats(
            name=cfg.name,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            limit=self._max_size,
            size=len(self._slots),
            idle=n[IDLE],
            in_use=n[IN_USE],
            connecting=n[CONNECTING],
            returning=n[RETURNING],
            checking=n[CHECKING],
            closing=n[CLOSING],
            waiting=self._waiters.live,
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
            overload_refused_total=c.overload_refused_total,
            overload_shed_total=c.overload_shed_total,
            served_newest_total=self._waiters.served_newest,
            wait_time=c.wait_time.snapshot(acquired - c.wait_time.count),
            use_time=c.use_time.snapshot(),
            connect_time=c.connect_time.snapshot(),
            autosize=None if self._sizer is None else self._sizer.stats(),
        )

    def pop_stats(self) -> PoolStats:
        """Return :meth:`stats` and reset the counters (for periodic reporting)."""
        snapshot = self.stats()
        self._counters = _Counters()
        self._counters.lends_before = self._lends()
        self._waiters.served_newest = 0
        return snapshot

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

    def __repr__(self) -> str:
        n = self._table.state_counts()
        return (
            f"<Pool {self.name!r} {self._state} [size={len(self._slots)}/{self._config.max_size}: "
            f"idle={n[IDLE]} in_use={n[IN_USE]} connecting={n[CONNECTING]} "
            f"returning={n[RETURNING]} checking={n[CHECKING]} closing={n[CLOSING]} | "
            f"waiting={self._waiters.live}]>"
        )

    # ---------------------------------------------------------- open / close

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._open_and_return().__await__()

    async def _open_and_return(self) -> Pool:
        await self.open()
        return self

    async def __aenter__(self) -> Pool:
        if self._state == NEW:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self, *, wait: bool = True) -> None:
        """Open the pool on the running event loop, with its first ``init_size`` (by
        default ``min_size``) connections.

        Raises the connect error when ``init_size > 0`` and not one connection could be
        opened (the pool is then closed); if only some fail, the rest are opened in the
        background. Bounded by ``connect_timeout`` as a whole. With ``wait=False`` the
        pool opens at once and connects in the background: borrowers wait for the first
        connections (or fail fast while the database is known down), which is how an
        application starts "degraded" when its database is not up yet.
        """
        if self._state != NEW:
            raise PoolUsageError(f"asyncpool pool {self.name!r} was already opened ({self._state})")
        loop = asyncio.get_running_loop()
        if self._requested_loop is not None and self._requested_loop is not loop:
            raise PoolUsageError(
                f"asyncpool pool {self.name!r} was given loop={self._requested_loop!r}, which is "
                "not the running event loop; drop the loop argument (asyncpool always uses the "
                "loop it is opened on)"
            )
        _guard.bind(self, loop)
        # The loop's clock (deadlines are loop times, so a test loop's virtual clock
        # rules them); asyncio's is time.monotonic itself.
        self._clock = _now if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._waiters.bind(loop, self._clock)
        self._done = loop.create_future()
        self._done.set_result(None)
        if wait:
            self._state = OPENING
            await self._open_first_connections(loop)
        self._state = OPEN
        self._maintenance = loop.create_task(
            maintain(weakref.ref(self), self._config.maintenance_interval),
            name=f"asyncpool-maintenance-{self.name}",
        )
        logger.info(
            "asyncpool pool %r opened: %d connection(s), min_size=%d max_size=%d",
            self.name,
            len(self._idle),
            self._config.min_size,
            self._config.max_size,
        )
        if not wait and self._config.budget_check != "off":
            self._spawn(self._check_server_on_own_connection(), "asyncpool-budget-check")
        self._grow()
        self._schedule_idle_expiry()

    async def _open_first_connections(self, loop: asyncio.AbstractEventLoop) -> None:
        # open() as a whole is bounded by connect_timeout (the connects run in parallel,
        # each bounded by it too; the server check gets what is left).
        deadline = loop.time() + self._config.connect_timeout
        slots = [self._table.new(self._generation) for _ in range(self._init_size)]
        tasks = [self._spawn(self._connect(slot), "asyncpool-connect") for slot in slots]
        try:
            if tasks:
                await asyncio.wait(tasks)
            if slots and not self._idle:
                error = self._last_connect_error or PoolClosed(
                    f"asyncpool pool {self.name!r} was closed while opening"
                )
                if self._last_connect_error is not None:
                    error.add_note(f"asyncpool pool {self.name!r}: {self._unavailable_message()}")
                raise error
            await self._check_server(deadline)
        except BaseException:
            self.terminate()
            raise

    async def close(self, timeout: float | None = None) -> None:
        """Close gracefully: stop lending, fail waiters with :class:`PoolClosed`, wait up to
        ``timeout`` seconds (default ``close_timeout``) for borrowed connections to come
        back, then terminate whatever is left. Never hangs; safe to call twice.
        """
        if self._state == NEW:
            self._state = CLOSED
            return
        if self._close_task is None:
            if self._state == CLOSED:
                return
            _guard.check_loop(self)  # refused from another loop, before anything changes
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
        loop = _guard.check_loop(self)
        self._state = CLOSING_POOL
        self._waiters.fail_all(
            PoolClosed(f"asyncpool pool {self.name!r} is closing; no more connections are lent")
        )
        self._cancel_background(keep_closers=True)
        self._expire_all()
        for slot in list(self._idle):
            self._retire(slot, "pool closing")
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
        if self._forked:
            # A forked child: the inherited connections are the parent's (and were
            # disowned at fork). Just let go.
            self._state = CLOSED
            self._lends_gone = self._lends()
            self._table.clear()
            self._waiters = type(self._waiters)(self._timed_out)  # (forget the parent's)
            self._tasks.clear()
            return
        if self._state is not CLOSED:
            _guard.check_owner(self, is_open=self._state in (OPENING, OPEN))
        self._state = CLOSED
        self._waiters.fail_all(PoolClosed(f"asyncpool pool {self.name!r} was terminated"))
        self._cancel_background(keep_closers=False)
        for slot in list(self._slots):
            if slot.conn is not None:
                _pg.terminate(slot.conn)
            self._remove(slot)

    def _cancel_background(self, *, keep_closers: bool) -> None:
        self._waiters.close()
        for handle in (self._retry_handle, self._idle_timer):
            if handle is not None:
                handle.cancel()
        self._retry_handle = self._idle_timer = None
        loop_open = self._loop is not None and not self._loop.is_closed()
        if self._maintenance is not None:
            if loop_open:  # a closed loop cannot run a cancellation
                self._maintenance.cancel()
            self._maintenance = None
        for task in list(self._tasks):
            if keep_closers and task in self._closers:
                continue
            if loop_open:
                task.cancel()
            else:
                self._tasks.discard(task)

    # ------------------------------------------------------------ borrow, give back

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

    # ------------------------------------------------------------ operations

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the pool's bounds. Extra idle connections close now; extra busy ones
        close when returned; missing ones open in the background.
        """
        _guard.check_owner(self, is_open=self._state in (OPENING, OPEN))
        self._config = dataclasses.replace(
            self._config,
            min_size=self._config.min_size if min_size is None else min_size,
            max_size=self._config.max_size if max_size is None else max_size,
        )
        if self._sizer is not None:
            self._sizer.bound(self._config.min_size, self._config.max_size)
        self._apply_config()
        self._trim("resize")
        self._grow()
        self._schedule_idle_expiry()

    def expire(self) -> None:
        """Retire every current connection gracefully (idle now, busy ones when returned);
        new connections replace them, e.g. after a credentials rotation or failover.
        """
        _guard.check_owner(self, is_open=self._state in (OPENING, OPEN))
        self._generation += 1
        self._expire_all()
        for slot in list(self._idle):
            self._retire(slot, "expire()")
        self._grow()

    def set_connect_kwargs(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use new connection arguments for connections opened from now on (e.g. rotated
        credentials). A connect that is backing off after a failure is tried again at once.
        """
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
        if self._state is OPEN:
            self._grow()


def create_pool(dsn: str | None = None, **kwargs: Unpack[PoolSettings]) -> Pool:
    """Create a pool; ``await`` it to open it, or use ``async with create_pool(...) as pool``.

    Settings (defaults in brackets):

    - ``min_size`` [1], ``max_size`` [10]: connections kept open / the hard cap;
      ``init_size`` [min_size]: connections ``open()`` opens.
    - ``acquire_timeout`` [30 s]: default deadline of each acquire (finite on purpose;
      ``float("inf")`` waits forever).
    - ``max_waiting`` [None = unbounded]: cap on queued borrowers (:class:`TooManyWaiters`).
    - ``reset`` ["auto"]: what release does. ``"auto"`` rolls back an open transaction
      and runs a full session reset only after statements that may change session
      state (else no round trip); ``"full"`` always resets; ``"rollback"`` only ends
      transactions; ``"none"`` never queries (a connection left in a transaction is
      replaced); or an async callable run after the rollback.
    - ``reset_timeout`` [5 s], ``max_lifetime`` [3600 s, minus up to ``lifetime_jitter``
      10 %], ``max_idle`` [600 s, above min_size; asyncpg's name
      ``max_inactive_connection_lifetime`` works too], ``max_uses`` / ``max_queries``
      [None].
    - ``ping_after_idle`` [10 s]: ping a connection idle at least this long before lending
      it; ``ping_timeout`` [5 s]; ``keepalive_interval`` [60 s] for idle connections.
    - ``connect_timeout`` [10 s, also bounds ``open()``], ``connect_concurrency`` [2]
      connects at once for waiting borrowers, reconnect backoff ``reconnect_initial_delay``
      [0.05 s] doubling to ``reconnect_max_delay`` [1 s] (30 s after a wrong password or
      another refused setting).
    - ``leak_timeout`` [None]: warn, with the acquiring stack, about long-held connections.
    - ``close_timeout`` [10 s]: how long ``close()`` waits for borrowed connections.
    - ``maintenance_interval`` [1 s]: the period of the upkeep pass.
    - ``init`` / ``setup``: async hooks per new connection / per checkout.
    - ``connect``: a replacement for ``asyncpg.connect``; ``connect_args``: a (sync or
      async) callable returning connection arguments at each connect.
    - ``name`` [``host:port/database``, numbered if taken]: in logs, errors and metrics.
    - ``pooler`` [None]: ``"pgbouncer-session"``, ``"pgbouncer-transaction"`` or
      ``"pgbouncer-statement"`` when a pooler sits in between.
    - ``instances`` [1], ``budget_check`` ["warn"]: the connection budget checked at open
      (``max_size * instances`` against the server's ``max_connections``).
    - ``autosize`` [False]: follow the smallest pool size that gives full throughput
      (between ``min_size`` and ``max_size``, within the server's live connection budget
      shared by ``instances`` pools); see the sizing guide.
    - ``tcp_keepalive`` [True]: TCP keepalive on the connections' sockets.
    - Any other keyword goes to ``asyncpg.connect`` (``user``, ``password``, ``ssl``,
      ``statement_cache_size``, ``server_settings`` ...); an unknown one is refused at once.
    """
    return Pool(dsn, **kwargs)
