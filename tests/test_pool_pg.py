"""The core pool on a real PostgreSQL: lending, FIFO, deadlines, reset guarantees,
broken connections, and the no-round-trip release."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

import asyncpool
from tests.conftest import settle
from tests.fakes import check_invariants


async def settled(pool: asyncpool.Pool, timeout: float = 5.0) -> asyncpool.PoolStats:
    """Wait (bounded) until background resets and closes have finished."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        stats = pool.stats()
        if stats.returning == stats.closing == stats.connecting == stats.checking == 0:
            return stats
        if loop.time() > end:
            raise AssertionError(f"pool did not settle: {pool!r}")
        await asyncio.sleep(0.01)


async def backends(dsn: str, app: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
            )
        )
    finally:
        await conn.close()


def app_name() -> str:
    return f"asyncpool-test-{uuid.uuid4().hex[:8]}"


async def test_create_pool_both_styles(postgres_dsn: str) -> None:
    pool = await asyncpool.create_pool(postgres_dsn, min_size=2, max_size=3)
    try:
        assert pool.stats().idle == 2
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        conn = await pool.acquire(timeout=5)
        rows = await conn.fetch("SELECT generate_series(1, 3) AS n")
        assert [r["n"] for r in rows] == [1, 2, 3]
        await pool.release(conn)
    finally:
        await pool.close()
    async with asyncpool.create_pool(postgres_dsn, min_size=1) as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchrow("SELECT 1 AS a") == (1,)
    assert pool.closed


async def test_pool_constructor_then_open(postgres_dsn: str) -> None:
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=2)
    assert pool.stats().size == 0
    await pool.open()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await pool.close()


async def test_min_size_opened_at_start_and_growth_to_max(postgres_dsn: str) -> None:
    app = app_name()
    async with asyncpool.create_pool(
        postgres_dsn, min_size=2, max_size=4, server_settings={"application_name": app}
    ) as pool:
        assert await backends(postgres_dsn, app) == 2

        async def hold() -> None:
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_sleep(0.2)")

        await asyncio.gather(*(hold() for _ in range(6)))
        stats = await settled(pool)
        assert stats.size == 4 and stats.connections_opened_total == 4
        assert await backends(postgres_dsn, app) == 4
        check_invariants(pool)


async def test_fifo_on_real_server(postgres_dsn: str) -> None:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        holder = await pool.acquire()
        order: list[int] = []

        async def borrower(i: int) -> None:
            async with pool.acquire() as conn:
                order.append(i)
                await conn.execute("SELECT 1")

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(borrower(i)))
            await settle()
        await pool.release(holder)
        await asyncio.gather(*tasks)
        assert order == list(range(8))


async def test_acquire_deadline_is_honoured(postgres_dsn: str) -> None:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire():
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(asyncpool.PoolTimeout):
                await pool.acquire(timeout=0.2)
            assert 0.18 <= loop.time() - started < 1.0
        stats = pool.stats()
        assert stats.timeouts_total == 1 and stats.waiting == 0 and stats.idle == 1


async def test_connection_api_passthrough(postgres_dsn: str) -> None:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE t (a int, b text)")
            await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, "x"), (2, "y")])
            assert await conn.fetchval("SELECT count(*) FROM t", timeout=5) == 2
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (3, 'z')")
                assert conn.is_in_transaction()
            assert not conn.is_in_transaction()
            await conn.copy_records_to_table("t", records=[(4, "w")])
            rows = await conn.fetchmany("SELECT $1::int", [(1,), (2,)])
            assert [r[0] for r in rows] == [1, 2]
            stmt = await conn.prepare("SELECT b FROM t WHERE a = $1")
            assert await stmt.fetchval(4) == "w"
            assert conn.get_server_pid() > 0
            assert conn.get_server_version().major >= 12
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table")


# ------------------------------------------------------------- reset guarantees


async def _same_conn_pool(dsn: str, **kwargs: Any) -> asyncpool.Pool:
    return await asyncpool.create_pool(dsn, min_size=1, max_size=1, **kwargs)


async def test_next_borrower_gets_a_clean_session(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute("SET work_mem = '77MB'")
            await conn.execute("SET application_name = 'dirty'")
            await conn.fetchval("SELECT pg_advisory_lock(4242)")
            await conn.execute("CREATE TEMP TABLE leftover (a int)")
            await conn.execute("BEGIN")
            await conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
            await conn.execute("COMMIT")
            await conn.add_listener("chan", lambda *a: None)
        await settled(pool)
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid  # the same server session...
            assert await conn.fetchval("SHOW work_mem") != "77MB"  # ...but clean
            assert await conn.fetchval("SHOW application_name") != "dirty"
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid()"
                )
                == 0
            )
            assert await conn.fetchval("SELECT to_regclass('pg_temp.leftover')") is None
            assert await conn.fetchval("SELECT count(*) FROM pg_cursors WHERE name = 'held'") == 0
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            assert not conn.raw_connection._listeners
        assert pool.stats().resets_total == 1
    finally:
        await pool.close()


