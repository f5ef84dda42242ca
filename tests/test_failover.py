"""Failover: a multi-host DSN with target_session_attrs, a promoted streaming replica.

Each test builds its own primary + replica (``asyncpool.testing._replica``), since
failing over consumes the pair.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import asyncpg
import pytest

import asyncpool
from asyncpool.routing import RoleWatcher
from asyncpool.testing import find_pg_bin
from asyncpool.testing._replica import ReplicatedPostgres

_BIN = find_pg_bin()
pytestmark = pytest.mark.skipif(
    _BIN is None or not (_BIN / "pg_basebackup").exists() or shutil.which("sh") is None,
    reason="needs local PostgreSQL server binaries with pg_basebackup",
)

# What a borrower may see while there is no primary: the pool's own errors, or
# asyncpg's when the server goes away under a query.
OUTAGE = (
    asyncpool.DatabaseUnavailable,
    asyncpool.PoolTimeout,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
)


@pytest.fixture
def cluster() -> Iterator[ReplicatedPostgres]:
    pair = ReplicatedPostgres()
    pair.start()
    try:
        yield pair
    finally:
        pair.close()


async def test_pool_follows_failover_to_promoted_replica(cluster: ReplicatedPostgres) -> None:
    """Writes work; the primary stops (a query in flight fails at once); borrowers during
    the outage fail within their deadline; after the replica is promoted, writes succeed
    again through the same pool, now on the replica's port.
    """
    loop = asyncio.get_running_loop()
    p, r = cluster.primary, cluster.replica
    dsn = cluster.multi_host_dsn("read-write")
    assert dsn == (
        f"postgresql://postgres@127.0.0.1:{p.port},127.0.0.1:{r.port}/postgres"
        "?target_session_attrs=read-write"
    )
    async with asyncpool.create_pool(
        dsn,
        min_size=2,
        max_size=4,
        acquire_timeout=5,
        connect_timeout=2,
        reconnect_max_delay=0.2,
    ) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text)")
            await conn.execute("INSERT INTO events (note) VALUES ('before')")
            assert int(await conn.fetchval("SHOW port")) == cluster.primary.port
        cluster.wait_replayed()

        async def long_query() -> BaseException | None:
            try:
                async with pool.acquire() as conn:
                    await conn.execute("SELECT pg_sleep(60)")
            except OUTAGE as exc:
                return exc
            return None

        in_flight = asyncio.create_task(long_query())
        await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.primary.stop)
        cut_off = await asyncio.wait_for(in_flight, 10)
        assert isinstance(cut_off, OUTAGE)

        durations: list[float] = []

        async def write(note: str, timeout: float = 1.0) -> bool:
            started = loop.time()
            try:
                async with pool.acquire(timeout=timeout) as conn:
                    await conn.execute(
                        "INSERT INTO events (note) VALUES ($1)", note, timeout=timeout
                    )
                return True
            except OUTAGE:
                return False
            finally:
                durations.append(loop.time() - started)

        assert not await write("no primary")
        assert not await write("still none")

        promoted_at = loop.time()
        promotion = asyncio.create_task(asyncio.to_thread(cluster.promote))
        while not await write("after"):
            assert loop.time() - promoted_at < 20, "writes did not come back after promotion"
            await asyncio.sleep(0.05)
        await promotion
        recovered_after = loop.time() - promoted_at
        # Nobody waited past the deadline (1 s acquire + 1 s statement, plus slack).
        assert max(durations) < 2.5

        async with pool.acquire() as conn:
            assert int(await conn.fetchval("SHOW port")) == cluster.replica.port
            notes = {r["note"] for r in await conn.fetch("SELECT note FROM events")}
        assert {"before", "after"} <= notes
        assert recovered_after < 20
        stats = pool.stats()
        assert stats.connect_errors_total >= 1
        assert stats.unavailable_total >= 1


async def test_role_watcher_moves_pool_off_a_fenced_primary(cluster: ReplicatedPostgres) -> None:
    """The old primary stays up but read-only (fenced) and the replica is promoted.
    The pool's connections are healthy, so without help it keeps writing to the old
    primary and failing; RoleWatcher notices and expires them, and new connections
    (target_session_attrs=read-write) go to the new primary.
    """
    loop = asyncio.get_running_loop()
    async with asyncpool.create_pool(
        cluster.multi_host_dsn("read-write"),
        min_size=2,
        max_size=2,
        acquire_timeout=3,
        reconnect_max_delay=0.2,
    ) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE fenced (x int)")
        cluster.wait_replayed()
        cluster.primary.execute_sync("ALTER SYSTEM SET default_transaction_read_only = on")
        cluster.primary.execute_sync("SELECT pg_reload_conf()")
        await asyncio.to_thread(cluster.promote)

        # Without the watcher the pool stays on the fenced primary.
        await asyncio.sleep(0.3)
        for _ in range(2):
            async with pool.acquire() as conn:
                with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                    await conn.execute("INSERT INTO fenced VALUES (1)")

        watcher = RoleWatcher(pool, expect="primary", interval=0.1, timeout=1)
        watcher.start()
        try:
            started = loop.time()
            while True:
                assert loop.time() - started < 15, f"pool never left the old primary: {watcher}"
                try:
                    async with pool.acquire(timeout=1) as conn:
                        await conn.execute("INSERT INTO fenced VALUES (2)")
                        port = int(await conn.fetchval("SHOW port"))
                    break
                except (asyncpg.exceptions.ReadOnlySQLTransactionError, *OUTAGE):
                    await asyncio.sleep(0.05)
        finally:
            await watcher.stop()
        assert port == cluster.replica.port
        assert watcher.mismatches_total >= 1
        assert not watcher.running
        assert "expect=primary" in repr(watcher)
