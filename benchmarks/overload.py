"""The overload scenario (issue 17): what each pool serves when offered more than it can do.

Usage: ``python -m benchmarks overload [options]`` (or ``python -m benchmarks.overload``);
``--help`` lists the options. Results: ``results/overload.{json,md,png}``.

The scenario
------------
* Every system is a pool of ``size`` (10) connections; a request borrows one and runs
  ``SELECT pg_sleep(0.005)`` on it.
* **Capacity** ``C`` is measured first: each system in a closed loop at saturation
  (``2 x size`` borrowers that never stop, no deadline), completions per second over
  ``--capacity-seconds``, best of ``--capacity-rounds`` interleaved rounds (other load on
  a shared machine only ever lowers it). ``C`` is the median over the systems (each
  system's own figure is kept). ``--capacity`` skips the measurement, to offer two runs
  the very same load (e.g. before and after a change).
* **Open-loop arrivals**: for each offered load ``L`` (0.8, 1.2, 2 and 5 x ``C``) a
  Poisson schedule of ``L x C`` arrivals per second is drawn once, from a fixed seed, and
  offered to every system alike. A generator task starts each request at its scheduled
  time whether or not earlier ones have finished. A request's deadline and latency
  count from its *scheduled* arrival, so a client that falls behind the schedule
  cannot hide it (``arrival_lag_*`` in the JSON says by how much it did).
* **Deadline** ``D`` (100 ms) per request, the way a service would hold it::

      async with asyncio.timeout(remaining):
          async with pool.acquire(timeout=remaining) as conn:   # remaining, re-read
              await conn.fetchval("SELECT pg_sleep(0.005)")

  asyncpg's pool: the same ``acquire(timeout=)``; psycopg_pool: ``connection(timeout=)``;
  SQLAlchemy has no per-checkout timeout: the engine's ``pool_timeout`` is ``D`` and the
  ``asyncio.timeout`` does the rest.
* **A cell** (one system, one load): a fresh event loop and pool; ``warmup`` seconds of
  arrivals that are not counted (at 1.2x a standing queue takes ~0.5 s to reach the
  deadline), then ``duration`` seconds of arrivals that are; then arrivals stop and
  every request ends (by its deadline at the latest; any still running ``drain``
  seconds after it are cancelled and counted as ``stragglers``). Systems run in a
  random order per load, after waiting for the server to have no other client.

Outcomes (of the requests *arriving* in the window; they add up to ``offered``)
------------------------------------------------------------------------------------
``good``: finished (connection released) by the deadline. ``late``: the result came but
the request finished after the deadline. ``shed``: the pool refused it before the
deadline (a ``TimeoutError`` subclass such as ``PoolTimeout``, or ``TooManyWaiters`` /
psycopg's ``TooManyRequests`` / a ``PoolTimeout`` that is not a ``TimeoutError``, raised
more than ``SHED_MARGIN`` before the deadline while waiting for a connection): a fast
"no". ``timeout_wait``: the deadline passed while it waited for a connection.
``timeout_query``: it had a connection and its query was sent, but the deadline passed
before the result. ``error``: anything else (by type in ``exceptions``).
``completed`` = good + late; ``goodput`` = good / window seconds.

Wasted server time (``wasted_server_s``)
----------------------------------------
Server time spent on the queries of requests that missed their deadline (``late`` and
``timeout_query``), estimated on the client: a late query counts its send-to-result time
(capped at ``S``, the cell's median send-to-result time of the good requests' queries,
~5.3 ms; the nominal 5 ms if there were none);
a query cut by the deadline counts ``S``. The latter is an upper bound: the server
keeps executing a cut query until the driver's cancel request lands (asyncpg and psycopg
open a new connection to send it), which may be before the 5 ms are up.
``wasted_frac`` = wasted / (size x window): the share of the pool's server time lost.
As a check, ``server_active_s`` is PostgreSQL's own count of statement time for the
whole cell (``pg_stat_database.active_time``, warm-up and drain included, read after
the pool's backends have exited) next to ``server_estimate_s``, the same estimate as
above summed over every request of the cell (useful and wasted).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import dataclasses
import datetime
import importlib.util
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from .provenance import _asyncpool_revision, _loadavg, _versions
from .runner import LOOPS, percentile, run_on_loop, settle
from .server import server_version as pg_version
from .server import throwaway_server
from .systems import (
    AsyncpgSystem,
    AsyncpoolSystem,
    PsycopgSystem,
    SqlalchemySystem,
    System,
)

__all__ = (
    "LOADS",
    "OVERLOAD_SYSTEMS",
    "CapacityResult",
    "OverloadCell",
    "fifo_setting",
    "main",
    "poisson_schedule",
    "run",
)

QUERY = "SELECT pg_sleep(0.005)"
#: The query's nominal server time (seconds), used when no query completed in a cell.
QUERY_SECONDS = 0.005
#: Each request's deadline (seconds from its scheduled arrival).
DEADLINE = 0.1
#: Offered loads, as multiples of the measured capacity.
LOADS: tuple[float, ...] = (0.8, 1.2, 2.0, 5.0)
#: A refusal raised more than this long (seconds) before the deadline is a shed, not a
#: timeout (timers may fire up to a millisecond early on uvloop's millisecond clock).
SHED_MARGIN = 0.002
#: Exception classes (by name, anywhere in the MRO) that mean "the pool said no".
REFUSALS = frozenset({"TimeoutError", "PoolTimeout", "TooManyWaiters", "TooManyRequests"})
#: Acquire timeout of the closed-loop capacity measurement (never reached there).
CAPACITY_TIMEOUT = 10.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_clock = time.perf_counter
T = TypeVar("T")

# Outcome codes (index into OUTCOMES); 0: the request never ended (cancelled at the end).
UNFINISHED, GOOD, LATE, SHED, TIMEOUT_WAIT, TIMEOUT_QUERY, ERROR = range(7)
OUTCOMES = ("unfinished", "good", "late", "shed", "timeout_wait", "timeout_query", "error")


# ------------------------------------------------------------------------- systems


def fifo_setting() -> dict[str, Any]:
    """The pool setting that turns asyncpool's overload behaviour off, or ``{}`` if the
    pool has no such setting (then the pool *is* the FIFO).
    """
    import asyncpool

    return (
        {"overload": "fifo"}
        if "overload" in {f.name for f in dataclasses.fields(asyncpool.PoolConfig)}
        else {}
    )


class DeadlineSystem(Protocol):
    """A started :class:`~benchmarks.systems.System` that can run one deadline request."""

    name: ClassVar[str]
    description: ClassVar[str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def extra_stats(self) -> dict[str, Any]: ...

    def connections_opened(self) -> int: ...

    async def deadline_query(self, timeout: float, marks: list[float]) -> None:
        """Borrow a connection waiting at most ``timeout`` seconds, run :data:`QUERY`,
        give it back. Appends the time the connection was in hand (the query is sent
        next) and the time the result came.
        """


async def _asyncpg_style(pool: Any, timeout: float, marks: list[float]) -> None:
    async with pool.acquire(timeout=timeout) as conn:
        marks.append(_clock())
        await conn.fetchval(QUERY)
        marks.append(_clock())


class AsyncpoolOverload(AsyncpoolSystem):
    name = "asyncpool"
    description = "asyncpool.create_pool, default settings (min_size = max_size = N)"

    async def deadline_query(self, timeout: float, marks: list[float]) -> None:
        await _asyncpg_style(self._pool, timeout, marks)

    def extra_stats(self) -> dict[str, Any]:
        # Every counter the pool has (the overload work will add its own).
        stats = self._pool.stats()
        return {
            f.name: getattr(stats, f.name)
            for f in dataclasses.fields(stats)
            if f.name.endswith("_total") and isinstance(getattr(stats, f.name), int | float)
        }


class AsyncpoolFifoOverload(AsyncpoolOverload):
    name = "asyncpool-fifo"
    description = "asyncpool.create_pool, overload='fifo' (the strict FIFO queue)"

    async def start(self) -> None:
        import asyncpool

        self._pool = await asyncpool.create_pool(
            self.dsn, min_size=self.size, max_size=self.size, **fifo_setting()
        )
        self._borrow = self._pool.acquire


class AsyncpgOverload(AsyncpgSystem):
    async def deadline_query(self, timeout: float, marks: list[float]) -> None:
        await _asyncpg_style(self._pool, timeout, marks)


class PsycopgOverload(PsycopgSystem):
    async def deadline_query(self, timeout: float, marks: list[float]) -> None:
        async with self._pool.connection(timeout=timeout) as conn:
            marks.append(_clock())
            await (await conn.execute(QUERY)).fetchone()
            marks.append(_clock())


class SqlalchemyOverload(SqlalchemySystem):
    description = (
        "SQLAlchemy async engine, asyncpg driver, pool_size=N, max_overflow=0, "
        f"pool_timeout={DEADLINE:g} (no per-checkout timeout)"
    )
    pool_timeout = DEADLINE

    async def start(self) -> None:
        from sqlalchemy import text

        await super().start()
        self._sql["overload"] = text(QUERY)

    async def deadline_query(self, timeout: float, marks: list[float]) -> None:
        # The engine's pool_timeout bounds the checkout; the caller's asyncio.timeout
        # holds the real deadline.
        async with self._engine.connect() as conn:
            marks.append(_clock())
            (await conn.execute(self._sql["overload"])).scalar()
            marks.append(_clock())


OVERLOAD_SYSTEMS: dict[str, type[System]] = {
    "asyncpool": AsyncpoolOverload,
    "asyncpool-fifo": AsyncpoolFifoOverload,
    "asyncpg": AsyncpgOverload,
    "psycopg": PsycopgOverload,
    "sqlalchemy": SqlalchemyOverload,
}


def describe_systems(names: list[str]) -> dict[str, str]:
    """What each system is, saying so when asyncpool has no overload setting yet."""
    out = {name: OVERLOAD_SYSTEMS[name].description for name in names}
    if not fifo_setting():
        note = "; this asyncpool has no 'overload' setting: it is the strict FIFO pool"
        for name in ("asyncpool", "asyncpool-fifo"):
            if name in out:
                out[name] = "asyncpool.create_pool, default settings (min_size = max_size = N)"
                out[name] += note
    return out


# ------------------------------------------------------------------ the measurement


@dataclasses.dataclass
class CapacityResult:
    """A system's closed-loop throughput at saturation (no deadline)."""

    system: str
    status: str = "ok"
    error: str | None = None
    borrowers: int = 0
    window_s: float = 0.0
    completed: int = 0
    throughput: float = 0.0
    query_ms_median: float | None = None
    errors: int = 0
    #: Throughput of every round (``--capacity-rounds``); the result is the best one.
    rounds: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class OverloadCell:
    """What one system did at one offered load (see the module docstring)."""

    system: str
    load: float
    offered_rate: float
    status: str = "ok"
    error: str | None = None
    window_s: float = 0.0
    offered: int = 0
    completed: int = 0
    good: int = 0
    late: int = 0
    shed: int = 0
    timeout_wait: int = 0
    timeout_query: int = 0
    errors: int = 0
    unfinished: int = 0
    goodput: float = 0.0
    goodput_x: float = 0.0
    p50_good_ms: float | None = None
    p99_good_ms: float | None = None
    max_good_ms: float | None = None
    shed_p50_ms: float | None = None
    query_ms_median: float | None = None
    wasted_server_s: float = 0.0
    wasted_frac: float = 0.0
    server_estimate_s: float = 0.0
    server_active_s: float | None = None
    arrival_lag_p50_ms: float | None = None
    arrival_lag_p99_ms: float | None = None
    arrival_lag_max_ms: float | None = None
    client_cpu: float | None = None
    stragglers: int = 0
    connections_opened: int = 0
    #: Key figures of each repetition, in run order (``--repeat``); the cell is the
    #: median-goodput one.
    repeats: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    exceptions: dict[str, int] = dataclasses.field(default_factory=dict)
    pool_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0


