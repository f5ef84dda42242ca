"""asyncpool behind a real PgBouncer, in session, transaction and statement modes.

Each module-scoped fixture starts its own PgBouncer (on a free loopback port, in front
of the session's PostgreSQL) and stops it afterwards. Skipped when there is no
``pgbouncer`` binary (CI installs it with apt).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import asyncpool
from asyncpool._budget import check_budget
from asyncpool.testing import PostgresInstance
from asyncpool.testing._pgbouncer import PgBouncer, find_pgbouncer

pytestmark = [
    pytest.mark.pgbouncer,
    pytest.mark.skipif(
        find_pgbouncer() is None, reason="pgbouncer binary not found (apt-get install pgbouncer)"
    ),
]

MODES = ("session", "transaction", "statement")
SHARED = ("transaction", "statement")

# What asyncpg raises when PgBouncer or the server drops the connection under it.
BROKEN = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
)


def _start(server: PostgresInstance, mode: str, **kwargs: Any) -> PgBouncer:
    host, port = server.host, server.port
    assert host is not None and port is not None
    user = urlsplit(server.dsn).username or "postgres"
    bouncer = PgBouncer(host, port, pool_mode=mode, users=(user,), **kwargs)  # type: ignore[arg-type]
    bouncer.__enter__()
    return bouncer


@pytest.fixture(scope="module")
def bouncers(postgres_server: PostgresInstance) -> Iterator[dict[str, PgBouncer]]:
    """One PgBouncer per pool mode, each with default_pool_size=2."""
    started: dict[str, PgBouncer] = {}
    try:
        for mode in MODES:
            started[mode] = _start(postgres_server, mode, default_pool_size=2)
        yield started
    finally:
        for bouncer in started.values():
            bouncer.close()


@pytest.fixture(scope="module")
def schema(postgres_server: PostgresInstance) -> str:
    """A custom enum type (forces asyncpg type introspection) and a table."""
    assert postgres_server.server is not None or postgres_server.kind == "dsn"

    async def setup() -> None:
        conn = await asyncpg.connect(postgres_server.dsn)
        try:
            await conn.execute(
                "DROP TABLE IF EXISTS bouncer_t; DROP TYPE IF EXISTS bouncer_mood;"
                "CREATE TYPE bouncer_mood AS ENUM ('happy', 'sad');"
                "CREATE TABLE bouncer_t (id serial PRIMARY KEY, mode text, mood bouncer_mood,"
                " tags text[], doc jsonb)"
            )
        finally:
            await conn.close()

    asyncio.run(setup())
    return "bouncer_t"


def pool_for(bouncer: PgBouncer, **kwargs: Any) -> asyncpool.Pool:
    kwargs.setdefault("min_size", 1)
    kwargs.setdefault("max_size", 4)
    kwargs.setdefault("acquire_timeout", 10)
    return asyncpool.create_pool(bouncer.dsn, pooler=bouncer.pooler, **kwargs)


# ---------------------------------------------------------------- every mode


@pytest.mark.parametrize("mode", MODES)
async def test_queries_resets_and_pings_work(
    bouncers: dict[str, PgBouncer], schema: str, mode: str
) -> None:
    """Parameterized queries, custom-type introspection, executemany, unnamed prepared
    statements, COPY, resets and health-check pings all work through PgBouncer.
    """
    bouncer = bouncers[mode]
    # ping_after_idle=0: every slow-path acquire pings (SELECT 1, simple protocol).
    async with pool_for(bouncer, min_size=2, ping_after_idle=0) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
                assert await conn.fetchval("SELECT 'sad'::bouncer_mood") == "sad"
                await conn.execute(
                    f"INSERT INTO {schema} (mode, mood, tags, doc) VALUES ($1, $2, $3, $4)",
                    mode,
                    "happy",
                    ["a", "b"],
                    '{"k": 1}',
                )
                await conn.executemany(
                    f"INSERT INTO {schema} (mode, mood) VALUES ($1, $2)",
                    [(mode, "sad"), (mode, "happy")],
                )
                stmt = await conn.prepare(f"SELECT count(*) FROM {schema} WHERE mode = $1")
                assert await stmt.fetchval(mode) >= 3
                await conn.copy_records_to_table(
                    schema, records=[(mode, "sad")], columns=["mode", "mood"]
                )
                row = await conn.fetchrow(
                    f"SELECT tags, doc FROM {schema} WHERE mode = $1 AND tags IS NOT NULL LIMIT 1",
                    mode,
                )
                assert row["tags"] == ["a", "b"]
        # A borrower that leaves a failed statement behind: the pool recovers.
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / 0")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        stats = pool.stats()
        assert stats.pings_total >= 3
        assert stats.pings_failed_total == 0
        assert stats.connections_lost_total == 0


@pytest.mark.parametrize("mode", MODES)
async def test_pgbouncer_is_visible_as_pid_mismatch(
    bouncers: dict[str, PgBouncer], postgres_dsn: str, mode: str
) -> None:
    """The proposed pooler detection: PgBouncer hands the client a made-up BackendKeyData,
    so the protocol-level PID differs from pg_backend_pid(); directly they are equal.
    """
    through = await asyncpg.connect(bouncers[mode].dsn, statement_cache_size=0)
    direct = await asyncpg.connect(postgres_dsn)
    try:
        assert through.get_server_pid() != await through.fetchval("SELECT pg_backend_pid()")
        assert direct.get_server_pid() == await direct.fetchval("SELECT pg_backend_pid()")
    finally:
        await through.close()
        await direct.close()


# ---------------------------------------------------------------- session mode


async def test_session_mode_keeps_and_resets_session_state(
    bouncers: dict[str, PgBouncer],
) -> None:
    """In session mode SET/LISTEN/advisory locks work, and the full reset on release
    clears them for the next borrower.
    """
    async with pool_for(bouncers["session"], min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SET work_mem = '7MB'")
            await conn.add_listener("chan", lambda *args: None)
            assert await conn.fetchval("SELECT pg_try_advisory_lock(42)") is True
            assert await conn.fetchval("SHOW work_mem") == "7MB"
        await asyncio.sleep(0)  # the reset runs in the background
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SHOW work_mem") != "7MB"
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid()"
                )
                == 0
            )
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        assert pool.stats().resets_total >= 1


# ---------------------------------------------------------------- transaction / statement


@pytest.mark.parametrize("mode", SHARED)
@pytest.mark.parametrize(
    ("sql", "feature"),
    [
        ("SET work_mem = '8MB'", "SET"),
        ("SET SESSION statement_timeout = 1000", "SET"),
        ("RESET work_mem", "RESET"),
        ("LISTEN chan", "LISTEN"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("SELECT pg_advisory_lock(1)", "PG_ADVISORY_LOCK"),
        ("SELECT pg_try_advisory_lock_shared(1)", "PG_TRY_ADVISORY_LOCK_SHARED"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
    ],
)
async def test_shared_modes_refuse_session_features(
    bouncers: dict[str, PgBouncer], mode: str, sql: str, feature: str
) -> None:
    """Statements that need a server session raise PoolUsageError before reaching PgBouncer,
    naming the feature; the connection stays usable.
    """
    async with pool_for(bouncers[mode]) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpool.PoolUsageError, match=feature) as info:
            await conn.execute(sql)
        assert "transaction pooler" in str(info.value)
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("mode", SHARED)
async def test_shared_modes_refuse_add_listener(bouncers: dict[str, PgBouncer], mode: str) -> None:
    async with pool_for(bouncers[mode]) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpool.PoolUsageError, match="LISTEN"):
            await conn.add_listener("chan", lambda *args: None)


async def test_transaction_mode_allows_transaction_scoped_features(
    bouncers: dict[str, PgBouncer],
) -> None:
    """SET LOCAL, transaction advisory locks and cursors work inside a transaction."""
    async with pool_for(bouncers["transaction"]) as pool, pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL work_mem = '9MB'")
            assert await conn.fetchval("SHOW work_mem") == "9MB"
            await conn.fetchval("SELECT pg_advisory_xact_lock(7)")
            rows = [r[0] async for r in conn.cursor("SELECT generate_series(1, 3)")]
            assert rows == [1, 2, 3]
        assert not conn.is_in_transaction()


async def test_transaction_mode_multiplexes_onto_few_server_connections(
    bouncers: dict[str, PgBouncer],
) -> None:
    """Eight pooled connections, each in a transaction, run on at most
    default_pool_size (2) server backends: PgBouncer queues the rest.
    """
    bouncer = bouncers["transaction"]
    async with pool_for(bouncer, min_size=8, max_size=8) as pool:
        assert pool.stats().idle == 8

        async def one() -> int:
            async with pool.acquire() as conn, conn.transaction():
                pid: int = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.execute("SELECT pg_sleep(0.05)")
                return pid

        pids = await asyncio.gather(*(one() for _ in range(8)))
        assert len(set(pids)) <= bouncer.default_pool_size


async def test_transaction_mode_release_rolls_back_without_session_reset(
    bouncers: dict[str, PgBouncer],
) -> None:
    """A connection returned inside a transaction is rolled back; the full session reset
    (RESET ALL ..., which would hit whichever server PgBouncer picks) is never sent,
    even when the borrower marks the connection dirty.
    """
    async with pool_for(bouncers["transaction"], min_size=1, max_size=1) as pool:
        seen: list[str] = []
        conn = await pool.acquire()
        # On the raw connection: loggers added through the pool are removed at release.
        conn.raw_connection.add_query_logger(lambda record: seen.append(record.query))
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1")
        conn.mark_dirty()
        await pool.release(conn)
        async with pool.acquire() as conn2:
            assert not conn2.is_in_transaction()
            assert await conn2.fetchval("SELECT 1") == 1
        assert "ROLLBACK" in seen
        assert not any("RESET ALL" in query for query in seen)
        assert pool.stats().resets_total == 1


async def test_named_prepared_statements_break_across_server_connections(
    bouncers: dict[str, PgBouncer],
) -> None:
    """Why the core must steer users away from *named* prepared statements in transaction
    mode (on PgBouncer < 1.21): once another client holds the server connection the
    statement was prepared on, its next execution lands on a server that lacks it.
    Unnamed ones (asyncpg's default with statement_cache_size=0) are re-parsed and work.
    """
    bouncer = bouncers["transaction"]
    if bouncer.supports_prepared_statements:
        pytest.skip("PgBouncer >= 1.21 tracks prepared statements (max_prepared_statements)")
    async with pool_for(bouncer, min_size=2, max_size=2) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            named = await a.raw_connection.prepare("SELECT pg_backend_pid()", name="named1")
            unnamed = await a.prepare("SELECT pg_backend_pid()")
            first = await named.fetchval()
            async with b.transaction():
                # b now holds the server connection a prepared on (PgBouncer reuses LIFO).
                assert await b.fetchval("SELECT pg_backend_pid()") == first
                assert await unnamed.fetchval() != first
                with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
                    await named.fetchval()


async def test_statement_mode_transaction_breaks_only_that_connection(
    bouncers: dict[str, PgBouncer],
) -> None:
    """Statement mode forbids transaction blocks. PgBouncer closes the client connection
    on BEGIN; the pool drops it and the next borrower gets a working one.
    """
    async with pool_for(bouncers["statement"], min_size=1, max_size=1) as pool:
        with pytest.raises((asyncpool.PoolUsageError, *BROKEN)):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT 1")
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 2") == 2


async def test_pool_recovers_after_pgbouncer_restart(postgres_server: PostgresInstance) -> None:
    """PgBouncer killed and started again on the same port: dead client connections are
    found (by the ping or on use) and replaced; borrowers never wait past their deadline.
    """
    bouncer = _start(postgres_server, "transaction", default_pool_size=2)
    try:
        async with pool_for(
            bouncer, min_size=2, max_size=2, ping_after_idle=0, reconnect_max_delay=0.1
        ) as pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            bouncer.kill()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises((asyncpool.DatabaseUnavailable, asyncpool.PoolTimeout)):
                async with pool.acquire(timeout=1) as conn:
                    await conn.fetchval("SELECT 1")
            assert loop.time() - started < 2
            bouncer.start()
            for _ in range(50):
                try:
                    async with pool.acquire(timeout=1) as conn:
                        assert await conn.fetchval("SELECT 3") == 3
                        break
                except asyncpool.DatabaseUnavailable:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the pool did not reconnect through the restarted PgBouncer")
            assert pool.stats().pings_failed_total + pool.stats().connections_lost_total >= 1
    finally:
        bouncer.close()


async def test_budget_check_behind_pgbouncer_only_reports(
    bouncers: dict[str, PgBouncer], caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a pooler max_size * instances says nothing about server connections: the
    budget check reads the server's facts through PgBouncer and reports without failing.
    """
    async with pool_for(bouncers["transaction"]) as pool, pool.acquire() as conn:
        with caplog.at_level(logging.WARNING, logger="asyncpool"):
            report = await check_budget(
                conn,
                max_size=500,
                instances=10,
                policy="refuse",
                pool_name="p",
                pooler="pgbouncer-transaction",
            )
    assert report.ok
    assert report.max_connections > 0
    assert "pgbouncer-transaction" in report.message
    assert not caplog.records


# ------------------------------------------------------- refused behind a pooler


async def test_wanted_temp_tables_refused_in_transaction_mode(
    bouncers: dict[str, PgBouncer],
) -> None:
    async with pool_for(bouncers["transaction"]) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpool.PoolUsageError, match="TEMP"):
            await conn.execute("CREATE TEMP TABLE wanted_tmp (x int)")


