"""Tests for asyncpool.testing: the throwaway server, the fixtures and the faulty proxy."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import pytest

from asyncpool.testing import (
    PostgresInstance,
    PostgresNotFoundError,
    PostgresServer,
    TcpProxy,
    find_pg_bin,
    find_postgres,
)

# What asyncpg raises when the connection under it is gone or cannot be made. Not
# OSError as a whole: TimeoutError is one, and a timeout must not pass for a failure.
BROKEN = (
    asyncpg.exceptions.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,  # ConnectionResetError, ConnectionRefusedError
)


async def connect(dsn: str, timeout: float = 5.0) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=timeout)


async def test_server_accepts_queries(postgres_server: PostgresInstance, postgres_dsn: str):
    assert postgres_server.kind in {"dsn", "local", "container"}
    assert postgres_server.dsn == postgres_dsn
    conn = await connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
    finally:
        await conn.close()


async def test_local_server_settings(controllable_postgres: PostgresServer):
    server = controllable_postgres
    assert server.is_running
    assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    assert server.host == "127.0.0.1"
    assert server.data_dir.is_dir()
    conn = await connect(server.dsn)
    try:
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


async def test_restart_keeps_port_and_data(controllable_postgres: PostgresServer):
    server = controllable_postgres
    port, dsn = server.port, server.dsn
    server.execute_sync("CREATE TABLE IF NOT EXISTS harness_restart (x int)")
    old = await connect(dsn)
    try:
        server.restart()
        assert server.is_running
        assert (server.port, server.dsn) == (port, dsn)
        with pytest.raises(BROKEN):
            await old.fetchval("SELECT 1")
    finally:
        old.terminate()
    new = await connect(dsn)
    try:
        assert await new.fetchval("SELECT 1") == 1
        assert await new.fetchval("SELECT count(*) FROM harness_restart") == 0
    finally:
        await new.close()


async def test_stop_then_start_later(controllable_postgres: PostgresServer):
    server = controllable_postgres
    port = server.port
    server.stop()
    assert not server.is_running
    with pytest.raises(BROKEN):
        await connect(server.dsn, timeout=2)
    server.start()
    assert server.port == port
    conn = await connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_crash_and_recover(controllable_postgres: PostgresServer):
    server = controllable_postgres
    conn = await connect(server.dsn)
    try:
        server.kill()
        assert not server.is_running
        with pytest.raises(BROKEN):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    server.start()
    assert server.execute_sync("SELECT 1") == "SELECT 1"


async def test_controllable_fixture_restarts_server_left_down(
    controllable_postgres: PostgresServer,
):
    # Leave the server down on purpose: the fixture must bring it back for later tests.
    controllable_postgres.stop()


async def test_server_is_back_after_test_left_it_down(postgres_dsn: str):
    conn = await connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_find_postgres_honours_dsn_env(monkeypatch: pytest.MonkeyPatch):
    dsn = "postgresql://someone@db.example.invalid:6543/app"
    monkeypatch.setenv("ASYNCPOOL_TEST_DSN", dsn)
    with find_postgres() as found:
        assert found.kind == "dsn"
        assert found.dsn == dsn
        assert not found.controllable
        assert (found.host, found.port) == ("db.example.invalid", 6543)


def test_find_postgres_explains_when_nothing_is_available(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    monkeypatch.delenv("ASYNCPOOL_TEST_DSN", raising=False)
    monkeypatch.setenv("ASYNCPOOL_PG_BIN", str(tmp_path))
    with pytest.raises(PostgresNotFoundError, match="ASYNCPOOL_PG_BIN"):
        find_postgres(allow_container=False)


async def test_proxy_forwards_queries(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        assert proxy.dsn == proxy.dsn_for(postgres_dsn)
        assert f"127.0.0.1:{proxy.port}" in proxy.dsn
        conn = await connect(proxy.dsn)
        try:
            assert await conn.fetchval("SELECT repeat('x', 200000)") == "x" * 200000
            assert await conn.fetchval("SELECT length($1::text)", "y" * 300000) == 300000
            assert proxy.connection_count == 1
            assert proxy.connections_total == 1
        finally:
            await conn.close()
        for _ in range(100):
            if proxy.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        assert proxy.connection_count == 0


async def test_proxy_cut_breaks_open_connection(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        conn = await connect(proxy.dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            proxy.cut()
            with pytest.raises(BROKEN):
                async with asyncio.timeout(5):
                    await conn.fetchval("SELECT 1")
        finally:
            conn.terminate()
        # New connections still work after a cut.
        conn = await connect(proxy.dsn)
        try:
            assert await conn.fetchval("SELECT 2") == 2
        finally:
            await conn.close()


async def test_proxy_stall_makes_queries_hang_then_resume(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        conn = await connect(proxy.dsn)
        try:
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await conn.fetchval("SELECT 1")
            assert time.monotonic() - started >= 0.45
            assert proxy.connection_count == 1  # still open: half-open, not reset
            # A new connection hangs too.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncpg.connect(proxy.dsn)
        finally:
            conn.terminate()
        proxy.resume()
        # Bytes held during a stall are delivered on resume.
        conn = await connect(proxy.dsn)
        try:
            proxy.stall()
            pending = asyncio.ensure_future(conn.fetchval("SELECT 42"))
            await asyncio.sleep(0.2)
            assert not pending.done()
            proxy.resume()
            assert await asyncio.wait_for(pending, 5) == 42
        finally:
            await conn.close()


async def test_proxy_refuse_makes_connects_fail(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        kept = await connect(proxy.dsn)
        try:
            proxy.refuse()
            with pytest.raises(BROKEN):
                await connect(proxy.dsn, timeout=2)
            assert proxy.refused_total >= 1
            assert await kept.fetchval("SELECT 1") == 1  # open connections are kept
            proxy.resume()
            conn = await connect(proxy.dsn)
            await conn.close()
        finally:
            await kept.close()


async def test_proxy_connect_delay(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        proxy.set_delay(connect_delay=0.4)
        started = time.monotonic()
        conn = await connect(proxy.dsn)
        delayed = time.monotonic() - started
        await conn.close()
        assert delayed >= 0.39
        assert proxy.connections_total == 1

        proxy.resume()
        assert proxy.connect_delay == 0.0


async def test_proxy_stop_with_connections_open(postgres_dsn: str):
    proxy = TcpProxy.from_dsn(postgres_dsn)
    await proxy.start()
    conns = [await connect(proxy.dsn) for _ in range(3)]
    proxy.stall()
    assert proxy.connection_count == 3
    try:
        await proxy.stop()
        assert proxy.connection_count == 0
        assert not proxy.is_running
        for conn in conns:
            with pytest.raises(BROKEN):
                async with asyncio.timeout(5):
                    await conn.fetchval("SELECT 1")
    finally:
        for conn in conns:
            conn.terminate()


@pytest.mark.skipif(find_pg_bin() is None, reason="needs local PostgreSQL server binaries")
async def test_server_context_manager_cleans_up():
    with PostgresServer(settings={"max_connections": "20"}) as server:
        assert server.settings["max_connections"] == "20"
        conn = await connect(server.dsn)
        try:
            assert await conn.fetchval("SHOW max_connections") == "20"
        finally:
            await conn.close()
        base, port = server.base_dir, server.port
        assert base.is_dir()
    assert not base.exists()
    assert not server.is_running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