def poisson_schedule(rate: float, seconds: float, seed: int) -> list[float]:
    """Arrival offsets (seconds, ascending) of a Poisson process of ``rate`` per second."""
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _is_refusal(exc: BaseException) -> bool:
    return any(cls.__name__ in REFUSALS for cls in type(exc).__mro__)


def _classify(exc: BaseException, sent: bool, left: float) -> int:
    """The outcome of a request that raised ``exc`` with ``left`` seconds to its deadline."""
    if not sent:
        if _is_refusal(exc) or isinstance(exc, TimeoutError):
            return SHED if left > SHED_MARGIN else TIMEOUT_WAIT
        return ERROR
    # The connection was lent and the query sent: whatever ends it at the deadline
    # (our asyncio.timeout, a deadline-capped query's timeout or cancellation) is a
    # timeout; anything earlier is an error.
    return TIMEOUT_QUERY if left <= SHED_MARGIN else ERROR


@dataclasses.dataclass
class _Trace:
    """Per-request times of one cell (perf_counter seconds; NaN: did not happen)."""

    arrival: list[float]
    start: list[float]
    end: list[float]
    sent: list[float]
    result: list[float]
    outcome: bytearray
    #: The exception's type name, for the requests that raised one.
    exceptions: dict[int, str]


async def _open_loop(
    system: DeadlineSystem, offsets: list[float], deadline: float, drain: float
) -> tuple[_Trace, float, float, int]:
    """Offer requests at ``offsets`` (seconds from now). Returns the trace, the
    perf_counter time of offset 0, this process's CPU seconds per second over the
    schedule, and how many requests had to be cancelled at the end.
    """
    loop = asyncio.get_running_loop()
    n = len(offsets)
    nan = math.nan
    base = _clock() + 0.01
    trace = _Trace(
        arrival=[base + x for x in offsets],
        start=[nan] * n,
        end=[nan] * n,
        sent=[nan] * n,
        result=[nan] * n,
        outcome=bytearray(n),
        exceptions={},
    )
    running: set[asyncio.Task[None]] = set()
    query = system.deadline_query

    async def request(k: int, due: float) -> None:
        t_deadline = due + deadline
        now = _clock()
        trace.start[k] = now
        marks: list[float] = []
        try:
            async with asyncio.timeout(t_deadline - now):
                await query(max(0.0, t_deadline - _clock()), marks)
        except Exception as exc:
            t = _clock()
            code = _classify(exc, bool(marks), t_deadline - t)
            trace.exceptions[k] = type(exc).__name__
        else:
            t = _clock()
            code = GOOD if t <= t_deadline else LATE
        trace.end[k] = t
        trace.outcome[k] = code
        if marks:
            trace.sent[k] = marks[0]
            if len(marks) > 1:
                trace.result[k] = marks[1]

    async def generate() -> None:
        arrival = trace.arrival
        i = 0
        while i < n:
            now = _clock()
            while i < n and arrival[i] <= now:
                task = loop.create_task(request(i, arrival[i]))
                running.add(task)
                task.add_done_callback(running.discard)
                i += 1
            if i < n:
                # At least 1 ms: uvloop rounds shorter timers to 0 (a busy loop).
                await asyncio.sleep(max(arrival[i] - _clock(), 0.001))

    generator = loop.create_task(generate())
    cpu0 = time.process_time()
    try:
        await generator
    finally:
        generator.cancel()
    span = max(_clock() - base, 1e-9)
    cpu = (time.process_time() - cpu0) / span
    stragglers = 0
    if running:
        _, pending = await asyncio.wait(set(running), timeout=deadline + drain)
        stragglers = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
    return trace, base, cpu, stragglers


