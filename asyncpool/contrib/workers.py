"""Helpers for worker processes that each run an event loop with their own pool.

A pool belongs to one process and one event loop: a pool opened before ``fork()``
refuses to lend in the child (:class:`~asyncpool.PoolUsageError`), because parent and
child would otherwise share the same server sockets. Create the pool inside each
worker process, after it starts, with a size taken from the deployment's connection
budget (:func:`per_process_size`), and stop it gracefully on SIGTERM
(:func:`stop_on_signals`)::

    async def worker(dsn: str, processes: int) -> None:
        with stop_on_signals() as stop:
            size = per_process_size(total_budget=40, processes=processes)
            async with asyncpool.create_pool(dsn, min_size=1, max_size=size) as pool:
                while not stop.is_set():
                    ...  # take a job, run it to its end
            # leaving the block closed every connection (no backend is left behind)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ("per_process_size", "stop_on_signals")


def per_process_size(total_budget: int, processes: int, *, reserve: int = 0) -> int:
    """The ``max_size`` of each of ``processes`` pools sharing ``total_budget`` connections.

    Formula: ``(total_budget - reserve) // processes``. ``reserve`` is what the budget
    must keep for connections outside these pools (a supervisor, a migration, a
    LISTEN connection ...). Rounding down guarantees
    ``processes * per_process_size(...) + reserve <= total_budget``: all the pools at
    their maximum never exceed the budget. Raises :class:`ValueError` when the budget
    cannot give every process at least one connection (use fewer processes or a
    bigger budget, e.g. with PgBouncer in front of the server).
    """
    for name, value in (
        ("total_budget", total_budget),
        ("processes", processes),
        ("reserve", reserve),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    size = (total_budget - reserve) // processes
    if size < 1:
        raise ValueError(
            f"a budget of {total_budget} connection(s) minus reserve={reserve} cannot give "
            f"each of {processes} processes one connection: lower the process count or "
            "raise the budget"
        )
    return size


@contextlib.contextmanager
def stop_on_signals(
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[asyncio.Event]:
    """Yield an :class:`asyncio.Event` that is set when one of ``signals`` arrives.

    Use it in a worker's ``main()`` on the running event loop: stop taking new work
    once the event is set, let in-flight work finish, then close the pool. The
    handlers are removed on exit and the previous ones restored.
    Unix only (``loop.add_signal_handler``).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in signals:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, stop.set)
            installed.append((sig, previous))
        yield stop
    finally:
        for sig, previous in reversed(installed):
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
