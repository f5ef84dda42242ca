"""Pure pool overhead: microseconds per acquire+release cycle, one borrower, no query.

* ``asyncpool (fake)``: ``create_pool(connect=fake_connect, min_size=1, max_size=1)``
  with a connection object that does nothing, so only the pool's own code runs.
* ``pinned (fake)``: the minimal FIFO of :mod:`benchmarks.systems` over the same fake.
* ``asyncpool``, ``psycopg``, ``sqlalchemy``, ``asyncpg-noreset``: a real server, but
  their acquire+release of an idle connection does no I/O, so this is still overhead.
* ``asyncpg``: a real server, and its release always sends the reset query: its
  figure includes that round trip (which is the point of asyncpg issue #271).

Each figure is the best of ``repeats`` batches, each running for ``batch_seconds``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from .runner import run_on_loop, settle
from .systems import PEER_ACQUIRE_TIMEOUT, PinnedPool, _no_reset, available_systems

__all__ = ("FakeConnection", "MachineryResult", "fake_connect", "run_machinery")


class _FakeProtocol:
    """The three protocol methods asyncpool reads when a lease ends."""

    def is_connected(self) -> bool:
        return True

    def is_in_transaction(self) -> bool:
        return False

    def _is_cancelling(self) -> bool:
        return False


class FakeConnection:
    """Just enough of ``asyncpg.Connection`` for a pool to lend it; does no I/O.

    It also carries the private attributes of ``asyncpg.Connection`` that asyncpool
    reads when a lease ends (``_protocol``, ``_aborted``, ``_top_xact``,
    ``_pool_release_ctr``), so the fake takes the same code path as a real connection.
    Slotted like ``asyncpg.Connection`` (a class whose instances have a ``__dict__`` gets
    a slower, forwarding lease wrapper: see ``asyncpool._connection.wrapper_class``).
    """

    __slots__ = ("_aborted", "_pool_release_ctr", "_protocol", "_top_xact")

    def __init__(self) -> None:
        self._protocol = _FakeProtocol()
        self._aborted = False
        self._pool_release_ctr = 0
        self._top_xact: Any = None

    def is_closed(self) -> bool:
        return False

    def is_in_transaction(self) -> bool:
        return False

    async def close(self, timeout: float | None = None) -> None:
        return None

    def terminate(self) -> None:
        return None

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        return "SELECT 1"


async def fake_connect(*args: Any, **kwargs: Any) -> FakeConnection:
    """A ``connect=`` callable for asyncpool that returns a :class:`FakeConnection`."""
    return FakeConnection()


@dataclasses.dataclass
class MachineryResult:
    """Microseconds per acquire+release cycle for one system on one loop."""

    system: str
    loop: str
    server: str  # "fake" | "real"
    us_per_cycle: float | None = None
    us_median: float | None = None
    cycles: int = 0
    note: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def _time_cycles(
    acquire: Callable[[], Any], batch_seconds: float, repeats: int
) -> tuple[float, float, int]:
    clock = time.perf_counter
    # Calibrate the batch size so one batch lasts about batch_seconds.
    n = 100
    while True:
        t0 = clock()
        for _ in range(n):
            async with acquire():
                pass
        elapsed = clock() - t0
        if elapsed >= batch_seconds / 4 or n >= 10_000_000:
            break
        n *= 4
    n = max(100, int(n * batch_seconds / max(elapsed, 1e-9)))
    samples = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(n):
            async with acquire():
                pass
        samples.append((clock() - t0) / n * 1e6)
    return min(samples), statistics.median(samples), n * repeats


async def _machinery_system(
    name: str, dsn: str, batch_seconds: float, repeats: int
) -> tuple[float, float, int]:
    if name in ("asyncpool (fake)", "asyncpool"):
        import asyncpool

        kwargs: dict[str, Any] = (
            {"connect": fake_connect, "min_size": 1, "max_size": 1}
            if name.endswith("(fake)")
            else {"min_size": 1, "max_size": 1}
        )
        async with asyncpool.create_pool(None if "fake" in name else dsn, **kwargs) as pool:
            return await _time_cycles(pool.acquire, batch_seconds, repeats)
    if name == "pinned (fake)":
        fifo = PinnedPool([FakeConnection()])
        return await _time_cycles(fifo.acquire, batch_seconds, repeats)
    if name in ("asyncpg", "asyncpg-noreset"):
        import asyncpg

        extra: dict[str, Any] = {"reset": _no_reset} if name == "asyncpg-noreset" else {}
        async with asyncpg.create_pool(dsn, min_size=1, max_size=1, **extra) as apool:
            return await _time_cycles(apool.acquire, batch_seconds, repeats)
    if name == "psycopg":
        from psycopg_pool import AsyncConnectionPool

        async with AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=1,
            open=False,
            timeout=PEER_ACQUIRE_TIMEOUT,
            kwargs={"autocommit": True},
        ) as ppool:
            await ppool.wait()
            return await _time_cycles(ppool.connection, batch_seconds, repeats)
    if name == "sqlalchemy":
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(
            dsn.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=1, max_overflow=0
        )
        try:
            return await _time_cycles(engine.connect, batch_seconds, repeats)
        finally:
            await engine.dispose()
    raise ValueError(f"unknown machinery system {name!r}")


MACHINERY_SYSTEMS: dict[str, tuple[str, str, str]] = {
    # name: (server, underlying system for availability, note)
    "asyncpool (fake)": ("fake", "asyncpool", "fake connect=, min_size=max_size=1"),
    "pinned (fake)": ("fake", "pinned", "minimal FIFO over a fake connection"),
    "asyncpool": ("real", "asyncpool", "real server; no I/O on acquire/release"),
    "psycopg": ("real", "psycopg", "real server; no I/O on acquire/release"),
    "sqlalchemy": ("real", "sqlalchemy", "real server; no I/O on acquire/release"),
    "asyncpg-noreset": ("real", "asyncpg-noreset", "real server; reset= no-op"),
    "asyncpg": ("real", "asyncpg", "real server; includes the reset round trip per release"),
}


def run_machinery(
    dsn: str,
    loops: list[str],
    *,
    batch_seconds: float = 0.2,
    repeats: int = 5,
    systems: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[MachineryResult]:
    """Measure every machinery system on every loop (blocking)."""
    usable = available_systems()
    results: list[MachineryResult] = []
    for loop in loops:
        for name, (server, base, note) in MACHINERY_SYSTEMS.items():
            if systems is not None and base not in systems:
                continue
            result = MachineryResult(name, loop, server, note=note)
            if usable.get(base):
                result.error = usable[base]
            else:
                try:
                    settle(dsn)
                    best, median, cycles = run_on_loop(
                        loop, _machinery_system(name, dsn, batch_seconds, repeats)
                    )
                    result.us_per_cycle, result.us_median, result.cycles = best, median, cycles
                except Exception as exc:
                    result.error = f"{type(exc).__name__}: {exc}"[:500]
            results.append(result)
            if progress is not None:
                progress(name)
    return results