def _ms(values: list[float], q: float) -> float | None:
    return percentile(values, q) * 1e3 if values else None


def _summarise(
    cell: OverloadCell,
    trace: _Trace,
    window: tuple[float, float],
    deadline: float,
    size: int,
    capacity: float,
) -> None:
    """Fill ``cell``'s counts and figures from the requests arriving in ``window``."""
    arrival, outcome = trace.arrival, trace.outcome
    lo = bisect.bisect_left(arrival, window[0])
    hi = bisect.bisect_left(arrival, window[1])
    seconds = window[1] - window[0]
    counts = collections.Counter(outcome[lo:hi])
    cell.window_s = seconds
    cell.offered = hi - lo
    cell.good = counts[GOOD]
    cell.late = counts[LATE]
    cell.completed = cell.good + cell.late
    cell.shed = counts[SHED]
    cell.timeout_wait = counts[TIMEOUT_WAIT]
    cell.timeout_query = counts[TIMEOUT_QUERY]
    cell.errors = counts[ERROR]
    cell.unfinished = counts[UNFINISHED]
    cell.goodput = cell.good / seconds
    cell.goodput_x = cell.goodput / capacity

    good = sorted(trace.end[k] - arrival[k] for k in range(lo, hi) if outcome[k] == GOOD)
    cell.p50_good_ms = _ms(good, 50)
    cell.p99_good_ms = _ms(good, 99)
    cell.max_good_ms = good[-1] * 1e3 if good else None
    shed = sorted(trace.end[k] - arrival[k] for k in range(lo, hi) if outcome[k] == SHED)
    cell.shed_p50_ms = _ms(shed, 50)
    lags = sorted(
        trace.start[k] - arrival[k] for k in range(lo, hi) if not math.isnan(trace.start[k])
    )
    cell.arrival_lag_p50_ms = _ms(lags, 50)
    cell.arrival_lag_p99_ms = _ms(lags, 99)
    cell.arrival_lag_max_ms = lags[-1] * 1e3 if lags else None

    # Server time per query: S is the median send-to-result time of the good requests'
    # queries (not of all completed ones: a query whose result was held up, e.g. behind
    # a cancellation or a stalled loop, is no measure of the server's time); a query cut
    # by the deadline counts S (an upper bound, see the module docstring).
    n = len(arrival)
    query_times = sorted(trace.result[k] - trace.sent[k] for k in range(n) if outcome[k] == GOOD)
    s = statistics.median(query_times) if query_times else QUERY_SECONDS
    cell.query_ms_median = s * 1e3 if query_times else None

    def server_time(k: int) -> float:
        if math.isnan(trace.sent[k]):
            return 0.0
        if math.isnan(trace.result[k]):
            return s
        return min(trace.result[k] - trace.sent[k], s)

    cell.server_estimate_s = sum(server_time(k) for k in range(n))
    cell.wasted_server_s = sum(
        server_time(k) for k in range(lo, hi) if outcome[k] in (LATE, TIMEOUT_QUERY)
    )
    cell.wasted_frac = cell.wasted_server_s / (size * seconds)
    raised = collections.Counter(
        f"{OUTCOMES[outcome[k]]}: {name}" for k, name in trace.exceptions.items() if lo <= k < hi
    )
    cell.exceptions = dict(sorted(raised.items()))


