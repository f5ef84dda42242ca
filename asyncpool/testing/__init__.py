"""Test helpers for code that talks to PostgreSQL: throwaway servers and a faulty network.

* :class:`PostgresServer` runs a disposable PostgreSQL cluster from the local server
  binaries, which tests can stop, crash and restart on the same port.
* :func:`find_postgres` picks a server for a test session: ``ASYNCPOOL_TEST_DSN``, else
  local binaries, else a testcontainers container.
* :class:`TcpProxy` sits between a client and the server and injects network faults:
  resets, stalls, refused connections and slow connects.
* ``asyncpool.testing.pytest_plugin`` (loaded automatically by pytest once asyncpool is
  installed) provides the ``postgres_server``, ``postgres_dsn`` and
  ``controllable_postgres`` fixtures.

This module does not import the pool itself, so it can test any asyncpg-based code.
"""

from asyncpool.testing._cluster import (
    DEFAULT_SETTINGS,
    PostgresInstance,
    PostgresKind,
    PostgresNotFoundError,
    PostgresServer,
    find_pg_bin,
    find_postgres,
)
from asyncpool.testing._proxy import TcpProxy

__all__ = (
    "DEFAULT_SETTINGS",
    "PostgresInstance",
    "PostgresKind",
    "PostgresNotFoundError",
    "PostgresServer",
    "TcpProxy",
    "find_pg_bin",
    "find_postgres",
)
