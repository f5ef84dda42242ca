"""The pools and baselines under test, behind one small interface.

Each :class:`System` is started for one measurement cell on the running event loop
(so every cell gets a fresh pool on a fresh loop) and offers the four workload
operations. Peers are configured as their users get them, except pool size and an
acquire timeout large enough for 10,000 waiters:

* ``asyncpool``: defaults, only ``min_size``/``max_size`` set.
* ``asyncpg``: ``asyncpg.create_pool`` defaults (its reset query runs on every release).
* ``asyncpg-noreset``: the same with ``reset=`` a no-op coroutine (asyncpg still rolls
  back an open transaction, which costs nothing when none is open).
* ``psycopg``: ``psycopg_pool.AsyncConnectionPool`` with ``autocommit=True`` so it sends
  the same statements as the others (its default would add BEGIN/COMMIT round trips).
* ``sqlalchemy``: ``create_async_engine("postgresql+asyncpg://...", pool_size=N,
  max_overflow=0)``, used through ``engine.connect()`` / ``engine.begin()``.
* ``pinned``: N raw asyncpg connections handed out by a minimal FIFO with no features:
  the ceiling any pool of N can reach.
* ``lock``: one shared connection guarded by an ``asyncio.Lock``.
* ``per-request``: a new asyncpg connection per operation (at most
  :data:`PER_REQUEST_MAX_OPEN` open at once, to stay under the server's limit).
"""

from __future__ import annotations

import abc
import asyncio
import collections
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

import asyncpg

__all__ = (
    "PER_REQUEST_MAX_OPEN",
    "SYSTEMS",
    "PinnedPool",
    "System",
    "available_systems",
)

#: Cap on simultaneously open connections for the ``per-request`` baseline (the
#: server's default ``max_connections``; beyond it a real server refuses clients).
PER_REQUEST_MAX_OPEN = 100
#: Acquire timeout given to peers (seconds): large enough that 10,000 waiters never fail.
PEER_ACQUIRE_TIMEOUT = 600.0

SELECT_ONE = "SELECT 1"
SLEEP = "SELECT pg_sleep(0.002)"
TX_READ = "SELECT balance FROM bench_accounts WHERE id = $1"
TX_ADD = "UPDATE bench_accounts SET balance = balance + 1 WHERE id = $1"
TX_SUB = "UPDATE bench_accounts SET balance = balance - 1 WHERE id = $1"


def _psycopg(sql: str) -> str:
    return sql.replace("$1", "%s")


def _sqlalchemy(sql: str) -> str:
    return sql.replace("$1", ":id")


class System(abc.ABC):
    """One pool or baseline, started on the running loop for one cell."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: Python packages it needs beyond asyncpg (for availability checks).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        self.dsn = dsn
        self.size = size
        self.concurrency = concurrency
        self._opened = 0

    async def _connect(self) -> Any:
        """Open one raw asyncpg connection, counted in :meth:`connections_opened`."""
        conn = await asyncpg.connect(self.dsn)
        self._opened += 1
        return conn

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the pool (and its initial connections)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close the pool and every connection it opened."""

    def connections_opened(self) -> int:
        """Server connections opened since :meth:`start` began."""
        return self._opened

    def extra_stats(self) -> dict[str, Any]:
        """System-specific facts worth recording (e.g. asyncpool's own stats)."""
        return {}

    @abc.abstractmethod
    async def acquire_release(self) -> None:
        """Borrow a connection and give it back, no query."""

    @abc.abstractmethod
    async def select_one(self) -> None:
        """``SELECT 1`` on a borrowed connection."""

    @abc.abstractmethod
    async def server_sleep(self) -> None:
        """``SELECT pg_sleep(0.002)`` on a borrowed connection."""

    @abc.abstractmethod
    async def transaction(self, a: int, b: int) -> None:
        """A short read-write transaction on accounts ``a < b``."""


# ----------------------------------------------------------------- asyncpg family


class _AsyncpgFamily(System):
    """Systems that lend asyncpg connections through ``async with self.acquire()``."""

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        # What the workloads call per operation. Systems built on a pool point it at the
        # pool's own acquire once started, so they are called as directly as psycopg's
        # and SQLAlchemy's pools are (no extra wrapper call in the measurement).
        self._borrow: Callable[[], Any] = self.acquire

    @abc.abstractmethod
    def acquire(self) -> Any:
        """An async context manager yielding an asyncpg-like connection."""

    async def acquire_release(self) -> None:
        async with self._borrow():
            pass

    async def select_one(self) -> None:
        async with self._borrow() as conn:
            await conn.fetchval(SELECT_ONE)

    async def server_sleep(self) -> None:
        async with self._borrow() as conn:
            await conn.fetchval(SLEEP)

    async def transaction(self, a: int, b: int) -> None:
        async with self._borrow() as conn, conn.transaction():
            await conn.fetchval(TX_READ, a)
            await conn.execute(TX_ADD, a)
            await conn.execute(TX_SUB, b)
            await conn.fetchval(TX_READ, b)