async def _closed_loop(
    system: DeadlineSystem, borrowers: int, warmup: float, seconds: float
) -> CapacityResult:
    result = CapacityResult(system.name, borrowers=borrowers)
    ends: list[float] = []
    query_times: list[float] = []
    stop = False

    async def borrower() -> None:
        while not stop:
            marks: list[float] = []
            try:
                await system.deadline_query(CAPACITY_TIMEOUT, marks)
            except Exception:
                result.errors += 1
                await asyncio.sleep(0.01)
                continue
            ends.append(_clock())
            query_times.append(marks[1] - marks[0])

    tasks = [asyncio.create_task(borrower()) for _ in range(borrowers)]
    await asyncio.sleep(warmup)
    w0 = _clock()
    await asyncio.sleep(seconds)
    w1 = _clock()
    stop = True
    _, pending = await asyncio.wait(tasks, timeout=CAPACITY_TIMEOUT)
    for task in pending:
        task.cancel()
    result.window_s = w1 - w0
    result.completed = bisect.bisect_right(ends, w1) - bisect.bisect_left(ends, w0)
    result.throughput = result.completed / result.window_s
    if query_times:
        result.query_ms_median = statistics.median(query_times) * 1e3
    return result


async def _with_system(
    name: str, dsn: str, size: int, body: Callable[[DeadlineSystem], Awaitable[T]]
) -> T:
    """Start a fresh ``name`` system, run ``body`` on it, stop it (bounded)."""
    system: Any = OVERLOAD_SYSTEMS[name](dsn, size, 2 * size)
    try:
        async with asyncio.timeout(30):
            await system.start()
    except BaseException:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await system.stop()
        raise
    try:
        return await body(system)
    finally:
        async with asyncio.timeout(30):
            await system.stop()


