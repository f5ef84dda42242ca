"""A LISTEN/NOTIFY consumer on a pool.

LISTEN belongs to a server session, so a listener acquires one connection and keeps it
for its whole life: released, the connection is reset (``UNLISTEN *``) before anyone
else gets it, and the notifications stop. Count that connection in ``max_size``.
If the connection dies, the listener acquires a new one and listens again
(notifications sent in between are lost: NOTIFY is not durable, so re-read the state
you were following after a reconnect).

    python examples/listen_notify.py

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one for the run
(see examples/_database.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from _database import database

import asyncpool


async def listen(
    pool: asyncpool.Pool,
    channel: str,
    handle: Callable[[str], None],
    stop: asyncio.Event,
    on_listening: Callable[[int], None] = lambda pid: None,
) -> None:
    """Call ``handle(payload)`` for each notification on ``channel`` until ``stop`` is set."""
    while not stop.is_set():
        lost = asyncio.Event()

        def on_lost(_conn: object, lost: asyncio.Event = lost) -> None:
            lost.set()

        # Acquired once and kept while listening: never release a listening connection.
        async with pool.acquire() as conn:
            conn.add_termination_listener(on_lost)
            try:
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload: handle(payload))
                on_listening(conn.get_server_pid())
                await first_of(stop, lost)
            finally:
                if not conn.is_closed():  # termination listeners outlive a release
                    conn.remove_termination_listener(on_lost)
        # Released here: the pool removes the listener (UNLISTEN *) or replaces a dead
        # connection. If the connection was lost, loop: listen again on a new one.


async def first_of(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def notify(pool: asyncpool.Pool, channel: str, payload: str) -> None:
    """Send one notification (any pooled connection will do)."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


async def main(dsn: str) -> None:
    channel = "asyncpool_example"
    # One connection for the listener, the rest for everything else.
    async with asyncpool.create_pool(dsn, min_size=2, max_size=2) as pool:
        received: list[str] = []
        got: dict[int, asyncio.Event] = {}
        listening: list[int] = []
        listening_changed = asyncio.Event()

        def handle(payload: str) -> None:
            received.append(payload)
            got.setdefault(len(received), asyncio.Event()).set()

        def on_listening(pid: int) -> None:
            listening.append(pid)
            listening_changed.set()

        async def wait_for(n: int) -> None:
            await asyncio.wait_for(got.setdefault(n, asyncio.Event()).wait(), 10)

        stop = asyncio.Event()
        listener = asyncio.create_task(listen(pool, channel, handle, stop, on_listening))
        await asyncio.wait_for(listening_changed.wait(), 10)
        print(f"listening on backend {listening[0]}")
        for i in range(3):
            await notify(pool, channel, f"message {i}")
        await wait_for(3)

        # The listening session dies (server restart, failover, idle kill...).
        listening_changed.clear()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", listening[0])
        await asyncio.wait_for(listening_changed.wait(), 10)
        print(f"connection lost; listening again on backend {listening[-1]}")
        for i in range(3, 5):
            await notify(pool, channel, f"message {i}")
        await wait_for(5)

        stop.set()
        await listener
        print(f"received {len(received)}: {', '.join(received)}")
        # Both pooled connections, the listener's among them: it LISTENs no more.
        async with pool.acquire() as one, pool.acquire() as two:
            query = "SELECT count(*) FROM pg_listening_channels()"
            channels = [await conn.fetchval(query) for conn in (one, two)]
            print(f"channels listened to on the pooled connections after release: {channels}")


if __name__ == "__main__":
    with database() as dsn:
        asyncio.run(main(dsn))
