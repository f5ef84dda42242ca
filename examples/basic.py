"""The basics: open a pool, borrow connections, run a transaction, handle a timeout, close.

python examples/basic.py

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one for the run
(see examples/_database.py).
"""

from __future__ import annotations

import asyncio

from _database import database

import asyncpool


async def main(dsn: str) -> None:

    # Opens min_size connections now; raises the connect error if the server is down.
    async with asyncpool.create_pool(dsn, min_size=1, max_size=4) as pool:
        # Borrow for a block: the connection goes back however the block ends.
        async with pool.acquire() as conn:
            version = await conn.fetchval("SHOW server_version")
            print(f"connected to PostgreSQL {version.split()[0]}")

        # Many tasks share the pool; at most max_size connections are open at once.
        async def square(n: int) -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT $1::int * $1::int", n))

        print("squares:", await asyncio.gather(*(square(n) for n in range(10))))

        # A transaction: committed at the end of the block, rolled back on an exception.
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS asyncpool_example_basic (n int)")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO asyncpool_example_basic VALUES (1)")
                    raise ValueError("changed my mind")
            except ValueError:
                pass
            count = await conn.fetchval("SELECT count(*) FROM asyncpool_example_basic")
            print(f"rows after the rolled-back transaction: {count}")
            await conn.execute("DROP TABLE asyncpool_example_basic")

        # Explicit acquire/release, with a deadline for this borrow.
        conn = await pool.acquire(timeout=5)
        try:
            print("backend pid:", await conn.fetchval("SELECT pg_backend_pid()"))
        finally:
            await pool.release(conn)

        # When every connection is busy, a borrow waits at most its timeout.
        held = [await pool.acquire() for _ in range(4)]
        try:
            async with pool.acquire(timeout=0.1):
                pass
        except asyncpool.PoolTimeout as exc:
            print(f"PoolTimeout: {exc}")
        finally:
            for c in held:
                await pool.release(c)

        stats = pool.stats()
        print(
            f"stats: size={stats.size} idle={stats.idle} in_use={stats.in_use} "
            f"acquired={stats.acquired_total} timeouts={stats.timeouts_total}"
        )
    print(f"closed: {pool.closed}")


if __name__ == "__main__":
    with database() as dsn:
        asyncio.run(main(dsn))