async def _server_active_s(dsn: str) -> float | None:
    """PostgreSQL's statement time so far in this database (seconds; PostgreSQL 14+)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT active_time FROM pg_stat_database WHERE datname = current_database()"
        )
    except Exception:
        return None
    finally:
        await conn.close()
    return None if value is None else float(value) / 1e3


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run measures, resolved from the arguments."""

    systems: list[str]
    loads: list[float]
    loop: str
    size: int
    deadline: float
    warmup: float
    duration: float
    drain: float
    capacity: float | None
    capacity_seconds: float
    capacity_rounds: int
    seed: int
    repeat: int


def measure_capacity(settings: Settings, dsn: str, name: str) -> CapacityResult:
    """One system's closed-loop throughput at saturation (blocking)."""

    async def body(system: DeadlineSystem) -> CapacityResult:
        warmup = min(0.3, settings.capacity_seconds)
        return await _closed_loop(system, 2 * settings.size, warmup, settings.capacity_seconds)

    try:
        return run_on_loop(settings.loop, _with_system(name, dsn, settings.size, body))
    except Exception as exc:
        return CapacityResult(name, status="error", error=f"{type(exc).__name__}: {exc}"[:500])


def measure_cell(
    settings: Settings, dsn: str, name: str, load: float, capacity: float, offsets: list[float]
) -> OverloadCell:
    """One system at one offered load (blocking); ``offsets`` is the arrival schedule."""
    cell = OverloadCell(name, load, load * capacity)
    started = _clock()

    async def body(system: DeadlineSystem) -> None:
        trace, base, cpu, stragglers = await _open_loop(
            system, offsets, settings.deadline, settings.drain
        )
        window = (base + settings.warmup, base + settings.warmup + settings.duration)
        _summarise(cell, trace, window, settings.deadline, settings.size, capacity)
        cell.client_cpu = cpu
        cell.stragglers = stragglers
        cell.pool_stats = system.extra_stats()
        cell.connections_opened = system.connections_opened()

    settle(dsn)
    active0 = run_on_loop("asyncio", _server_active_s(dsn))
    try:
        run_on_loop(settings.loop, _with_system(name, dsn, settings.size, body))
    except Exception as exc:
        cell.status = "error"
        cell.error = f"{type(exc).__name__}: {exc}"[:500]
    settle(dsn)  # the pool's backends have exited: their statistics are in
    active1 = run_on_loop("asyncio", _server_active_s(dsn))
    if active0 is not None and active1 is not None:
        cell.server_active_s = active1 - active0
    cell.wall_s = _clock() - started
    return cell


# ------------------------------------------------------------------------- reports


def _num(x: float | None, fmt: str = ",.0f") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return format(x, fmt)


