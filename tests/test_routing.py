"""RoutingPool: writes to the primary, reads to replicas, fallback when replicas are down.

One primary + streaming replica pair serves the whole module; tests that stop the
replica start it again.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Iterator

import asyncpg
import pytest

import asyncpool
from asyncpool.routing import RoutingPool, RoutingStats
from asyncpool.testing import find_pg_bin
from asyncpool.testing._replica import ReplicatedPostgres

_BIN = find_pg_bin()
pytestmark = pytest.mark.skipif(
    _BIN is None or not (_BIN / "pg_basebackup").exists() or shutil.which("sh") is None,
    reason="needs local PostgreSQL server binaries with pg_basebackup",
)


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicatedPostgres]:
    cluster = ReplicatedPostgres()
    cluster.start()
    try:
        cluster.primary.execute_sync("CREATE TABLE routed (x int)")
        cluster.wait_replayed()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def replica_running(pair: ReplicatedPostgres) -> Iterator[ReplicatedPostgres]:
    """The pair, with the replica started again after the test if it left it down."""
    if not pair.replica.is_running:
        pair.replica.start()
    try:
        yield pair
    finally:
        if not pair.replica.is_running:
            pair.replica.start()


def router(pair: ReplicatedPostgres, *replicas: str, **kwargs: object) -> RoutingPool:
    kwargs.setdefault("min_size", 1)
    kwargs.setdefault("max_size", 3)
    kwargs.setdefault("acquire_timeout", 5)
    kwargs.setdefault("reconnect_max_delay", 0.2)
    kwargs.setdefault("replica_retry_interval", 0.2)
    return RoutingPool(pair.primary.dsn, list(replicas or (pair.replica.dsn,)), **kwargs)


async def in_recovery(conn: asyncpool.PooledConnection) -> bool:
    return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))


async def test_writes_go_to_primary_and_reads_to_the_replica(
    replica_running: ReplicatedPostgres,
) -> None:
    pair = replica_running
    async with router(pair, name="app") as db:
        async with db.acquire() as conn:
            assert not await in_recovery(conn)
            await conn.execute("INSERT INTO routed VALUES (1)")
        await asyncio.to_thread(pair.wait_replayed)
        async with db.acquire(readonly=True) as conn:
            assert await in_recovery(conn)
            assert await conn.fetchval("SELECT count(*) FROM routed WHERE x = 1") >= 1
        stats = db.stats()
        assert isinstance(stats, RoutingStats)
        assert (stats.writes_total, stats.reads_on_replicas_total) == (1, 1)
        assert stats.reads_on_primary_total == 0
        assert stats.replica_up == (True,)
        assert stats.primary.name == "app-primary"
        assert stats.replicas[0].name == "app-replica0"
        assert stats.replicas[0].acquired_total == 1
        assert "replicas=[+]" in repr(db)


async def test_awaited_acquire_and_release(replica_running: ReplicatedPostgres) -> None:
    async with router(replica_running) as db:
        conn = await db.acquire(readonly=True)
        assert await in_recovery(conn)
        await db.release(conn)
        assert conn.is_released
        with pytest.raises(asyncpool.PoolUsageError):
            await db.release(conn)
        async with db.acquire() as conn:
            assert not await in_recovery(conn)


async def test_reads_round_robin_over_replicas(replica_running: ReplicatedPostgres) -> None:
    dsn = replica_running.replica.dsn
    async with router(replica_running, dsn, dsn) as db:
        for _ in range(6):
            async with db.acquire(readonly=True) as conn:
                assert await in_recovery(conn)
        assert [s.acquired_total for s in db.stats().replicas] == [3, 3]


async def test_reads_fall_back_to_primary_while_replica_is_down_and_return(
    replica_running: ReplicatedPostgres,
) -> None:
    """Replica stopped: reads go to the primary at once (no waiting out the deadline);
    replica started again: reads return to it within about replica_retry_interval.
    """
    pair = replica_running
    loop = asyncio.get_running_loop()
    async with router(pair) as db:
        async with db.acquire(readonly=True) as conn:
            assert await in_recovery(conn)
        await asyncio.to_thread(pair.replica.stop)
        started = loop.time()
        for _ in range(3):
            async with db.acquire(readonly=True, timeout=3) as conn:
                assert not await in_recovery(conn)  # the primary
        assert loop.time() - started < 2
        assert db.stats().replica_up == (False,)
        assert db.stats().reads_on_primary_total == 3
        assert db.stats().replica_failures_total >= 1

        await asyncio.to_thread(pair.replica.start)
        started = loop.time()
        while True:
            async with db.acquire(readonly=True) as conn:
                if await in_recovery(conn):
                    break
            assert loop.time() - started < 10, "reads never returned to the replica"
            await asyncio.sleep(0.05)
        assert db.stats().replica_up == (True,)


async def test_no_fallback_raises_database_unavailable(
    replica_running: ReplicatedPostgres,
) -> None:
    pair = replica_running
    async with router(pair, fallback_to_primary=False) as db:
        await asyncio.to_thread(pair.replica.stop)
        error: asyncpool.DatabaseUnavailable | None = None
        for _ in range(3):  # the first read may still meet the connection being closed
            try:
                async with db.acquire(readonly=True, timeout=3) as conn:
                    await conn.fetchval("SELECT 1")
            except asyncpool.DatabaseUnavailable as exc:
                error = exc
                break
            except (
                asyncpg.exceptions.PostgresConnectionError,
                asyncpg.exceptions.InterfaceError,
                ConnectionError,
            ):
                continue
        assert error is not None
        assert "no replica is up" in str(error)
        assert db.stats().reads_on_primary_total == 0
        async with db.acquire() as conn:  # writes are unaffected
            assert not await in_recovery(conn)


async def test_replica_down_at_open_does_not_fail_open(
    replica_running: ReplicatedPostgres,
) -> None:
    """A replica that cannot be reached at open: open succeeds, reads go to the primary,
    and once the replica is up its pool (reconnecting in the background) takes reads.
    """
    pair = replica_running
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/postgres"
    await asyncio.to_thread(pair.replica.stop)
    loop = asyncio.get_running_loop()
    async with router(pair, dead, pair.replica.dsn, connect_timeout=2) as db:
        assert db.stats().replica_up == (False, False)
        async with db.acquire(readonly=True) as conn:
            assert not await in_recovery(conn)
        await asyncio.to_thread(pair.replica.start)
        started = loop.time()
        while True:
            async with db.acquire(readonly=True) as conn:
                if await in_recovery(conn):
                    break
            assert loop.time() - started < 10, "reads never reached the recovered replica"
            await asyncio.sleep(0.05)
        # The recovered replica keeps min_size connections again.
        assert db.replicas[1].stats().size >= 1
        assert db.replicas[0].stats().connections_opened_total == 0  # the dead one


async def test_one_deadline_covers_the_whole_read(replica_running: ReplicatedPostgres) -> None:
    """A busy replica makes a reader wait (no spill-over), but not past its deadline."""
    loop = asyncio.get_running_loop()
    async with router(replica_running, max_size=1) as db:
        async with db.acquire(readonly=True) as held:
            assert await in_recovery(held)
            started = loop.time()
            with pytest.raises(asyncpool.PoolTimeout):
                async with db.acquire(readonly=True, timeout=0.3):
                    pass
            assert 0.25 <= loop.time() - started < 1.5


async def test_close_is_idempotent_and_stops_lending(replica_running: ReplicatedPostgres) -> None:
    db = router(replica_running, role_check_interval=0.1)
    await db.open()
    await asyncio.sleep(0.25)  # let the role watchers run a check or two
    assert db.stats().replica_up == (True,)
    await db.close()
    await db.close()
    assert db.primary.closed and all(p.closed for p in db.replicas)
    with pytest.raises(asyncpool.PoolClosed):
        async with db.acquire(readonly=True):
            pass


def test_rejects_bad_settings(pair: ReplicatedPostgres) -> None:
    with pytest.raises(ValueError, match="replica_retry_interval"):
        RoutingPool(pair.primary.dsn, [], replica_retry_interval=-1)
