"""The PostgreSQL server a benchmark runs against: a given DSN, or a throwaway one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ("SERVER_SETTINGS", "server_version", "throwaway_server")

#: Room for every system's pools at once (the default 100 is too few for the grid).
SERVER_SETTINGS = {"max_connections": "300"}


@contextlib.contextmanager
def throwaway_server(dsn: str | None) -> Iterator[tuple[str, str]]:
    """``(dsn, note)``: the given DSN, else a throwaway local server for the block."""
    if dsn:
        yield dsn, "given DSN"
        return
    from asyncpool.testing import PostgresServer

    with PostgresServer(settings=SERVER_SETTINGS) as server:
        yield server.dsn, f"throwaway local server, settings {dict(server.settings)}"


async def server_version(dsn: str) -> str:
    """The server's version, as ``SHOW server_version`` gives its first word."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()