TABLE_HEADER = (
    "| offered | system | goodput/s | goodput x C | good % | p99 good ms | shed | timeouts "
    "(wait + query) | late | errors | wasted server s | wasted % |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(cell: Mapping[str, Any]) -> str:
    """One markdown row of the main table."""
    if cell["status"] != "ok":
        return f"| {cell['load']:g}x | {cell['system']} | {cell['status']}: {cell['error']} |"
    timeouts = cell["timeout_wait"] + cell["timeout_query"]
    runs = [r["goodput_x"] for r in cell.get("repeats") or []]
    spread = f" ({min(runs):.3f}-{max(runs):.3f})" if runs else ""
    return (
        f"| {cell['load']:g}x ({cell['offered_rate']:,.0f}/s) | {cell['system']} "
        f"| {_num(cell['goodput'])} | {cell['goodput_x']:.3f}{spread} "
        f"| {100 * cell['good'] / max(cell['offered'], 1):.0f} % "
        f"| {_num(cell['p99_good_ms'], '.1f')} "
        f"| {cell['shed']:,} | {timeouts:,} ({cell['timeout_wait']:,} + "
        f"{cell['timeout_query']:,}) | {cell['late']:,} | {cell['errors']:,} "
        f"| {cell['wasted_server_s']:.2f} | {100 * cell['wasted_frac']:.0f} % |"
    )


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The report: setup, capacity, the main table, diagnostics, column meanings."""
    meta = doc["meta"]
    capacity = doc["capacity"]
    lines = [
        "# Overload benchmark (issue 17)",
        "",
        f"Generated by `{meta['command']}` on {meta['started']} "
        f"({meta['elapsed_s']:.0f} s). asyncpool {meta['asyncpool_revision']}; "
        f"{meta['loop']} event loop; PostgreSQL {meta['server_version']} ({meta['server']}); "
        f"Python {meta['python']}; {meta['cpu_count']} CPU cores shared by client and "
        f"server; load average {meta['loadavg_start']} before, {meta['loadavg_end']} after.",
        "",
        f"- Scenario: pool of {meta['size']}, each request `{QUERY}`, deadline "
        f"{meta['deadline_s'] * 1e3:g} ms from its scheduled arrival (`asyncio.timeout` around "
        "the pool's own acquire timeout), Poisson arrivals (the same schedule for every "
        f"system), {meta['warmup_s']:g} s of warm-up then {meta['duration_s']:g} s counted "
        "per cell.",
        f"- Capacity C = **{capacity['value']:,.0f} requests/s** ({capacity['method']}).",
    ]
    per_system = capacity.get("per_system") or []
    if per_system:
        lines.append(
            "  Closed loop per system: "
            + ", ".join(
                f"{c['system']} {c['throughput']:,.0f}/s"
                if c["status"] == "ok"
                else f"{c['system']} {c['status']}"
                for c in per_system
            )
            + "."
        )
    lines += ["", "Systems:", ""]
    lines += [f"- `{name}`: {text}" for name, text in meta["systems"].items()]
    for what, why in meta["skipped"].items():
        lines.append(f"- skipped `{what}`: {why}")
    lines += ["", TABLE_HEADER]
    lines += [table_row(c) for c in doc["cells"]]
    lines += [
        "",
        "Diagnostics: the client's CPU (share of one core over the schedule), how late the "
        "generator started requests (p99), PostgreSQL's statement time for the whole cell "
        "(`pg_stat_database.active_time`) against the client's estimate of it, the same as a "
        "share of the pool's time over the schedule (server busy), the median query time S, "
        "the server connections the pool opened (10 unless it replaced some), and the "
        "exceptions of the counted requests by outcome.",
        "",
        "| offered | system | client CPU | arrival lag p99 ms | server active s | estimate s "
        "| server busy | S ms | conns opened | exceptions |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    span = meta["size"] * (meta["warmup_s"] + meta["duration_s"])
    for c in doc["cells"]:
        if c["status"] != "ok":
            continue
        exceptions = ", ".join(f"{k} {v:,}" for k, v in c["exceptions"].items()) or "-"
        lines.append(
            f"| {c['load']:g}x | {c['system']} | {_num(100 * (c['client_cpu'] or 0), '.0f')} % "
            f"| {_num(c['arrival_lag_p99_ms'], '.1f')} | {_num(c['server_active_s'], '.2f')} "
            f"| {c['server_estimate_s']:.2f} "
            f"| {_num(100 * c['server_active_s'] / span if c['server_active_s'] else None)} % "
            f"| {_num(c['query_ms_median'], '.2f')} | {c['connections_opened']} "
            f"| {exceptions} |"
        )
    lines += ["", COLUMNS, ""]
    return "\n".join(lines)


COLUMNS = """Columns (requests arriving in the counted window; see `benchmarks/overload.py`):
**goodput/s**: requests finished inside their deadline, per second; **goodput x C**: the
same over the capacity (with `--repeat`, the run with the median goodput, and the range
over the runs in brackets); **good %**: of the requests offered; **p99 good**: 99th
percentile latency of the good requests, from scheduled arrival to release; **shed**:
refused by the pool more than 2 ms before the deadline (a fast "no"); **timeouts**: the
deadline passed while waiting for a connection + after the query was sent; **late**: the
result came after the deadline; **wasted server s**: server time spent on the queries of
late and timed-out-in-query requests (client estimate: send-to-result time, or the median
query time S for a query cut by the deadline, an upper bound); **wasted %**: that over the
pool's server time (size x window)."""


def write_plot(path: Path, doc: Mapping[str, Any]) -> None:
    """Goodput and wasted server time against offered load, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _STYLE

    cells = [c for c in doc["cells"] if c["status"] == "ok"]
    systems = list(dict.fromkeys(c["system"] for c in cells))
    loads = sorted({c["load"] for c in cells})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5), gridspec_kw={"width_ratios": [3, 2]})
    if loads:
        grid = sorted({*loads, 1.0})
        left.plot(
            grid,
            [min(x, 1.0) for x in grid],
            color="grey",
            linestyle="--",
            linewidth=1,
            label="ideal: min(offered, C)",
        )
    left.axhline(0.8, color="grey", linestyle=":", linewidth=1, label="0.8x C (issue 17 target)")
    style = {**_STYLE, "asyncpool-fifo": {"color": "#ff7f0e", "marker": "s", "linestyle": "--"}}
    for system in systems:
        points = sorted(
            (c["load"], c["goodput_x"], c["wasted_frac"]) for c in cells if c["system"] == system
        )
        x, good, wasted = zip(*points, strict=True)
        left.plot(x, good, label=system, **style.get(system, {}))
        right.plot(x, [100 * w for w in wasted], label=system, **style.get(system, {}))
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(loads)
        ax.set_xticklabels([f"{x:g}x" for x in loads])
        ax.minorticks_off()
        ax.set_xlabel("offered load (x capacity C)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    left.set_ylabel("goodput (x C): done inside the deadline")
    left.set_title(f"Goodput, C = {doc['capacity']['value']:,.0f} req/s", fontsize=10)
    right.set_ylabel("wasted server time, % of the pool's")
    right.set_title("Wasted server time", fontsize=10)
    left.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m benchmarks overload``."""

    def floats(text: str) -> list[float]:
        return [float(v) for v in text.split(",") if v.strip()]

    def names(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in OVERLOAD_SYSTEMS]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)}; choose from {', '.join(OVERLOAD_SYSTEMS)}"
            )
        return values

    p = argparse.ArgumentParser(
        prog="python -m benchmarks overload",
        description="Goodput of each pool under open-loop overload (issue 17): pool of 10, "
        f"`{QUERY}`, a {DEADLINE * 1e3:g} ms deadline per request, offered load as "
        "multiples of the measured capacity.",
    )
    p.add_argument(
        "--systems",
        type=names,
        default=list(OVERLOAD_SYSTEMS),
        help="comma-separated subset of: " + ", ".join(OVERLOAD_SYSTEMS),
    )
    p.add_argument(
        "--loads",
        type=floats,
        default=list(LOADS),
        help="offered loads as multiples of capacity (default 0.8,1.2,2,5)",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=None,
        help="event loop (default uvloop when installed, like the main grid's; else asyncio)",
    )
    p.add_argument("--size", type=int, default=10, help="pool size (default 10)")
    p.add_argument("--deadline-ms", type=float, default=DEADLINE * 1e3, help="deadline per request")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of arrivals not counted (default 1)"
    )
    p.add_argument(
        "--duration", type=float, default=3.0, help="seconds of arrivals counted (default 3)"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="seconds past the last deadline before stragglers are cancelled (default 1)",
    )
    p.add_argument(
        "--capacity",
        type=float,
        default=None,
        help="requests/s to take as the capacity instead of measuring it (to offer two "
        "runs the same load)",
    )
    p.add_argument(
        "--capacity-seconds",
        type=float,
        default=2.0,
        help="closed-loop window per system when measuring capacity (default 2)",
    )
    p.add_argument(
        "--capacity-rounds",
        type=int,
        default=2,
        help="closed-loop rounds per system; each keeps its best (default 2)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every cell this many times (same schedule, fresh order each time); keep "
        "the median-goodput run (default 1)",
    )
    p.add_argument("--seed", type=int, default=17, help="seed of the arrival schedules")
    p.add_argument(
        "--dsn",
        default=os.environ.get("ASYNCPOOL_BENCH_DSN"),
        help="use this server instead of starting a throwaway one",
    )
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="overload", help="basename of the result files")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p.parse_args(argv)


