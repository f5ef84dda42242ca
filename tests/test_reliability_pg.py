"""Faults on a real PostgreSQL that asyncpool must survive: an open() that must not
hang, a half-open network that heals, dead connections noticed at once, and fork().
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg
import pytest

import asyncpool
from asyncpool.testing import PostgresInstance, TcpProxy
from asyncpool.testing._pgbouncer import PgBouncer, find_pgbouncer
from tests.fakes import check_invariants

# ------------------------------------------------------------------ open() bound


async def test_open_with_min_size_0_does_not_wait_for_a_blackholed_server(
    postgres_dsn: str,
) -> None:
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        proxy.blackhole()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pool = await asyncpool.create_pool(proxy.dsn, min_size=0, connect_timeout=2)
        try:
            assert loop.time() - t0 < 0.5  # before the fix: connect_timeout (10 s default)
        finally:
            await pool.close(timeout=1)
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await asyncpool.create_pool(proxy.dsn, min_size=1, connect_timeout=1)
        assert loop.time() - t0 < 1.5


@pytest.mark.skipif(find_pgbouncer() is None, reason="pgbouncer binary not found")
async def test_open_behind_a_saturated_session_pgbouncer_is_bounded(
    postgres_server: PostgresInstance,
) -> None:
    """PgBouncer accepts the login but queues every query while its one server
    connection is taken: open() must still end within connect_timeout, and must not
    keep the connection whose query is stuck in PgBouncer's queue.
    """
    host, port = postgres_server.host, postgres_server.port
    assert host is not None and port is not None
    user = urlsplit(postgres_server.dsn).username or "postgres"
    with PgBouncer(host, port, pool_mode="session", users=(user,), default_pool_size=1) as bouncer:
        holder = await asyncpg.connect(bouncer.dsn)
        try:
            await holder.execute("SELECT 1")  # session mode: its server connection is held
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            pool = await asyncpool.create_pool(bouncer.dsn, min_size=1, connect_timeout=2)
            try:
                assert loop.time() - t0 < 2.5  # before the fix: PgBouncer's query_wait_timeout
                assert pool.stats().idle == 0  # the stuck connection was not kept
                check_invariants(pool)
            finally:
                await pool.close(timeout=1)
        finally:
            await holder.close()


# ------------------------------------------------------- a half-open network heals


async def test_half_open_network_heals_within_two_seconds(postgres_dsn: str) -> None:
    """Pool of 4, default settings, traffic with 1 s deadlines. The network drops every
    packet for 8.5 s (sockets stay open and dead), then new connections work again. The
    pool serves again within 2 s of the heal; no borrower fails before its deadline.
    """
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        pool = await asyncpool.create_pool(proxy.dsn, min_size=4, max_size=4)
        loop = asyncio.get_running_loop()
        early: list[tuple[float, BaseException]] = []
        served: list[float] = []
        stop = False

        async def borrower() -> None:
            while not stop:
                started = loop.time()
                try:
                    async with asyncio.timeout(1.0):
                        async with pool.acquire(timeout=1.0) as conn:
                            await conn.fetchval("SELECT 1")
                    served.append(loop.time())
                except TimeoutError:
                    pass  # the borrower's own deadline: fine
                except Exception as exc:
                    if loop.time() - started < 0.95:
                        early.append((loop.time() - started, exc))
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(borrower()) for _ in range(8)]
        try:
            await asyncio.sleep(0.5)
            assert served
            proxy.blackhole()
            await asyncio.sleep(8.5)  # (off the 1 s grid of the borrowers' deadlines)
            proxy.heal()
            healed = loop.time()
            while loop.time() - healed < 6 and not [t for t in served if t > healed]:
                await asyncio.sleep(0.02)
            recovered = min((t for t in served if t > healed), default=float("inf")) - healed
            await asyncio.sleep(0.5)
        finally:
            stop = True
            await asyncio.gather(*tasks)
        try:
            print(f"served again {recovered:.3f}s after the heal")
            assert recovered < 2.0, f"served again {recovered:.2f}s after the heal"
            assert not early, early[:3]
            check_invariants(pool)
        finally:
            await pool.close(timeout=1)


async def test_a_slow_connect_keeps_borrowers_waiting_to_their_deadline(
    postgres_dsn: str,
) -> None:
    """Connects that time out do not fail the queued borrowers (their deadlines are
    later): before the fix they got DatabaseUnavailable when the connect timed out."""
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        pool = await asyncpool.create_pool(proxy.dsn, min_size=0, max_size=2, connect_timeout=0.5)
        try:
            proxy.blackhole()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(asyncpool.PoolTimeout):
                await pool.acquire(timeout=1.5)
            assert loop.time() - t0 == pytest.approx(1.5, abs=0.2)
            proxy.heal()
            async with pool.acquire(timeout=3) as conn:
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await pool.close(timeout=1)
