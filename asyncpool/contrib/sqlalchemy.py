"""SQLAlchemy's asyncio engine drawing its connections from an asyncpool pool.

SQLAlchemy's asyncpg dialect accepts ``async_creator``: an async callable returning
an asyncpg connection. With ``poolclass=NullPool`` SQLAlchemy keeps no pool of its own:
it calls the creator when a session needs a connection and ``close()`` when done. This
adapter makes that ``close()`` a release back to asyncpool, so the pool's limits,
deadlines, health checks, reset and statistics apply to the ORM too::

    from asyncpool.contrib.sqlalchemy import engine_for

    pool = await asyncpool.create_pool(dsn, max_size=10)
    engine = engine_for(pool)   # create_async_engine(..., async_creator=AsyncpoolCreator(pool),
                                #                     poolclass=NullPool)

What the dialect needs from the object the creator returns (SQLAlchemy 2.x): asyncpg's
``prepare``, ``transaction``, ``fetchrow``, ``executemany``, ``cursor``,
``set_type_codec``, ``reload_schema_state``, ``is_closed``, ``close(timeout=...)`` and
``terminate()``. A :class:`~asyncpool.PooledConnection` has all of them; the adapter
changes two:

* ``close()`` returns the connection to the pool (SQLAlchemy has already rolled back);
  when SQLAlchemy invalidates a connection it also ends up here, and the pool checks,
  resets or replaces it as for any returned connection.
* ``terminate()`` aborts the server connection and hands the slot back; the pool
  replaces the connection.

SQLAlchemy installs json/jsonb codecs on every connection it is given (``on_connect``);
they stay on the asyncpg connection. The adapter installs them once per server
connection instead of at every checkout (each install drops asyncpg's statement cache).
Give SQLAlchemy its own pool: other borrowers of a shared pool would get json values
decoded by SQLAlchemy's codec.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import asyncpool

__all__ = ("AsyncpoolCreator", "SQLAlchemyConnection", "engine_for")

_CodecMemo = weakref.WeakKeyDictionary[Any, set[tuple[str, str, str]]]


class SQLAlchemyConnection:
    """What :class:`AsyncpoolCreator` gives SQLAlchemy: a pooled connection whose
    ``close()`` is a release. Everything else is the pooled connection's.
    """

    __slots__ = ("_codecs", "_conn", "_pool")

    def __init__(
        self, pool: asyncpool.Pool, conn: asyncpool.PooledConnection, codecs: _CodecMemo | None
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._codecs = codecs

    async def close(self, *, timeout: float | None = None) -> None:
        """Return the connection to the pool (SQLAlchemy's "close"); idempotent."""
        if not self._conn.is_released:
            await self._pool.release(self._conn, timeout=timeout)

    def terminate(self) -> None:
        """Abort the server connection and give the slot back (the pool replaces it)."""
        conn = self._conn
        if conn.is_released:
            return
        conn.raw_connection.terminate()
        try:
            self._pool.release_nowait(conn)
        except asyncpool.PoolUsageError:
            pass  # called outside the pool's loop (garbage collection): the pool reclaims it

    def is_closed(self) -> bool:
        """True once released, or when the server connection is closed."""
        return self._conn.is_released or self._conn.is_closed()

    async def set_type_codec(
        self, typename: str, *, schema: str = "public", format: str = "text", **kwargs: Any
    ) -> None:
        """Install a codec, once per server connection (SQLAlchemy asks at each checkout)."""
        key = (typename, schema, format)
        done = None
        if self._codecs is not None:
            done = self._codecs.setdefault(self._conn.raw_connection, set())
            if key in done:
                return
        await self._conn.set_type_codec(typename, schema=schema, format=format, **kwargs)
        if done is not None:
            done.add(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class AsyncpoolCreator:
    """An ``async_creator`` for ``create_async_engine`` that borrows from ``pool``.

    ``timeout`` is each borrow's deadline (default: the pool's ``acquire_timeout``).
    Use it with ``poolclass=NullPool``, so that SQLAlchemy keeps no connection itself.
    """

    def __init__(
        self,
        pool: asyncpool.Pool,
        *,
        timeout: float | None = None,
        install_codecs_once: bool = True,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self._codecs: _CodecMemo | None = (
            weakref.WeakKeyDictionary() if install_codecs_once else None
        )

    async def __call__(self) -> SQLAlchemyConnection:
        """Borrow a connection for SQLAlchemy."""
        conn = await self.pool.acquire(timeout=self.timeout)
        return SQLAlchemyConnection(self.pool, conn, self._codecs)


def engine_for(pool: asyncpool.Pool, **engine_kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` whose every connection comes from ``pool``."""
    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=AsyncpoolCreator(pool),
        poolclass=NullPool,
        **engine_kwargs,
    )