def _median_cell(runs: list[OverloadCell]) -> OverloadCell:
    """The run with the median goodput (the lower of the middle two), with every run's
    goodput_x in ``repeats``.
    """
    ordered = sorted(runs, key=lambda c: (c.status != "ok", c.goodput))
    chosen = ordered[(len(ordered) - 1) // 2]
    keys = ("status", "goodput_x", "wasted_server_s", "server_active_s", "arrival_lag_p99_ms")
    chosen.repeats = [{k: getattr(c, k) for k in keys} for c in runs] if len(runs) > 1 else []
    return chosen


def _best_capacity(rounds: list[CapacityResult]) -> CapacityResult:
    best = max(rounds, key=lambda c: (c.status == "ok", c.throughput))
    best.rounds = [c.throughput for c in rounds]
    return best


def _missing(cls: type[System]) -> str | None:
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    return f"missing package(s): {', '.join(missing)}" if missing else None


def _default_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure what ``args`` asks for; write the result files; return the JSON document."""
    from .report import write_json

    started = time.time()
    loadavg_start = _loadavg()
    skipped = {name: why for name in args.systems if (why := _missing(OVERLOAD_SYSTEMS[name]))}
    settings = Settings(
        systems=[s for s in args.systems if s not in skipped],
        loads=args.loads,
        loop=args.loop or _default_loop(),
        size=args.size,
        deadline=args.deadline_ms / 1e3,
        warmup=args.warmup,
        duration=args.duration,
        drain=args.drain,
        capacity=args.capacity,
        capacity_seconds=args.capacity_seconds,
        capacity_rounds=args.capacity_rounds,
        seed=args.seed,
        repeat=args.repeat,
    )
    rng = random.Random(settings.seed)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with throwaway_server(args.dsn) as (dsn, server_note):
        server_version = run_on_loop("asyncio", pg_version(dsn))
        per_system: list[CapacityResult] = []
        if settings.capacity is None:
            measured: dict[str, list[CapacityResult]] = {}
            for _ in range(settings.capacity_rounds):
                order = settings.systems[:]
                rng.shuffle(order)
                for name in order:
                    settle(dsn)
                    result = measure_capacity(settings, dsn, name)
                    measured.setdefault(name, []).append(result)
                    progress(f"capacity {name:15} {result.throughput:8,.0f}/s {result.error or ''}")
            per_system = [_best_capacity(measured[name]) for name in settings.systems]
            ok = [c.throughput for c in per_system if c.status == "ok" and c.throughput > 0]
            if not ok:
                raise RuntimeError("no system completed the capacity measurement")
            capacity = statistics.median(ok)
            method = (
                f"median over the systems of their closed-loop throughput: {2 * settings.size} "
                f"borrowers, no deadline, best of {settings.capacity_rounds} rounds of "
                f"{settings.capacity_seconds:g} s (other load on the machine only lowers it)"
            )
        else:
            capacity = settings.capacity
            method = "given with --capacity"
        progress(f"capacity C = {capacity:,.0f} requests/s")
        runs: dict[tuple[float, str], list[OverloadCell]] = {}
        total = settings.warmup + settings.duration
        for load in settings.loads:
            seed = settings.seed * 1000 + round(load * 100)
            offsets = poisson_schedule(load * capacity, total, seed)
            for rep in range(settings.repeat):
                order = settings.systems[:]
                rng.shuffle(order)
                for name in order:
                    cell = measure_cell(settings, dsn, name, load, capacity, offsets)
                    runs.setdefault((load, name), []).append(cell)
                    label = f"run {rep + 1}: " if settings.repeat > 1 else ""
                    progress(label + table_row(dataclasses.asdict(cell)))
    cells = [
        _median_cell(runs[(load, name)]) for load in settings.loads for name in settings.systems
    ]
    doc: dict[str, Any] = {
        "meta": {
            "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
                timespec="seconds"
            ),
            "elapsed_s": time.time() - started,
            "command": "python -m benchmarks overload " + shlex.join(getattr(args, "argv", [])),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": loadavg_start,
            "loadavg_end": _loadavg(),
            "server": server_note,
            "server_version": server_version,
            "versions": _versions(),
            "asyncpool_revision": _asyncpool_revision(),
            "asyncpool_overload_setting": bool(fifo_setting()),
            "loop": settings.loop,
            "size": settings.size,
            "query": QUERY,
            "deadline_s": settings.deadline,
            "warmup_s": settings.warmup,
            "duration_s": settings.duration,
            "drain_s": settings.drain,
            "shed_margin_s": SHED_MARGIN,
            "seed": settings.seed,
            "repeat": settings.repeat,
            "loads": settings.loads,
            "systems": describe_systems(settings.systems),
            "skipped": skipped,
        },
        "capacity": {
            "value": capacity,
            "method": method,
            "per_system": [dataclasses.asdict(c) for c in per_system],
        },
        "cells": [dataclasses.asdict(c) for c in cells],
    }
    name = args.name
    write_json(out_dir / f"{name}.json", doc)
    (out_dir / f"{name}.md").write_text(render_markdown(doc))
    if not args.no_plot:
        write_plot(out_dir / f"{name}.png", doc)
    progress(f"Results: {out_dir / name}.{{json,md}}" + ("" if args.no_plot else " and .png"))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks overload``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = argv
    run(args, progress=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
