"""Test helpers for code that talks to PostgreSQL: throwaway servers and a faulty network.

* :class:`PostgresServer` runs a disposable PostgreSQL cluster from the local server
  binaries, which tests can stop, crash and restart on the same port.
* :func:`find_postgres` picks a server for a test session: ``ASYNCPOOL_TEST_DSN``, else
  local binaries, else a testcontainers container.
* :class:`PgBouncer` runs a throwaway PgBouncer (session, transaction or statement
  mode) in front of a server; :class:`ReplicatedPostgres` a primary with a streaming
  replica (``pg_basebackup``) that a test can promote.
* :class:`TcpProxy` sits between a client and the server and injects network faults:
  resets, stalls, refused connections and slow connects.
* ``asyncpool.testing.pytest_plugin`` is an opt-in pytest plugin (enable it with
  ``pytest_plugins = ["asyncpool.testing.pytest_plugin"]`` in a ``conftest.py``): a
  session server, a fresh database per test and an open pool on it, as ``asyncpool_...``
  fixtures.

The helpers other than the plugin do not use the pool, so they can test any
asyncpg-based code.
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
from asyncpool.testing._pgbouncer import (
    PgBouncer,
    PgBouncerMode,
    PgBouncerNotFoundError,
    find_pgbouncer,
    pgbouncer_version,
)
from asyncpool.testing._proxy import TcpProxy
from asyncpool.testing._replica import ReplicaServer, ReplicatedPostgres

__all__ = (
    "DEFAULT_SETTINGS",
    "PgBouncer",
    "PgBouncerMode",
    "PgBouncerNotFoundError",
    "PostgresInstance",
    "PostgresKind",
    "PostgresNotFoundError",
    "PostgresServer",
    "ReplicaServer",
    "ReplicatedPostgres",
    "TcpProxy",
    "find_pg_bin",
    "find_pgbouncer",
    "find_postgres",
    "pgbouncer_version",
)
