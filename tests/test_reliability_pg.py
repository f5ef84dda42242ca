"""Faults on a real PostgreSQL that asyncpool must survive: an open() that must not
hang, a half-open network that heals, dead connections noticed at once, and fork().
"""

from __future__ import annotations

import asyncio
import select
import sys
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


# ------------------------------------------------------------------ fork()

FORK_SCRIPT = r"""
import asyncio, gc, os, sys
import asyncpg, asyncpool

DSN, HOW, LOOP, APP = sys.argv[1:5]


async def setup():
    pool = await asyncpool.create_pool(
        DSN, min_size=3, max_size=3, server_settings={"application_name": APP}
    )
    held = await pool.acquire()
    await held.execute("BEGIN")
    await held.execute("CREATE TEMP TABLE fork_t (x int)")
    await held.execute("INSERT INTO fork_t VALUES (1)")
    return pool, held, {s.conn.get_server_pid() for s in pool._slots}


async def check(pool, held, pids, child):
    for _ in range(500):
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        await asyncio.sleep(0.01)
    else:
        print("child hung")
        return 1
    # The parent: its open transaction survived, and so did every session.
    async with asyncio.timeout(3):
        await held.execute("INSERT INTO fork_t VALUES (2)")
        assert await held.fetchval("SELECT count(*) FROM fork_t") == 2
        await held.execute("COMMIT")
        await pool.release(held)
        conns = [await pool.acquire() for _ in range(3)]
        seen = {await c.fetchval("SELECT pg_backend_pid()") for c in conns}
        for c in conns:
            await pool.release(c)
    admin = await asyncpg.connect(DSN)
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", APP)
    stats = pool.stats()
    print(f"served={len(seen)} same_sessions={seen == pids} "
          f"server_sessions={len(rows)} lost={stats.connections_lost_total}")
    await pool.close()
    await admin.close()
    return 0 if seen == pids and {r["pid"] for r in rows} == pids else 1


if LOOP == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
pool, held, pids = loop.run_until_complete(setup())
# Like a pre-fork server (gunicorn): fork outside the loop, which the child never closes.
child = os.fork()
if child == 0:
    if HOW == "terminate":
        pool.terminate()
    if HOW == "gc":
        del pool, held
        gc.collect()
        os._exit(0)
    sys.exit(0)  # a normal exit: finalizers run at interpreter shutdown, loop still open
sys.exit(loop.run_until_complete(check(pool, held, pids, child)))
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("how", ["exit", "terminate", "gc"])
async def test_a_forked_child_that_exits_leaves_the_parents_sessions_alone(
    postgres_dsn: str, how: str, loop: str
) -> None:
    """A real fork(); the child exits normally (finalizers and the loop's close run),
    calls terminate() then exits, or garbage-collects the pool. Before the fix the
    parent served 0 or 1 of 3 borrows (asyncio) or had all 3 sessions killed (uvloop)."""
    app = f"fork-{how}-{loop}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "ignore",
        "-c",
        FORK_SCRIPT,
        postgres_dsn,
        how,
        loop,
        app,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "served=3 same_sessions=True server_sessions=3 lost=0" in text, text


# ------------------------------------------- dead connections are noticed at once


async def test_an_idle_connection_closed_by_the_server_leaves_the_pool_at_once(
    postgres_dsn: str,
) -> None:
    """No maintenance pass needed (its interval is a minute here): asyncpg's report of
    the loss removes the idle connection, and the pool opens another for min_size."""
    admin = await asyncpg.connect(postgres_dsn)
    pool = await asyncpool.create_pool(
        postgres_dsn, min_size=2, max_size=2, maintenance_interval=60
    )
    try:
        victim = next(iter(pool._idle)).conn.get_server_pid()
        lost_before = pool.stats().connections_lost_total
        await admin.execute("SELECT pg_terminate_backend($1)", victim)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while pool.stats().connections_lost_total == lost_before and loop.time() - t0 < 2:
            await asyncio.sleep(0.005)
        noticed = loop.time() - t0
        assert noticed < 0.5, noticed  # before the fix: the next maintenance pass
        pids = {s.conn.get_server_pid() for s in pool._slots if s.conn is not None}
        assert victim not in pids
        for _ in range(100):
            if pool.stats().idle == 2:
                break
            await asyncio.sleep(0.01)
        assert pool.get_size() == 2 and pool.stats().idle == 2
        check_invariants(pool)
    finally:
        await pool.close()
        await admin.close()


async def test_a_connection_the_server_is_ending_is_never_lent(postgres_dsn: str) -> None:
    """The server has sent its FATAL (and end of file) to an idle connection, and the
    event loop has not read it yet: the borrower must still get a working connection.
    The test waits for the bytes without yielding to the loop, then borrows in the same
    step, so the interleaving is forced, not hoped for."""
    admin = await asyncpg.connect(postgres_dsn)
    pool = await asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1)
    try:
        (slot,) = pool._idle
        victim = slot.conn.get_server_pid()
        sock = slot.conn._transport.get_extra_info("socket")
        await asyncio.sleep(0.01)  # idle for a moment, as after any real traffic
        await admin.execute("SELECT pg_terminate_backend($1)", victim)
        readable, _, _ = select.select([sock.fileno()], [], [], 5)  # no await: loop waits
        assert readable
        assert not slot.conn.is_closed()  # asyncpg has not seen it yet
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != victim
        assert pool.stats().connections_lost_total == 1
        check_invariants(pool)
    finally:
        await pool.close()
        await admin.close()
