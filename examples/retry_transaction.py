"""Retry a transaction that fails with a serialization failure or a deadlock.

Under SERIALIZABLE (and REPEATABLE READ) isolation PostgreSQL aborts a transaction
whose outcome could differ from running the transactions one at a time (SQLSTATE
40001, ``asyncpg.exceptions.SerializationError``); a deadlock aborts one of its
transactions (40P01, ``DeadlockDetectedError``). Both are safe to retry from the
start. :func:`run_in_transaction` does so with exponential backoff and jitter; each
attempt borrows a connection, so none is held while backing off. The work function
must do nothing outside the database that cannot be repeated.

The demo provokes a real serialization failure (write skew): two doctors on call ask
for leave at the same time; the rule is that one must stay on call. Both transactions
read "2 on call", then each takes itself off call. Serializable isolation aborts one;
its retry reads "1 on call" and refuses.

    python examples/retry_transaction.py

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one for the run
(see examples/_database.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from _database import database

import asyncpool

T = TypeVar("T")

RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)


async def run_in_transaction(
    pool: asyncpool.Pool,
    work: Callable[[asyncpool.PooledConnection], Awaitable[T]],
    *,
    isolation: str = "serializable",
    attempts: int = 5,
    base_delay: float = 0.01,
    max_delay: float = 1.0,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run ``work(conn)`` in a transaction, retrying serialization failures and deadlocks.

    Attempt ``n`` (from 1) that fails waits ``min(max_delay, base_delay * 2**(n-1))``
    seconds, times a random factor in [0.5, 1] so that the colliding transactions do
    not collide again, then starts over on a freshly borrowed connection. After
    ``attempts`` attempts the last error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction(isolation=isolation):
                return await work(conn)
        except RETRYABLE as exc:
            if attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


async def main(dsn: str) -> None:
    async with asyncpool.create_pool(dsn, min_size=2, max_size=2) as pool:
        async with pool.acquire() as conn:
            await conn.execute("""
                DROP TABLE IF EXISTS asyncpool_example_oncall;
                CREATE TABLE asyncpool_example_oncall (doctor text PRIMARY KEY, on_call bool);
                INSERT INTO asyncpool_example_oncall VALUES ('alice', true), ('bob', true);
            """)

        # Make both first attempts read before either writes (the race, made certain).
        both_have_read = asyncio.Barrier(2)
        failures: list[str] = []
        attempts: dict[str, int] = {}

        async def request_leave(doctor: str) -> bool:
            async def work(conn: asyncpool.PooledConnection) -> bool:
                attempts[doctor] = attempts.get(doctor, 0) + 1
                on_call = await conn.fetchval(
                    "SELECT count(*) FROM asyncpool_example_oncall WHERE on_call"
                )
                if attempts[doctor] == 1:
                    await both_have_read.wait()
                if on_call < 2:
                    return False  # someone must stay on call
                await conn.execute(
                    "UPDATE asyncpool_example_oncall SET on_call = false WHERE doctor = $1", doctor
                )
                return True

            def on_retry(attempt: int, exc: BaseException) -> None:
                failures.append(doctor)
                reason = str(exc).splitlines()[0]
                print(
                    f"{doctor}: attempt {attempt} failed ({type(exc).__name__}: {reason}); retrying"
                )

            return await run_in_transaction(pool, work, on_retry=on_retry)

        granted = await asyncio.gather(request_leave("alice"), request_leave("bob"))
        for doctor, ok in zip(("alice", "bob"), granted, strict=True):
            print(
                f"{doctor}: leave {'granted' if ok else 'refused'} after "
                f"{attempts[doctor]} attempt(s)"
            )
        async with pool.acquire() as conn:
            on_call = await conn.fetchval(
                "SELECT count(*) FROM asyncpool_example_oncall WHERE on_call"
            )
            await conn.execute("DROP TABLE asyncpool_example_oncall")
        print(f"serialization failures: {len(failures)}")
        print(f"doctors still on call: {on_call}")


if __name__ == "__main__":
    with database() as dsn:
        asyncio.run(main(dsn))
