"""The pool's asynchronous work: opening connections, resetting, pinging and closing
them, and deciding when to open more (the I/O layer; see ``_core.py`` for the shape).

Every operation on one connection runs under :meth:`PoolWorkers._probe`: bounded by its
own time limit, and given up sooner once it has stalled while borrowers wait (a
half-open network sends no RST; a fresh attempt may succeed at once). Its outcome is
handled in one place, :meth:`PoolWorkers._settle`: cancelled, the connection is
discarded (its protocol state is unknown) and the cancellation re-raised; failed, it is
discarded as lost; done, it goes on. Borrowers never run these connects themselves:
they wait on the pool, and a connect that succeeds goes to the oldest waiter.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable
from time import monotonic as _now
from typing import Any, TypeVar

from . import _pg
from ._core import PoolCore, _AcquireContext
from ._errors import ConnectionBudgetExceeded
from ._events import EventKind
from ._policy import connects_to_start, next_backoff, stall_limit
from ._quiet import own, quiet
from ._slots import CHECKING, CONNECTING, IN_USE, RETURNING, _Slot
from ._state import OPEN, OPENING
from ._wrappers import wrapper_classes

__all__ = ("PoolWorkers",)

logger = logging.getLogger("asyncpool.pool")

_T = TypeVar("_T")

# Retries after a configuration error (wrong password, unknown database ...) back off to
# this many seconds at most (an outage's cap is reconnect_max_delay).
_CONFIG_RETRY_MAX_DELAY = 30.0


class PoolWorkers(PoolCore):
    """Connect, reset, ping, keepalive and close: the pool's I/O (internal)."""

    __slots__ = ()

    def _after_fork(self) -> None:
        """In a forked child (called by the guard): let go of the parent's connections
        without any I/O (see ``_pg.disown``).
        """
        _pg.disown([slot.conn for slot in self._slots if slot.conn is not None])

    # ------------------------------------------------------------ one operation

    async def _probe(self, operation: Awaitable[_T], limit: float) -> _T:
        """Await one operation on a connection (connect, reset, ping) for at most
        ``limit`` seconds, and give it up sooner, once it has run past the stall limit
        while borrowers wait. Raises :class:`TimeoutError` either way.
        """
        loop = self._loop
        assert loop is not None
        now = loop.time()
        stall = stall_limit(self._connect_estimate)
        async with asyncio.timeout_at(now + limit) as scope:
            if stall >= limit:
                return await operation
            watch = _StallWatch(self, scope, now + stall, stall, now + limit)
            try:
                return await operation
            finally:
                watch.cancel()

    async def _settle(
        self, slot: _Slot, operation: Awaitable[Any], limit: float, what: str
    ) -> bool:
        """Run one operation on ``slot``'s connection under :meth:`_probe` and settle the
        outcome: True (the slot is IN_USE, for the caller to go on), or False when it
        failed (the connection is discarded as lost). A cancellation discards the
        connection (its protocol state is unknown) and is re-raised.
        """
        try:
            await self._probe(operation, limit)
        except asyncio.CancelledError:
            self._table.move(slot, IN_USE)
            self._discard(slot, lost=False)
            raise
        except Exception as exc:
            logger.info(
                "asyncpool pool %r: %s failed (%r); replacing the connection", self.name, what, exc
            )
            self._table.move(slot, IN_USE)
            self._discard(slot, lost=True)
            return False
        self._table.move(slot, IN_USE)
        return True

    # ------------------------------------------------------------ before a lend

    async def _check(self, slot: _Slot, started: float, deadline: float) -> bool:
        """Ping a doubtful idle connection for a borrower (slot is CHECKING). True if usable."""
        now = self._clock()
        budget = min(self._config.ping_timeout, deadline - now)
        if budget <= 0:
            self._table.move(slot, IN_USE)
            self._hand_over(slot)
            raise self._timed_out(started, now)  # (no time left for a ping)
        self._counters.pings_total += 1
        if not await self._settle(slot, _pg.ping(slot.conn), budget, "the health check"):
            self._counters.pings_failed_total += 1
            return False
        now = slot.last_used = _now()
        if now >= slot.expires_at or slot.generation != self._generation:
            self._retire(slot, "max_lifetime or expire()")  # expired during the ping
            return False
        return True

    # ------------------------------------------------------------ after a lend

    async def _reset(self, slot: _Slot, rollback: bool, full: bool, budget: float) -> None:
        """Reset a returned connection (RETURNING), then hand it over."""
        reset = self._reset_session(slot.conn, rollback, full)
        if not await self._settle(slot, reset, budget, "the reset of a returned connection"):
            return
        self._counters.resets_total += 1
        if slot.conn.is_closed():
            # asyncpg completes a pending cancellation normally when the connection is
            # lost, so a reset can "succeed" on a dead connection: never lend it.
            self._discard(slot, lost=True)
        elif self._state == OPEN:
            self._hand_over(slot)
        else:
            self._retire(slot, "pool closing")

    async def _reset_session(self, conn: Any, rollback: bool, full: bool) -> None:
        mode = self._config.reset
        await _pg.reset_connection(conn, full=full, rollback=rollback)
        if callable(mode):
            _pg.forget_listeners(conn)
            await mode(conn)

    async def _keepalive(self, slot: _Slot) -> None:
        """Ping an idle connection in the background (slot is CHECKING)."""
        self._counters.pings_total += 1
        if not await self._settle(
            slot, _pg.ping(slot.conn), self._config.ping_timeout, "keepalive"
        ):
            self._counters.pings_failed_total += 1
            return
        slot.last_used = _now()
        self._hand_over(slot)

    def acquire(self, *, timeout: float | None = None) -> _AcquireContext:
        raise NotImplementedError  # (Pool provides it)

    async def _read_budget(self) -> None:
        """Read the server's connection facts for the adaptive limit's budget
        (``autosize=True``) on a pool connection, borrowed like any other: it waits its
        turn (the pool is busiest when the budget matters most). Advisory: a borrow or a
        query that fails leaves the budget as it was until the next reading.
        """
        from ._budget import read_server_facts

        try:
            async with self.acquire(timeout=self._config.acquire_timeout) as conn:
                facts = await read_server_facts(conn)
        except Exception:
            logger.debug("asyncpool pool %r: budget reading failed", self.name, exc_info=True)
            return
        if self._sizer is not None:
            self._sizer.take_facts(self._clock(), facts, self._table.open_count())

    async def _close_slot(self, slot: _Slot) -> None:
        try:
            await _pg.close_gracefully(slot.conn, min(self._config.ping_timeout, 2.0))
        finally:
            self._remove(slot)
            self._grow()

    # ------------------------------------------------------------ growth

    def _grow(self) -> None:
        """Start background connects for waiters and for ``min_size`` (sync)."""
        table = self._table
        if table.active >= self._max_size or self._state is not OPEN:
            return  # the common case under load: full, nothing to open
        cfg = self._config
        loop = self._loop
        assert loop is not None
        n = table.counts
        count = connects_to_start(
            active=table.active,
            connecting=n[CONNECTING],
            returning=n[RETURNING] + n[CHECKING],
            waiting=self._waiters.live,
            min_size=cfg.min_size,
            max_size=self._max_size,
            concurrency=cfg.connect_concurrency,
            down=self._down,
        )
        if count <= 0:
            return
        if loop.time() < self._next_connect_at:
            if self._retry_handle is None:
                self._retry_handle = loop.call_at(self._next_connect_at, self._retry)
            return
        for _ in range(count):
            self._spawn(self._connect(table.new(self._generation)), "asyncpool-connect")

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
        self._table.move(slot, IN_USE)
        if self._state == OPENING:
            self._table.make_idle(slot)
        elif self._state != OPEN or slot.generation != self._generation:
            self._retire(slot, "stale generation")
        else:
            self._hand_over(slot)
            self._grow()
            if self._idle_timer is None:
                self._schedule_idle_expiry()

    def _schedule_idle_expiry(self) -> None:
        raise NotImplementedError  # (PoolUpkeep provides it)

    async def _open_connection(self, opened: list[Any]) -> Any:
        cfg = self._config
        conn = await _pg.open_connection(cfg)
        opened.append(conn)
        if cfg.init is not None:
            await cfg.init(conn)
            if conn.is_closed():  # (as asyncpg's pool: an init may close to refuse it)
                raise ConnectionError("the init hook closed the new connection")
        return conn

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
        if kind is _pg.SERVER_FULL and self._sizer is not None:
            self._sizer.server_full(self._table.open_count())  # (applied at the next update)
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
            self._backoff = next_backoff(self._backoff, cfg.reconnect_initial_delay, cap)
            delay = self._backoff * random.uniform(0.5, 1.0)
            self._next_connect_at = loop.time() + delay
        what = "init hook failed on a new connection" if init_failed else "connect failed"
        definite = kind is not _pg.TIMED_OUT and not init_failed
        if self._state is OPENING:
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
        elif definite and self._table.open_count() == 0:
            if not self._down:
                logger.error(
                    "asyncpool pool %r: %s and no connection is open: %r; the database is "
                    "treated as down, retrying with backoff", self.name, what, exc,
                )  # fmt: skip
        else:
            logger.warning(
                "asyncpool pool %r: %s: %r (next attempt in %.2fs)", self.name, what, exc, delay
            )
        if definite and self._table.open_count() == 0:
            self._down = True
            self._failed_at = loop.time()
            if self._state is OPEN and self._waiters.live:
                self._counters.unavailable_total += self._waiters.live
                self._waiters.fail_all(self._unavailable_error())
        self._grow()

    # ------------------------------------------------------------ at open

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
        from ._budget import check_budget, read_server_facts

        try:
            if self._sizer is not None and cfg.pooler is None:
                # autosize keeps to a live share of the server: no max_size to check,
                # the budget is known from the start.
                facts = await read_server_facts(conn)
                self._sizer.take_facts(self._clock(), facts, self._table.open_count())
            else:
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
                    backend_pid = await own(conn, "fetchval")("SELECT pg_backend_pid()")
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


class _StallWatch:
    """One timer that gives up a background operation of the pool (see ``PoolWorkers._probe``)
    once it has run past the stall limit while borrowers wait: it moves the operation's
    timeout to now. While nobody waits it looks again every stall limit, until the
    operation's own time limit.
    """

    __slots__ = ("_handle", "_interval", "_limit_at", "_pool", "_scope")

    def __init__(
        self,
        pool: PoolWorkers,
        scope: asyncio.Timeout,
        first: float,
        interval: float,
        limit_at: float,
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
        if pool._waiters.live:
            self._scope.reschedule(now)  # the operation raises TimeoutError
        elif now + self._interval < self._limit_at:
            self._handle = loop.call_at(now + self._interval, self._look)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
