"""pytest plugin with PostgreSQL fixtures; registered as the ``asyncpool`` pytest11 entry point.

Fixtures:

* ``postgres_server`` (session): the :class:`~asyncpool.testing.PostgresInstance` found by
  :func:`~asyncpool.testing.find_postgres`, closed at the end of the session. Nothing is
  started unless a test asks for one of these fixtures.
* ``postgres_dsn`` (session): its DSN, a ``str``.
* ``controllable_postgres``: the session's :class:`~asyncpool.testing.PostgresServer`,
  for tests that stop, crash or restart the server; such tests are skipped when the
  server is not under the tests' control (``ASYNCPOOL_TEST_DSN`` or a container). The
  server is started again after the test if the test left it down.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asyncpool.testing._cluster import PostgresInstance, PostgresServer, find_postgres

__all__ = ("controllable_postgres", "postgres_dsn", "postgres_server")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresInstance]:
    """Provide a PostgreSQL server for the whole test session (see ``find_postgres``)."""
    instance = find_postgres()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresInstance) -> str:
    """Return the DSN of the session's PostgreSQL server.

    Session-scoped, so that Hypothesis tests can use it. The DSN stays valid when a
    test restarts the server through ``controllable_postgres``.
    """
    return postgres_server.dsn


@pytest.fixture
def controllable_postgres(postgres_server: PostgresInstance) -> Iterator[PostgresServer]:
    """Provide the session's server, which the test may stop, crash and restart.

    Skips the test when the server came from ``ASYNCPOOL_TEST_DSN`` or a container. After
    the test the server is running again, on the same port.
    """
    server = postgres_server.server
    if server is None:
        pytest.skip(f"needs a server the tests control (have kind={postgres_server.kind!r})")
    if not server.is_running:
        server.start()
    try:
        yield server
    finally:
        if not server.is_running:
            server.start()
