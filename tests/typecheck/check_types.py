"""What a user's ``mypy --strict`` sees of asyncpool (checked by mypy, never run).

Each ``assert_type`` pins a type; each ``# type: ignore[code]`` marks a line that must
be an error of that code: with ``warn_unused_ignores`` (part of ``--strict``) the check
fails when the error goes away, and a different error shows up as itself.
Run: ``mypy --strict tests/typecheck`` (tests/test_typing.py does).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, assert_type

import asyncpg
from asyncpg.cursor import CursorFactory
from asyncpg.prepared_stmt import PreparedStatement
from asyncpg.transaction import Transaction

import asyncpool
from asyncpool.contrib.starlette import PoolState, pool_lifespan


class MyRecord(asyncpg.Record):
    pass


async def connection_methods(pool: asyncpool.Pool) -> None:
    async with pool.acquire() as conn:
        assert_type(conn, asyncpool.PooledConnection)
        assert_type(await conn.fetch("SELECT 1"), list[asyncpg.Record])
        assert_type(await conn.fetch("SELECT $1", 1, record_class=MyRecord), list[MyRecord])
        assert_type(await conn.fetchrow("SELECT 1"), asyncpg.Record | None)
        assert_type(await conn.fetchrow("SELECT 1", record_class=MyRecord), MyRecord | None)
        assert_type(await conn.fetchval("SELECT 1"), Any)
        assert_type(await conn.execute("SELECT 1"), str)
        assert_type(await conn.executemany("SELECT $1", [(1,)]), None)
        assert_type(await conn.fetchmany("SELECT $1", [(1,)]), list[asyncpg.Record])
        assert_type(await conn.prepare("SELECT 1"), PreparedStatement[asyncpg.Record])
        assert_type(conn.cursor("SELECT 1"), CursorFactory[asyncpg.Record])
        assert_type(conn.transaction(), Transaction)
        assert_type(conn.raw_connection, asyncpg.Connection)
        assert_type(conn.is_in_transaction(), bool)
        assert_type(conn.get_server_pid(), int)
        async with conn.transaction(isolation="serializable"):
            pass
        conn.transaction(isolation="serialisable")  # type: ignore[arg-type]
        await conn.fecth("SELECT 1")  # type: ignore[attr-defined]
        await conn.fetch(1)  # type: ignore[call-overload]
        row = await conn.fetchrow("SELECT 1")
        row["x"]  # type: ignore[index]
    held = await pool.acquire()
    assert_type(held, asyncpool.PooledConnection)
    await pool.release(held)


async def pool_shortcuts(pool: asyncpool.Pool) -> None:
    assert_type(await pool.fetch("SELECT 1"), list[asyncpg.Record])
    assert_type(await pool.fetchrow("SELECT 1"), asyncpg.Record | None)
    assert_type(await pool.execute("SELECT 1"), str)
    assert_type(pool.stats(), asyncpool.PoolStats)


async def create_pool_settings() -> None:
    pool = asyncpool.create_pool(
        "postgresql://localhost/app",
        min_size=1,
        max_size=10,
        reset="full",
        pooler="pgbouncer-transaction",
        budget_check="refuse",
        user="app",
        server_settings={"application_name": "app"},
    )
    assert_type(pool, asyncpool.Pool)
    asyncpool.create_pool(max_sise=10)  # type: ignore[call-arg]
    asyncpool.create_pool(reset="always")  # type: ignore[arg-type]
    asyncpool.create_pool(pooler="pgbouncer")  # type: ignore[arg-type]
    asyncpool.create_pool(budget_check="strict")  # type: ignore[arg-type]
    asyncpool.create_pool(max_size="10")  # type: ignore[arg-type]
    async with asyncpool.create_pool() as opened:
        assert_type(opened, asyncpool.Pool)


def lifespan_state() -> None:
    assert_type(
        pool_lifespan("postgresql://localhost/app", max_size=4),
        Callable[[Any], AbstractAsyncContextManager[PoolState]],
    )
    assert_type(
        pool_lifespan(state_key="db"),
        Callable[[Any], AbstractAsyncContextManager[dict[str, asyncpool.Pool]]],
    )
