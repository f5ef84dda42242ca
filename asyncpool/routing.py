"""Read/write routing over a primary and its replicas, and a role watcher.

:class:`RoutingPool` keeps one :class:`~asyncpool.Pool` for the primary and one per
replica behind a single object. ``acquire()`` lends a primary connection;
``acquire(readonly=True)`` lends a replica connection, round-robin over the
replicas that are up, and falls back to the primary when none is:

* A replica is *down* when its pool fails fast with
  :class:`~asyncpool.DatabaseUnavailable` (no connection open and the last
  connect failed). It is then skipped for ``replica_retry_interval`` seconds, after
  which one read tries it again; its pool keeps reconnecting in the background
  meanwhile, so a recovered replica is used again within about that interval.
* A replica that was promoted (it is no longer in recovery, so it no longer
  follows the primary) is skipped too, when role checks are on
  (``role_check_interval``).
* One deadline covers the whole borrow, replicas and fallback together. A
  replica that is up but busy makes the reader wait (up to the deadline) rather
  than spill over to the primary.
* ``readonly=True`` is a routing hint, not a guard: on fallback the reader holds
  a primary connection, on which writes succeed. Use
  ``conn.transaction(readonly=True)`` where a write must fail.
* A replica connection that broke since it was last used is still lent once
  (the pool pings only connections idle longer than ``ping_after_idle``); the
  query fails, the pool replaces the connection, and the next read is routed
  anew. Reads that must not fail retry once.

Both a promoted replica and a primary fenced read-only keep their connections, so
no pool health check notices them. :class:`RoleWatcher` checks, every ``interval``
seconds, whether a pool's server still has the role it should (in recovery or
read-only, or neither), and calls
:meth:`Pool.expire <asyncpool.Pool.expire>` when it has not. With a multi-host DSN
and ``target_session_attrs=read-write`` that moves the pool to the new primary
after a failover in which the old primary stays reachable (as a standby, or
fenced with ``default_transaction_read_only``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import Any, Literal

from ._connection import PooledConnection
from ._errors import DatabaseUnavailable, PoolUsageError
from ._pool import Pool
from ._stats import PoolStats

__all__ = ("Role", "RoleWatcher", "RoutingPool", "RoutingStats")

logger = logging.getLogger("asyncpool.routing")

Role = Literal["primary", "standby"]
"""The role a :class:`RoleWatcher` expects of a server."""

# A server is a "primary" when it accepts writes: not in recovery and not read-only
# by default (the test asyncpg applies for target_session_attrs=read-write).
_ROLE_SQL = (
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "pg_catalog.current_setting('default_transaction_read_only') = 'on'"
)


class RoleWatcher:
    """Periodically check a pool's server role; react when it changed.

    Every ``interval`` seconds it borrows a connection (deadline ``timeout``) and asks
    the server ``pg_is_in_recovery()`` and ``default_transaction_read_only``: a server
    that accepts writes is a ``"primary"``, any other a ``"standby"`` (the test
    asyncpg applies for ``target_session_attrs=read-write``). When that does not match
    ``expect``, it calls ``on_mismatch()`` (default: ``pool.expire()``, so that every
    connection is replaced and a multi-host DSN picks the right server again) and
    logs a warning; when it matches, ``on_match()`` if given. Failed checks (the server
    is down, the pool is busy) are ignored: the pool's own health checks deal with those.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        expect: Role = "primary",
        interval: float = 5.0,
        timeout: float = 2.0,
        on_mismatch: Callable[[], None] | None = None,
        on_match: Callable[[], None] | None = None,
    ) -> None:
        """Configure a watcher (it starts with :meth:`start`)."""
        if expect not in ("primary", "standby"):
            raise ValueError(f"expect must be 'primary' or 'standby', got {expect!r}")
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be > 0 seconds")
        self._pool = pool
        self._expect: Role = expect
        self._interval = interval
        self._timeout = timeout
        self._on_mismatch = on_mismatch if on_mismatch is not None else pool.expire
        self._on_match = on_match
        self._task: asyncio.Task[None] | None = None
        self.checks_total = 0
        self.mismatches_total = 0
        self.last_role: Role | None = None

    @property
    def running(self) -> bool:
        """True while the watcher's task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start checking in a background task on the running loop (idempotent)."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"asyncpool-role-watcher-{self._pool.name}"
        )

    async def stop(self) -> None:
        """Stop checking and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def check_now(self) -> Role | None:
        """Check once now; return the role seen (``None`` if the check failed)."""
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                row = await conn.fetchrow(_ROLE_SQL, timeout=self._timeout)
                assert row is not None  # the query always returns one row
                in_recovery, read_only = row[0], row[1]
        except Exception as exc:  # pool errors, asyncpg's errors, OSError, timeouts
            logger.debug("asyncpool pool %r: role check failed: %r", self._pool.name, exc)
            return None
        role: Role = "standby" if in_recovery or read_only else "primary"
        self.checks_total += 1
        self.last_role = role
        if role != self._expect:
            self.mismatches_total += 1
            logger.warning(
                "asyncpool pool %r: its server is now a %s, expected a %s; %s",
                self._pool.name,
                role,
                self._expect,
                "expiring its connections"
                if self._on_mismatch == self._pool.expire
                else "reacting",
            )
            self._on_mismatch()
        elif self._on_match is not None:
            self._on_match()
        return role

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._pool.closed:
                return
            await self.check_now()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<RoleWatcher {self._pool.name!r} expect={self._expect} last={self.last_role} "
            f"mismatches={self.mismatches_total} {state}>"
        )