async def test_wanted_named_prepare_refused_in_transaction_mode(
    bouncers: dict[str, PgBouncer],
) -> None:
    async with pool_for(bouncers["transaction"]) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpool.PoolUsageError):
            await conn.prepare("SELECT 1", name="wanted")


async def test_wanted_transaction_refused_in_statement_mode(
    bouncers: dict[str, PgBouncer],
) -> None:
    async with pool_for(bouncers["statement"]) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpool.PoolUsageError):
            async with conn.transaction():
                pass
        assert await conn.fetchval("SELECT 1") == 1  # refused before PgBouncer saw BEGIN


# ------------------------------------------------------------ the helper itself


def test_helper_repr_config_and_restart(postgres_server: PostgresInstance) -> None:
    bouncer = _start(postgres_server, "session", default_pool_size=3)
    try:
        port = bouncer.port
        assert bouncer.is_running
        assert "pool_mode = session" in bouncer.config_text()
        assert "default_pool_size = 3" in bouncer.config_text()
        assert f"127.0.0.1:{port}" in repr(bouncer) and "running" in repr(bouncer)
        assert bouncer.pooler == "pgbouncer-session"
        bouncer.stop()
        assert not bouncer.is_running
        bouncer.start()
        assert bouncer.port == port and bouncer.is_running
        base = bouncer.base_dir
    finally:
        bouncer.close()
    assert not base.exists()
    assert not bouncer.is_running