async def test_open_or_failed_transaction_is_rolled_back(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS reset_probe (a int)")
            await conn.execute("TRUNCATE reset_probe")
        tr_conn = await pool.acquire()
        tr = tr_conn.transaction()
        await tr.start()
        await tr_conn.execute("INSERT INTO reset_probe VALUES (1)")
        await pool.release(tr_conn)  # left open: must be rolled back
        await settled(pool)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM reset_probe") == 0
            async with conn.transaction():  # a real transaction, not a savepoint
                await conn.execute("INSERT INTO reset_probe VALUES (2)")
            await conn.execute("BEGIN")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.execute("SELECT 1/0")
        await settled(pool)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM reset_probe") == 1
            await conn.execute("DROP TABLE reset_probe")
    finally:
        await pool.close()


async def test_prepared_statements_survive_full_reset(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn, reset="full")
    try:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
            await settled(pool)
        assert pool.stats().resets_total == 3
    finally:
        await pool.close()


async def test_release_of_ordinary_borrower_costs_no_round_trip(postgres_dsn: str) -> None:
    """Count statements on the protocol and transactions on the server."""
    pool = await _same_conn_pool(postgres_dsn)
    observer = await asyncpg.connect(postgres_dsn)
    try:
        async with pool.acquire() as conn:
            raw = conn.raw_connection
            pid = conn.get_server_pid()
        before_proto = raw._protocol.queries_count
        await observer.execute("SELECT pg_stat_force_next_flush()")
        n = 200
        for _ in range(n):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        # The pooled backend flushes its statistics on its next transaction.
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
        assert raw._protocol.queries_count - before_proto == n + 1
        stats = pool.stats()
        assert stats.resets_total == 0
        assert stats.resets_skipped_total >= n
        # Versus reset="full", which spends a round trip on every release:
        full = await _same_conn_pool(postgres_dsn, reset="full")
        try:
            async with full.acquire() as conn:
                raw2 = conn.raw_connection
            await settled(full)
            start = raw2._protocol.queries_count
            for _ in range(10):
                async with full.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                await settled(full)
            assert raw2._protocol.queries_count - start == 20
        finally:
            await full.close()
        assert pid > 0
    finally:
        await observer.close()
        await pool.close()


# ---------------------------------------------------------- broken connections


async def test_terminated_backend_is_discarded_on_release(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    killer = await asyncpg.connect(postgres_dsn)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
            # asyncpg reports the server's goodbye as a connection error, or, when the
            # goodbye is still being read, as an InternalClientError.
            with pytest.raises(
                (
                    asyncpg.PostgresConnectionError,
                    asyncpg.InterfaceError,
                    asyncpg.exceptions.InternalClientError,
                    ConnectionError,
                )
            ):
                await conn.fetchval("SELECT pg_sleep(0.05)")
            await asyncio.sleep(0.05)
        stats = pool.stats()
        assert stats.connections_lost_total == 1
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 1") == 1
            assert conn.get_server_pid() != pid
        check_invariants(pool)
    finally:
        await killer.close()
        await pool.close()


async def test_cancelled_query_does_not_poison_next_borrower(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    try:

        async def slow() -> None:
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_sleep(5)")

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 7") == 7
        check_invariants(pool)
    finally:
        await pool.close()


async def test_anyio_cancel_scope_never_leaks(postgres_dsn: str) -> None:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        for timeout in (0.0, 0.001, 0.01, 0.05):
            with anyio.move_on_after(timeout):
                async with pool.acquire() as conn:
                    await conn.execute("SELECT pg_sleep(0.1)")
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with pool.acquire() as conn:
                    await anyio.sleep(1)
        stats = await settled(pool)
        assert stats.in_use == 0 and stats.waiting == 0
        async with pool.acquire() as a, pool.acquire() as b:
            assert await a.fetchval("SELECT 1") == await b.fetchval("SELECT 1") == 1
        check_invariants(pool)


async def test_close_waits_for_borrowers_then_terminates(postgres_dsn: str) -> None:
    app = app_name()
    pool = await asyncpool.create_pool(
        postgres_dsn, min_size=2, max_size=2, server_settings={"application_name": app}
    )
    conn = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.close(timeout=0.3)
    assert 0.25 < loop.time() - started < 3
    assert pool.stats().size == 0
    assert conn.raw_connection.is_closed()
    for _ in range(100):
        if await backends(postgres_dsn, app) == 0:
            break
        await asyncio.sleep(0.02)
    assert await backends(postgres_dsn, app) == 0


async def test_prepare_leaves_no_locks_on_an_idle_connection(postgres_dsn: str) -> None:
    """asyncpg's prepare sends no Sync; the release must end the server's implicit
    transaction so the idle connection holds no locks."""
    pool = await _same_conn_pool(postgres_dsn)
    observer = await asyncpg.connect(postgres_dsn)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS prep_probe (a int)")
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.prepare("SELECT * FROM prep_probe")
        await settled(pool)
        locks = await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND relation = 'prep_probe'::regclass",
            pid,
        )
        assert locks == 0
        await observer.execute("SET lock_timeout = '1s'")
        await observer.execute("ALTER TABLE prep_probe ADD COLUMN IF NOT EXISTS b int")
        await observer.execute("DROP TABLE prep_probe")
    finally:
        await observer.close()
        await pool.close()


async def test_callbacks_registered_by_a_borrower_are_removed(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    seen: list[Any] = []
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(seen.append)
            conn.add_termination_listener(lambda c: seen.append("terminated"))
            await conn.fetchval("SELECT 1")
        await settle()  # asyncpg calls query loggers soon after the query
        assert len(seen) == 1
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 2")
            await settle()
            assert not conn.raw_connection._query_loggers
            # Only the pool's own listener is left (it removes a closed idle connection).
            (own,) = conn.raw_connection._termination_listeners
            assert own.cb.func.__self__ is pool
        assert len(seen) == 1
    finally:
        await pool.close()
    assert "terminated" not in seen


async def test_cancelled_borrow_is_reset(postgres_dsn: str) -> None:
    pool = await _same_conn_pool(postgres_dsn)
    try:

        async def borrower() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                await asyncio.sleep(10)

        task = asyncio.create_task(borrower())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await settled(pool)
        assert stats.resets_total == 1 and stats.idle == 1
    finally:
        await pool.close()


async def test_query_methods_pass_on_the_keywords_given(postgres_dsn: str) -> None:
    """The wrapper leaves defaults out of its calls (cheaper, and kind to narrower
    connection_class signatures) but passes on every keyword a caller gives."""

    class Row(asyncpg.Record):  # type: ignore[misc]
        pass

    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1, 2", column=1) == 2
            assert await conn.fetchval("SELECT $1::int, $2::int", 3, 4, column=1) == 4
            assert type(await conn.fetchrow("SELECT 1 AS a", record_class=Row)) is Row
            rows = await conn.fetch("SELECT $1::int AS a", 5, record_class=Row, timeout=5)
            assert [type(r) for r in rows] == [Row] and rows[0]["a"] == 5
            with pytest.raises(TimeoutError):
                await conn.execute("SELECT pg_sleep(2)", timeout=0.05)
            with pytest.raises(TimeoutError):
                await conn.fetch("SELECT pg_sleep(2)", timeout=0.05)
            async with conn.transaction(readonly=True):
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute("CREATE TABLE asyncpool_ro_probe (i int)")
            async with conn.transaction(isolation="serializable"):
                assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
            assert await conn.execute("SELECT $1::int", 1) == "SELECT 1"


async def test_expire_during_a_reset_replaces_that_connection_real(postgres_dsn: str) -> None:
    """expire() while a returned connection is still being reset: that server session
    is closed and the next borrower gets a new one (with a clean work_mem)."""
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            old_pid = conn.get_server_pid()
            await conn.execute("SET work_mem = '8MB'")  # the release needs a full reset
        assert pool.stats().returning == 1
        pool.expire()
        async with pool.acquire(timeout=10) as conn:
            assert conn.get_server_pid() != old_pid
            assert await conn.fetchval("SHOW work_mem") != "8MB"
        check_invariants(pool)


async def test_async_with_in_a_collected_coroutine_releases_and_resets(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine suspended inside `async with pool.acquire()` and garbage-collected
    releases its connection through the block's exit (no finalizer on the wrapper):
    the session it changed is reset, the same server connection serves the next
    borrower, and no leak is reported."""
    import gc

    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pids: list[int] = []

        async def borrower(gate: asyncio.Future[None]) -> None:
            async with pool.acquire() as conn:
                await conn.execute("SET work_mem = '9MB'")
                pids.append(conn.get_server_pid())
                await gate  # forever: only this task and the test hold the gate

        task = asyncio.ensure_future(borrower(gate))
        for _ in range(500):
            if pids:
                break
            await asyncio.sleep(0.01)
        assert pids and pool.stats().in_use == 1
        # Drop the task and its gate without cancelling anything: the task is garbage,
        # and collecting it closes its coroutine inside the block.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        del task, gate
        gc.collect()
        stats = await settled(pool)
        assert (stats.released_total, stats.leaks_total) == (1, 0), stats
        async with pool.acquire(timeout=5) as conn:
            assert conn.get_server_pid() == pids[0]
            assert await conn.fetchval("SHOW work_mem") == "4MB"
        assert "garbage-collected" not in caplog.text
        check_invariants(pool)
