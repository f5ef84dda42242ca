"""The opt-in pytest plugin: loads nothing unless enabled; its fixtures give each test a
database of its own.

The subprocess runs reuse this session's server through ``ASYNCPOOL_TEST_DSN``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg

import asyncpool

PLUGIN = "asyncpool.testing.pytest_plugin"


def run_pytest(
    tmp_path: Path, *args: str, dsn: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ASYNCPOOL_"))}
    if dsn is not None:
        env["ASYNCPOOL_TEST_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_package_loads_nothing_into_an_unrelated_run(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_asyncpool_not_loaded():
                top = {m.split(".")[0] for m in sys.modules}
                loaded = sorted(top & {"asyncpool", "asyncpg"})
                assert loaded == []
            """
        )
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_each_test_gets_its_own_database_from_the_template(
    tmp_path: Path, postgres_dsn: str
) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import pytest

            pytest_plugins = [{PLUGIN!r}]

            @pytest.fixture(scope="session")
            def asyncpool_template_sql():
                return "CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item VALUES (1)"
            """
        )
    )
    # Two tests each write to the same table: each must see only the template's row
    # and its own, whatever order they run in.
    (tmp_path / "test_isolated.py").write_text(
        textwrap.dedent(
            """
            import asyncpool

            async def check(pool, my_id):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM item") == [1]
                    await conn.execute("INSERT INTO item VALUES ($1)", my_id)
                    await conn.execute(f"CREATE TABLE leak_{my_id} (x int)")
                    tables = await conn.fetchval(
                        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'leak%'"
                    )
                    assert tables == 1

            async def test_first(asyncpool_pool):
                assert isinstance(asyncpool_pool, asyncpool.Pool)
                await check(asyncpool_pool, 2)

            async def test_second(asyncpool_pool):
                await check(asyncpool_pool, 3)

            async def test_database_is_not_the_servers(asyncpool_database, asyncpool_postgres_dsn):
                assert asyncpool_database != asyncpool_postgres_dsn
                assert "/asyncpool_test_" in asyncpool_database
            """
        )
    )
    result = run_pytest(tmp_path, "-o", "asyncio_mode=auto", dsn=postgres_dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


async def test_databases_are_dropped_after_the_tests(postgres_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(f"pytest_plugins = [{PLUGIN!r}]\n")
    (tmp_path / "test_one.py").write_text("def test_db(asyncpool_database):\n    pass\n")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        query = "SELECT count(*) FROM pg_database WHERE datname LIKE 'asyncpool\\_%'"
        before = await conn.fetchval(query)
        result = run_pytest(tmp_path, dsn=postgres_dsn)
        assert result.returncode == 0, result.stdout + result.stderr
        assert await conn.fetchval(query) == before
    finally:
        await conn.close()


async def test_pool_fixture_is_open_on_a_fresh_database(
    asyncpool_pool: asyncpool.Pool, asyncpool_database: str
) -> None:
    async with asyncpool_pool.acquire() as conn:
        name = await conn.fetchval("SELECT current_database()")
        assert asyncpool_database.endswith("/" + name)
        assert name.startswith("asyncpool_test_")
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