class AsyncpoolSystem(_AsyncpgFamily):
    name = "asyncpool"
    description = "asyncpool.create_pool, defaults (min_size = max_size = N)"

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._pool: Any = None

    async def start(self) -> None:
        import asyncpool

        self._pool = await asyncpool.create_pool(self.dsn, min_size=self.size, max_size=self.size)
        self._borrow = self._pool.acquire

    async def stop(self) -> None:
        await self._pool.close()

    def connections_opened(self) -> int:
        return int(self._pool.stats().connections_opened_total)

    def extra_stats(self) -> dict[str, Any]:
        s = self._pool.stats()
        return {
            "acquired_total": s.acquired_total,
            "timeouts_total": s.timeouts_total,
            "resets_total": s.resets_total,
            "resets_skipped_total": s.resets_skipped_total,
            "pings_total": s.pings_total,
            "wait_time_max_s": s.wait_time.max,
            "wait_time_mean_s": s.wait_time.mean,
        }

    def acquire(self) -> Any:
        return self._pool.acquire()


class AsyncpgSystem(_AsyncpgFamily):
    name = "asyncpg"
    description = "asyncpg.create_pool, defaults (reset query on every release)"
    reset_noop: ClassVar[bool] = False

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._pool: Any = None

    async def _counting_connect(self, *args: Any, **kwargs: Any) -> Any:
        conn = await asyncpg.connect(*args, **kwargs)
        self._opened += 1
        return conn

    async def start(self) -> None:
        kwargs: dict[str, Any] = {
            "min_size": self.size,
            "max_size": self.size,
            "connect": self._counting_connect,
        }
        if self.reset_noop:
            kwargs["reset"] = _no_reset
        self._pool = await asyncpg.create_pool(self.dsn, **kwargs)
        self._borrow = self._pool.acquire

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 20)
        except TimeoutError:
            # asyncpg's close() waits forever for connections it thinks are in use.
            self._pool.terminate()
            raise

    def acquire(self) -> Any:
        return self._pool.acquire()


async def _no_reset(conn: Any) -> None:
    """asyncpg ``reset=`` hook that does nothing (asyncpg still rolls back open transactions)."""


class AsyncpgNoResetSystem(AsyncpgSystem):
    name = "asyncpg-noreset"
    description = "asyncpg.create_pool with reset= a no-op coroutine"
    reset_noop = True


class PinnedPool:
    """N connections and a strict FIFO of waiters; nothing else (no timeout, no checks)."""

    __slots__ = ("_idle", "_loop", "_waiters")

    def __init__(self, conns: list[Any]) -> None:
        self._idle: collections.deque[Any] = collections.deque(conns)
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._loop = asyncio.get_running_loop()

    async def get(self) -> Any:
        if self._idle and not self._waiters:
            return self._idle.pop()
        fut = self._loop.create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.put(fut.result())
            raise

    def put(self, conn: Any) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def acquire(self) -> _PinnedLease:
        return _PinnedLease(self)


class _PinnedLease:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: PinnedPool) -> None:
        self._pool = pool
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = await self._pool.get()
        return self._conn

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.put(self._conn)


class PinnedSystem(_AsyncpgFamily):
    name = "pinned"
    description = "N raw asyncpg connections, minimal FIFO hand-off (the ceiling)"

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._conns: list[Any] = []
        self._fifo: PinnedPool | None = None

    async def start(self) -> None:
        self._conns = list(await asyncio.gather(*(self._connect() for _ in range(self.size))))
        self._fifo = PinnedPool(self._conns)
        self._borrow = self._fifo.acquire

    async def stop(self) -> None:
        await asyncio.gather(*(c.close(timeout=5) for c in self._conns), return_exceptions=True)

    def acquire(self) -> Any:
        assert self._fifo is not None
        return self._fifo.acquire()


class _LockLease:
    __slots__ = ("_system",)

    def __init__(self, system: LockSystem) -> None:
        self._system = system

    async def __aenter__(self) -> Any:
        await self._system._lock.acquire()
        return self._system._conn

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._system._lock.release()


class LockSystem(_AsyncpgFamily):
    name = "lock"
    description = "one shared asyncpg connection behind an asyncio.Lock"

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._lock = asyncio.Lock()
        self._conn: Any = None

    async def start(self) -> None:
        self._conn = await self._connect()

    async def stop(self) -> None:
        await self._conn.close(timeout=5)

    def acquire(self) -> Any:
        return _LockLease(self)