@dataclasses.dataclass(frozen=True)
class RoutingStats:
    """A snapshot of a :class:`RoutingPool`: each pool's stats and the routing counters."""

    primary: PoolStats
    replicas: tuple[PoolStats, ...]
    replica_up: tuple[bool, ...]
    writes_total: int
    reads_on_replicas_total: int
    reads_on_primary_total: int
    replica_failures_total: int


class RoutingPool:
    """A primary pool and replica pools behind one object (read/write routing).

    ``acquire()`` lends a primary connection, ``acquire(readonly=True)`` a replica
    connection when a replica is up, else a primary one (see the module docs for the
    health rules). Every other keyword (``min_size``, ``max_size``, ``acquire_timeout``
    ...) goes to each :class:`~asyncpool.Pool`; ``replica_kwargs`` override them for
    the replica pools.

    Example::

        async with RoutingPool(primary_dsn, [replica_dsn], max_size=10) as db:
            async with db.acquire() as conn:
                await conn.execute("INSERT ...")
            async with db.acquire(readonly=True) as conn:
                rows = await conn.fetch("SELECT ...")
    """

    def __init__(
        self,
        primary_dsn: str | None,
        replica_dsns: Sequence[str] = (),
        *,
        name: str = "asyncpool",
        replica_retry_interval: float = 5.0,
        fallback_to_primary: bool = True,
        role_check_interval: float | None = None,
        replica_kwargs: dict[str, Any] | None = None,
        **pool_kwargs: Any,
    ) -> None:
        """Configure the pools (opened by :meth:`open` or ``async with``).

        Args:
            primary_dsn: the primary's DSN (may list several hosts with
                ``target_session_attrs=read-write`` for failover).
            replica_dsns: one DSN per replica.
            name: prefix of the pools' names (``<name>-primary``, ``<name>-replica<i>``).
            replica_retry_interval: seconds a replica that failed stays skipped.
            fallback_to_primary: route reads to the primary when no replica is up;
                if False, such reads raise :class:`~asyncpool.DatabaseUnavailable`.
            role_check_interval: if set, run :class:`RoleWatcher` checks this often:
                the primary pool is expired when its server turns standby, and a
                replica that stopped being a standby is skipped.
            replica_kwargs: settings for the replica pools only.
            **pool_kwargs: settings for every pool (see :func:`asyncpool.create_pool`).
        """
        if replica_retry_interval < 0:
            raise ValueError(f"replica_retry_interval must be >= 0, got {replica_retry_interval!r}")
        self._name = name
        self._pool_kwargs = pool_kwargs
        self._replica_kwargs = {**pool_kwargs, **(replica_kwargs or {})}
        self._retry_interval = replica_retry_interval
        self._fallback = fallback_to_primary
        self._role_check_interval = role_check_interval
        self.primary = Pool(primary_dsn, name=f"{name}-primary", **pool_kwargs)
        self._replica_dsns = tuple(replica_dsns)
        self._replicas: list[Pool] = [
            Pool(dsn, name=f"{name}-replica{i}", **self._replica_kwargs)
            for i, dsn in enumerate(self._replica_dsns)
        ]
        self._skip_until = [0.0] * len(self._replicas)
        self._wrong_role = [False] * len(self._replicas)
        self._next = 0
        self._owners: weakref.WeakKeyDictionary[PooledConnection, Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._watchers: list[RoleWatcher] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0
        self._reads_replica = 0
        self._reads_primary = 0
        self._replica_failures = 0

    # ------------------------------------------------------------------ facts

    @property
    def name(self) -> str:
        """The name prefix of the pools."""
        return self._name

    @property
    def replicas(self) -> tuple[Pool, ...]:
        """The replica pools, in the order of ``replica_dsns``."""
        return tuple(self._replicas)

    def replica_up(self, index: int) -> bool:
        """Whether reads are currently routed to replica ``index``."""
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        return now >= self._skip_until[index] and not self._wrong_role[index]

    def stats(self) -> RoutingStats:
        """A frozen snapshot of every pool's stats and the routing counters."""
        return RoutingStats(
            primary=self.primary.stats(),
            replicas=tuple(pool.stats() for pool in self._replicas),
            replica_up=tuple(self.replica_up(i) for i in range(len(self._replicas))),
            writes_total=self._writes,
            reads_on_replicas_total=self._reads_replica,
            reads_on_primary_total=self._reads_primary,
            replica_failures_total=self._replica_failures,
        )

    def __repr__(self) -> str:
        ups = "".join("+" if self.replica_up(i) else "-" for i in range(len(self._replicas)))
        return f"<RoutingPool {self._name!r} primary={self.primary!r} replicas=[{ups}]>"

    # ------------------------------------------------------------ open / close

    async def open(self) -> None:
        """Open the primary pool (its errors propagate) and the replica pools.

        A replica that cannot be reached now does not fail :meth:`open`: it is
        marked down, and its pool keeps trying to connect in the background.
        """
        self._loop = asyncio.get_running_loop()
        await self.primary.open()
        try:
            for i in range(len(self._replicas)):
                await self._open_replica(i)
        except BaseException:
            await self.close()
            raise
        if self._role_check_interval is not None:
            self._start_watchers(self._role_check_interval)

    async def _open_replica(self, index: int) -> None:
        pool = self._replicas[index]
        try:
            await pool.open()
            return
        except Exception as exc:  # asyncpg's connect errors, OSError, timeouts
            logger.warning(
                "asyncpool pool %r: replica unreachable at open (%r); reads go to "
                "the primary until it is back",
                pool.name,
                exc,
            )
        self._mark_failed(index)
        # The failed pool is closed; a pool opens once, so its replacement opens without
        # waiting and keeps its connections coming in the background.
        replacement = Pool(self._replica_dsns[index], **{**self._replica_kwargs, "name": pool.name})
        await replacement.open(wait=False)
        self._replicas[index] = replacement

    def _start_watchers(self, interval: float) -> None:
        self._watchers.append(RoleWatcher(self.primary, expect="primary", interval=interval))
        for i, pool in enumerate(self._replicas):
            self._watchers.append(
                RoleWatcher(
                    pool,
                    expect="standby",
                    interval=interval,
                    on_mismatch=functools.partial(self._set_wrong_role, i, True),
                    on_match=functools.partial(self._set_wrong_role, i, False),
                )
            )
        for watcher in self._watchers:
            watcher.start()

    def _set_wrong_role(self, index: int, wrong: bool) -> None:
        if wrong and not self._wrong_role[index]:
            logger.warning(
                "asyncpool pool %r: replica is no longer a standby; reads skip it",
                self._replicas[index].name,
            )
        self._wrong_role[index] = wrong

    async def close(self, timeout: float | None = None) -> None:
        """Close every pool (see :meth:`Pool.close`), in parallel; safe to call twice."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            await watcher.stop()
        await asyncio.gather(
            self.primary.close(timeout), *(pool.close(timeout) for pool in self._replicas)
        )

    async def __aenter__(self) -> RoutingPool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ borrowing

    def acquire(self, *, readonly: bool = False, timeout: float | None = None) -> _RoutingAcquire:
        """Borrow a connection: ``async with db.acquire(readonly=True) as conn:`` or ``await``.

        ``readonly=False`` borrows from the primary; ``readonly=True`` from a replica
        that is up, else (``fallback_to_primary``) from the primary. ``timeout`` is
        one deadline for the whole borrow (default: the primary's ``acquire_timeout``).
        Raises what :meth:`Pool.acquire` raises.
        """
        return _RoutingAcquire(self, readonly, timeout)

    async def release(self, connection: PooledConnection) -> None:
        """Give back a connection obtained with ``await db.acquire(...)``."""
        pool = self._owners.pop(connection, None)
        if pool is None:
            raise PoolUsageError(
                f"this connection was not lent by RoutingPool {self._name!r} (or was already "
                "released)"
            )
        await pool.release(connection)

    async def _borrow(self, readonly: bool, timeout: float | None) -> tuple[PooledConnection, Pool]:
        if not readonly or not self._replicas:
            if readonly:
                self._reads_primary += 1
            else:
                self._writes += 1
            return await self.primary.acquire(timeout=timeout), self.primary
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = self.primary.config.acquire_timeout
        deadline = loop.time() + timeout
        n = len(self._replicas)
        start = self._next
        last_error: DatabaseUnavailable | None = None
        for k in range(n):
            i = (start + k) % n
            if self._wrong_role[i] or loop.time() < self._skip_until[i]:
                continue
            self._next = (i + 1) % n
            pool = self._replicas[i]
            try:
                conn = await pool.acquire(timeout=max(deadline - loop.time(), 0.0))
            except DatabaseUnavailable as exc:
                self._mark_failed(i)
                last_error = exc
                continue
            self._reads_replica += 1
            return conn, pool
        if not self._fallback:
            raise DatabaseUnavailable(
                f"RoutingPool {self._name!r}: no replica is up for a read and "
                "fallback_to_primary=False",
                last_error,
            ) from last_error
        self._reads_primary += 1
        conn = await self.primary.acquire(timeout=max(deadline - loop.time(), 0.0))
        return conn, self.primary

    def _mark_failed(self, index: int) -> None:
        self._replica_failures += 1
        loop = self._loop or asyncio.get_running_loop()
        if loop.time() >= self._skip_until[index]:
            logger.warning(
                "asyncpool pool %r: replica is down; reads go elsewhere for %.1fs",
                self._replicas[index].name,
                self._retry_interval,
            )
        self._skip_until[index] = loop.time() + self._retry_interval

    async def _acquire_tracked(self, readonly: bool, timeout: float | None) -> PooledConnection:
        conn, pool = await self._borrow(readonly, timeout)
        self._owners[conn] = pool
        return conn


class _RoutingAcquire:
    """What :meth:`RoutingPool.acquire` returns: awaitable, and an async context manager."""

    __slots__ = ("_conn", "_pool", "_readonly", "_router", "_timeout")

    def __init__(self, router: RoutingPool, readonly: bool, timeout: float | None) -> None:
        self._router = router
        self._readonly = readonly
        self._timeout = timeout
        self._conn: PooledConnection | None = None
        self._pool: Pool | None = None

    def __await__(self) -> Generator[Any, None, PooledConnection]:
        return self._router._acquire_tracked(self._readonly, self._timeout).__await__()

    async def __aenter__(self) -> PooledConnection:
        self._conn, self._pool = await self._router._borrow(self._readonly, self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, pool = self._conn, self._pool
        self._conn = self._pool = None
        if conn is not None and pool is not None and not conn.is_released:
            await pool.release(conn)
