"""pytest fixtures for code that uses PostgreSQL: a throwaway server, a fresh database per
test, and an open asyncpool pool on it.

The plugin is opt-in: installing asyncpool loads nothing into other projects' test runs.
Enable it in your top-level ``conftest.py``::

    pytest_plugins = ["asyncpool.testing.pytest_plugin"]

or on the command line with ``pytest -p asyncpool.testing.pytest_plugin``. The async
fixture (``asyncpool_pool``) needs pytest-asyncio.

Fixtures (all named ``asyncpool_...``):

* ``asyncpool_postgres`` (session): the :class:`~asyncpool.testing.PostgresInstance`
  found by :func:`~asyncpool.testing.find_postgres` (``ASYNCPOOL_TEST_DSN``, else local
  server binaries, else a testcontainers container), closed at the end of the session.
  Nothing is started unless a test asks for one of these fixtures.
* ``asyncpool_postgres_dsn`` (session): its superuser DSN, a ``str``.
* ``asyncpool_template_sql`` (session): SQL run once in the template database (default:
  none). Override it to create your schema::

      @pytest.fixture(scope="session")
      def asyncpool_template_sql() -> str:
          return Path("schema.sql").read_text()

* ``asyncpool_template_database`` (session): the name of that template database.
* ``asyncpool_database``: the DSN of a database of its own for this test, created from
  the template (``CREATE DATABASE ... TEMPLATE ...``) and dropped after the test, so
  tables and rows never leak from one test to the next.
* ``asyncpool_pool_settings``: keyword arguments for the pool fixture (default
  ``{"min_size": 1, "max_size": 4}``); override it to change them.
* ``asyncpool_pool`` (async): an open :class:`asyncpool.Pool` on ``asyncpool_database``,
  closed after the test.
* ``asyncpool_controllable_postgres``: the session's
  :class:`~asyncpool.testing.PostgresServer`, for tests that stop, crash or restart the
  server; skipped when the server is not under the tests' control
  (``ASYNCPOOL_TEST_DSN`` or a container). Started again after the test if it was left
  down.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from asyncpool import Pool, create_pool
from asyncpool.testing._cluster import PostgresInstance, PostgresServer, find_postgres

__all__ = (
    "asyncpool_controllable_postgres",
    "asyncpool_database",
    "asyncpool_pool",
    "asyncpool_pool_settings",
    "asyncpool_postgres",
    "asyncpool_postgres_dsn",
    "asyncpool_template_database",
    "asyncpool_template_sql",
    "database_dsn",
)

_T = TypeVar("_T")

if TYPE_CHECKING:
    _async_fixture = pytest.fixture
else:
    try:  # the async fixture needs pytest-asyncio (in any of its modes)
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover - pytest-asyncio not installed
        _async_fixture = pytest.fixture


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a new event loop in a thread of its own (a sync
    fixture may be set up while the test's event loop runs).
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the calling thread
            error.append(exc)

    thread = threading.Thread(target=main, name="asyncpool-testing", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def database_dsn(dsn: str, database: str) -> str:
    """Return ``dsn`` (a ``postgresql://`` URL) with its database replaced by ``database``."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def asyncpool_postgres() -> Iterator[PostgresInstance]:
    """Provide a PostgreSQL server for the whole test session (see ``find_postgres``)."""
    instance = find_postgres()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="session")
def asyncpool_postgres_dsn(asyncpool_postgres: PostgresInstance) -> str:
    """Return the superuser DSN of the session's PostgreSQL server.

    Session-scoped, so that Hypothesis tests can use it. The DSN stays valid when a
    test restarts the server through ``asyncpool_controllable_postgres``.
    """
    return asyncpool_postgres.dsn


@pytest.fixture(scope="session")
def asyncpool_template_sql() -> str | None:
    """Return SQL to run once in the template database (override it; default: none)."""
    return None


@pytest.fixture(scope="session")
def asyncpool_template_database(
    asyncpool_postgres_dsn: str, asyncpool_template_sql: str | None
) -> Iterator[str]:
    """Create the template database of this session's per-test databases; return its name."""
    name = f"asyncpool_template_{uuid.uuid4().hex[:12]}"
    _run(_admin(asyncpool_postgres_dsn, f"CREATE DATABASE {_quote(name)} TEMPLATE template0"))
    try:
        if asyncpool_template_sql:
            _run(_admin(database_dsn(asyncpool_postgres_dsn, name), asyncpool_template_sql))
        yield name
    finally:
        _run(_admin(asyncpool_postgres_dsn, f"DROP DATABASE IF EXISTS {_quote(name)}"))


@pytest.fixture
def asyncpool_database(
    asyncpool_postgres_dsn: str, asyncpool_template_database: str
) -> Iterator[str]:
    """Return the DSN of a fresh database for this test (a copy of the template), dropped
    afterwards (connections still open to it are ended).
    """
    name = f"asyncpool_test_{uuid.uuid4().hex[:12]}"
    _run(
        _admin(
            asyncpool_postgres_dsn,
            f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(asyncpool_template_database)}",
        )
    )
    try:
        yield database_dsn(asyncpool_postgres_dsn, name)
    finally:
        _run(_admin(asyncpool_postgres_dsn, f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)"))


@pytest.fixture
def asyncpool_pool_settings() -> dict[str, Any]:
    """Return the keyword arguments of ``asyncpool_pool`` (override it to change them)."""
    return {"min_size": 1, "max_size": 4}


@_async_fixture
async def asyncpool_pool(
    asyncpool_database: str, asyncpool_pool_settings: dict[str, Any]
) -> AsyncIterator[Pool]:
    """Provide an open pool on this test's own database; closed after the test."""
    async with create_pool(asyncpool_database, **asyncpool_pool_settings) as pool:
        yield pool


@pytest.fixture
def asyncpool_controllable_postgres(
    asyncpool_postgres: PostgresInstance,
) -> Iterator[PostgresServer]:
    """Provide the session's server, which the test may stop, crash and restart.

    Skips the test when the server came from ``ASYNCPOOL_TEST_DSN`` or a container. After
    the test the server is running again, on the same port.
    """
    server = asyncpool_postgres.server
    if server is None:
        pytest.skip(f"needs a server the tests control (have kind={asyncpool_postgres.kind!r})")
    if not server.is_running:
        server.start()
    try:
        yield server
    finally:
        if not server.is_running:
            server.start()