class _PerRequestLease:
    __slots__ = ("_conn", "_system")

    def __init__(self, system: PerRequestSystem) -> None:
        self._system = system
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        await self._system._gate.acquire()
        try:
            self._conn = await self._system._connect()
        except BaseException:
            self._system._gate.release()
            raise
        return self._conn

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._conn.close(timeout=5)
        finally:
            self._system._gate.release()


class PerRequestSystem(_AsyncpgFamily):
    name = "per-request"
    description = f"asyncpg.connect per operation (at most {PER_REQUEST_MAX_OPEN} open at once)"

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._gate = asyncio.Semaphore(PER_REQUEST_MAX_OPEN)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def acquire(self) -> Any:
        return _PerRequestLease(self)


# ------------------------------------------------------------------------ psycopg


class PsycopgSystem(System):
    name = "psycopg"
    description = "psycopg_pool.AsyncConnectionPool, autocommit=True"
    requires = ("psycopg", "psycopg_pool")

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._pool: Any = None

    async def start(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(
            self.dsn,
            min_size=self.size,
            max_size=self.size,
            open=False,
            timeout=PEER_ACQUIRE_TIMEOUT,
            kwargs={"autocommit": True},
        )
        await self._pool.open(wait=True, timeout=60)

    async def stop(self) -> None:
        await self._pool.close(timeout=30)

    def connections_opened(self) -> int:
        return int(self._pool.get_stats().get("connections_num", 0))

    async def acquire_release(self) -> None:
        async with self._pool.connection():
            pass

    async def select_one(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(SELECT_ONE)
            await cur.fetchone()

    async def server_sleep(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(SLEEP)
            await cur.fetchone()

    async def transaction(self, a: int, b: int) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await (await conn.execute(_psycopg(TX_READ), (a,))).fetchone()
            await conn.execute(_psycopg(TX_ADD), (a,))
            await conn.execute(_psycopg(TX_SUB), (b,))
            await (await conn.execute(_psycopg(TX_READ), (b,))).fetchone()


# --------------------------------------------------------------------- SQLAlchemy


class SqlalchemySystem(System):
    name = "sqlalchemy"
    description = "SQLAlchemy async engine, asyncpg driver, pool_size=N, max_overflow=0"
    requires = ("sqlalchemy", "greenlet")
    #: The engine's ``pool_timeout`` (SQLAlchemy has no per-checkout timeout).
    pool_timeout: ClassVar[float] = PEER_ACQUIRE_TIMEOUT

    def __init__(self, dsn: str, size: int, concurrency: int) -> None:
        super().__init__(dsn, size, concurrency)
        self._engine: Any = None
        self._sql: dict[str, Any] = {}

    async def start(self) -> None:
        from sqlalchemy import event, text
        from sqlalchemy.ext.asyncio import create_async_engine

        url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        self._engine = create_async_engine(
            url,
            pool_size=self.size,
            max_overflow=0,
            pool_timeout=self.pool_timeout,
        )

        def on_connect(dbapi_conn: Any, record: Any) -> None:
            self._opened += 1

        event.listen(self._engine.sync_engine, "connect", on_connect)
        self._sql = {
            "one": text(SELECT_ONE),
            "sleep": text(SLEEP),
            "read": text(_sqlalchemy(TX_READ)),
            "add": text(_sqlalchemy(TX_ADD)),
            "sub": text(_sqlalchemy(TX_SUB)),
        }
        # Open the pool's connections up front, like the other pools' min_size.
        conns = [await self._engine.connect() for _ in range(self.size)]
        for conn in conns:
            await conn.close()

    async def stop(self) -> None:
        await self._engine.dispose()

    async def acquire_release(self) -> None:
        async with self._engine.connect():
            pass

    async def select_one(self) -> None:
        async with self._engine.connect() as conn:
            (await conn.execute(self._sql["one"])).scalar()

    async def server_sleep(self) -> None:
        async with self._engine.connect() as conn:
            (await conn.execute(self._sql["sleep"])).scalar()

    async def transaction(self, a: int, b: int) -> None:
        sql = self._sql
        async with self._engine.begin() as conn:
            (await conn.execute(sql["read"], {"id": a})).scalar()
            await conn.execute(sql["add"], {"id": a})
            await conn.execute(sql["sub"], {"id": b})
            (await conn.execute(sql["read"], {"id": b})).scalar()


SYSTEMS: dict[str, type[System]] = {
    cls.name: cls
    for cls in (
        AsyncpoolSystem,
        AsyncpgSystem,
        AsyncpgNoResetSystem,
        PsycopgSystem,
        SqlalchemySystem,
        PinnedSystem,
        LockSystem,
        PerRequestSystem,
    )
}


def available_systems() -> dict[str, str | None]:
    """Map each system's name to None if usable, else why not (a missing package)."""
    import importlib.util

    result: dict[str, str | None] = {}
    for name, cls in SYSTEMS.items():
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        result[name] = f"missing package(s): {', '.join(missing)}" if missing else None
    return result
