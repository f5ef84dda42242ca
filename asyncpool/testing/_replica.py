"""A throwaway primary with a streaming replica, for failover and routing tests.

:class:`ReplicatedPostgres` starts a primary :class:`~asyncpool.testing.PostgresServer`
(``wal_level=replica``, WAL senders and ``hot_standby`` on; ``initdb``'s trust
``pg_hba.conf`` already admits replication connections from 127.0.0.1), clones it
with ``pg_basebackup -R`` into a second data directory, and starts the clone on
another loopback port as a hot standby that streams from the primary. Tests can
then stop or crash the primary and :meth:`~ReplicatedPostgres.promote` the replica.

Both servers run as the ``postgres`` system user when the current process is root,
and are stopped (and their directories removed) by :meth:`ReplicatedPostgres.close`,
at interpreter exit, or by their watchdogs if this process dies.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from asyncpool.testing._cluster import PostgresServer
from asyncpool.testing._procs import query_sync

__all__ = ("ReplicaServer", "ReplicatedPostgres")

#: Settings of the primary (merged over the harness defaults).
PRIMARY_SETTINGS: Mapping[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "5",
    "hot_standby": "on",
    "wal_keep_size": "64MB",
    "wal_sender_timeout": "5s",
    "wal_receiver_status_interval": "1s",
}


class ReplicaServer(PostgresServer):
    """A hot standby cloned from ``primary`` with ``pg_basebackup -R`` (streaming).

    Behaves like a :class:`PostgresServer` (``start``, ``stop``, ``kill``, ``dsn`` ...)
    except that its cluster is a base backup of the primary instead of a fresh
    ``initdb``. The primary must be running when the replica is first started.
    """

    def __init__(self, primary: PostgresServer, **kwargs: Any) -> None:
        """Configure a replica of ``primary``; ``kwargs`` go to :class:`PostgresServer`."""
        kwargs.setdefault("settings", primary.settings)
        kwargs.setdefault("user", primary.user)
        kwargs.setdefault("database", primary.database)
        super().__init__(**kwargs)
        self._primary = primary

    @property
    def primary(self) -> PostgresServer:
        """The server this replica was cloned from."""
        return self._primary

    def promote(self, timeout: float = 30.0) -> None:
        """Promote the replica to a primary (``pg_ctl promote``) and wait until it
        accepts writes.
        """
        result = self._pg_ctl("promote", "-w", "-t", str(int(timeout)))
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed:\n{self._describe(result)}")
        deadline = time.monotonic() + timeout
        while _fetch_sync(self.dsn, "SELECT pg_is_in_recovery()"):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"replica on port {self.port} still in recovery after "
                    f"{timeout}s\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # The harness creates a cluster (temporary directory, port, watchdog, run-as
        # user) with one ``initdb`` run; a replica gets its data directory from a base
        # backup of the primary instead. (Should the harness stop running initdb
        # through here, the replica would be a plain server and wait_streaming fails.)
        if args and Path(args[0]).name == "initdb" and "-D" in args:
            data_dir = args[args.index("-D") + 1]
            args = [
                str(Path(args[0]).with_name("pg_basebackup")),
                "-D",
                data_dir,
                "-h",
                self._primary.host,
                "-p",
                str(self._primary.port),
                "-U",
                self._primary.user,
                "-X",
                "stream",
                "-c",
                "fast",
                "-R",
                "--no-sync",
            ]
        return super()._run(args, check=check)


class ReplicatedPostgres:
    """A primary and one streaming replica on two loopback ports.

    Example::

        with ReplicatedPostgres() as cluster:
            dsn = cluster.multi_host_dsn("read-write")
            ...
            cluster.primary.stop()
            cluster.promote()

    Attributes:
        primary: the primary :class:`PostgresServer`.
        replica: the :class:`ReplicaServer` streaming from it.
    """

    def __init__(self, *, settings: Mapping[str, str] | None = None) -> None:
        """Configure (but do not start) both servers; ``settings`` apply to both."""
        merged = {**PRIMARY_SETTINGS, **(settings or {})}
        self.primary = PostgresServer(settings=merged)
        self.replica = ReplicaServer(self.primary, settings=merged)

    def start(self) -> None:
        """Start the primary, clone it, start the replica and wait until it streams."""
        try:
            self.primary.start()
            self.replica.start()
            self.wait_streaming()
        except BaseException:
            self.close()
            raise

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until the primary reports the replica as ``streaming``."""
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        while not _fetch_sync(self.primary.dsn, query):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica is not streaming after {timeout}s")
            time.sleep(0.05)

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        lsn = _fetch_sync(self.primary.dsn, "SELECT pg_current_wal_insert_lsn()::text")
        deadline = time.monotonic() + timeout
        query = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        while not _fetch_sync(self.replica.dsn, query):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica has not replayed up to {lsn} after {timeout}s")
            time.sleep(0.02)

    def promote(self, timeout: float = 30.0) -> None:
        """Promote the replica (see :meth:`ReplicaServer.promote`)."""
        self.replica.promote(timeout)

    def multi_host_dsn(self, target_session_attrs: str = "read-write") -> str:
        """A DSN naming both servers (primary first) with ``target_session_attrs``.

        asyncpg's syntax: ``postgresql://user@host1:port1,host2:port2/db?target_session_attrs=...``.
        """
        p, r = self.primary, self.replica
        return (
            f"postgresql://{p.user}@{p.host}:{p.port},{r.host}:{r.port}/{p.database}"
            f"?target_session_attrs={target_session_attrs}"
        )

    def close(self) -> None:
        """Stop both servers and remove their directories; safe to call twice."""
        try:
            self.replica.close(mode="immediate")
        finally:
            self.primary.close(mode="immediate")

    def __enter__(self) -> ReplicatedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReplicatedPostgres primary={self.primary!r} replica={self.replica!r}>"


def _fetch_sync(dsn: str, query: str) -> Any:
    """Run one query on a fresh connection from synchronous code (works inside a loop)."""
    return query_sync(dsn, query, method="fetchval")
