"""One measurement cell: a system, a workload, a number of borrowers and an event loop.

How a cell is measured
----------------------
* A fresh event loop (asyncio's default, or uvloop) and a fresh pool per cell.
* ``concurrency`` borrower tasks start together and repeat the workload's operation
  in a closed loop. Each operation's latency runs from before the acquire to after
  the release, so it includes the wait for a connection.
* Warm-up: at least ``warmup`` seconds *and* until every borrower has completed one
  operation (with 10,000 borrowers on 10 connections the first round takes a while),
  but no longer than ``warmup_cap``; ``steady`` records whether the first round ended.
* Window: the next ``duration`` seconds. Throughput counts operations completed in the
  window; p50/p99 are over their latencies. ``max`` also counts the oldest operation
  still in flight at the end of the window (a lower bound of its latency), so a
  borrower starved by an unfair pool shows up.
* Before each cell the harness waits until no other client is connected to the
  server (``settle``): backends left exiting by the previous cell (hundreds, after
  the per-request baseline) would otherwise slow it down.
* A borrower that has run operations for 5 ms / ``concurrency`` without any other
  borrower running in between (so without suspending: an ``acquire`` of an idle
  connection) yields with ``sleep(0)``, so the timekeeper still runs and a loop round
  over all borrowers stays around 5 ms. Operations that suspend never pay for it.
* Then the borrowers stop after their current operation; any still running after
  ``drain_timeout`` (typically thousands queued on a slow system) are cancelled and
  counted in ``extra["cancelled_after_window"]``. A cell in which no operation
  completed during the window is marked ``timeout``; a pool that fails to start or
  close within its time limit, ``error``. Failed operations are counted by exception
  type, never in the latencies.
* Memory: the growth of the process's peak RSS during the cell (``rss_peak_delta_kib``,
  Linux ``VmHWM`` reset through ``/proc/self/clear_refs``; order-dependent, as freed
  memory is reused), and, in a separate pass, tracemalloc's peak (see ``memory_cell``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
import tracemalloc
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from .systems import SYSTEMS, System
from .workloads import WORKLOADS

__all__ = (
    "LOOPS",
    "CellResult",
    "CellSpec",
    "memory_cell",
    "percentile",
    "run_cell",
    "run_on_loop",
    "settle",
)

LOOPS: tuple[str, ...] = ("asyncio", "uvloop")

T = TypeVar("T")

#: Borrowers whose operations never suspend yield to the loop this often (seconds).
_YIELD_EVERY = 0.005


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """What to measure, and how long."""

    system: str
    workload: str
    concurrency: int
    loop: str = "asyncio"
    size: int = 10
    duration: float = 0.5
    warmup: float = 0.2
    warmup_cap: float = 1.5
    drain_timeout: float = 1.0
    setup_timeout: float = 30.0
    stop_timeout: float = 30.0


@dataclasses.dataclass
class CellResult:
    """What one cell measured (times in seconds unless the name says otherwise)."""

    system: str
    workload: str
    concurrency: int
    loop: str
    status: str = "ok"  # ok | timeout | error
    error: str | None = None
    ops: int = 0
    window_s: float = 0.0
    warmup_s: float = 0.0
    steady: bool = False
    throughput: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    #: This process's CPU time per operation in the window (the server's is not counted).
    cpu_us_per_op: float | None = None
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    connections_opened: int = 0
    rss_peak_delta_kib: int | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# ------------------------------------------------------------------ event loops


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "asyncio":
        return asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    raise ValueError(f"unknown event loop {loop!r} (choose from {', '.join(LOOPS)})")


def run_on_loop(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop of the given kind."""
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(coro)


# ------------------------------------------------------------------ RSS (Linux)


def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ measurement


async def _measure(system: System, spec: CellSpec, result: CellResult) -> None:
    op = WORKLOADS[spec.workload].bind(system)
    n = spec.concurrency
    clock = time.perf_counter
    ends: list[float] = []
    latencies: list[float] = []
    in_flight: list[float] = [math.inf] * n
    errors: collections.Counter[str] = collections.Counter()
    first_round_left = n
    stop = False
    # Share one yield period among all borrowers, so a loop round stays short.
    budget = _YIELD_EVERY / n
    last_runner = [-1]  # the borrower that last finished an operation

    async def borrower(i: int) -> None:
        nonlocal first_round_left
        first = True
        streak_start = clock()
        while not stop:
            t0 = clock()
            in_flight[i] = t0
            try:
                await op()
            except Exception as exc:  # counted, never in the latencies
                errors[type(exc).__name__] += 1
                in_flight[i] = math.inf
                if first:
                    first = False
                    first_round_left -= 1
                await asyncio.sleep(0.01)  # no hot error loop
                continue
            t1 = clock()
            ends.append(t1)
            latencies.append(t1 - t0)
            if first:
                first = False
                first_round_left -= 1
            if last_runner[0] != i:
                # Another borrower ran since our last operation: we did suspend.
                last_runner[0] = i
                streak_start = t1
            elif t1 - streak_start >= budget:
                # Operations that never suspend (acquire+release of an idle
                # connection) would otherwise starve the clock-keeping task.
                streak_start = t1
                await asyncio.sleep(0)
        in_flight[i] = math.inf

    started = clock()
    tasks = [asyncio.create_task(borrower(i)) for i in range(n)]
    await asyncio.sleep(spec.warmup)
    while first_round_left > 0 and clock() - started < spec.warmup_cap:
        await asyncio.sleep(0.01)
    result.steady = first_round_left == 0
    w0 = clock()
    cpu0 = time.process_time()
    result.warmup_s = w0 - started
    await asyncio.sleep(spec.duration)
    w1 = clock()
    cpu = time.process_time() - cpu0
    oldest_in_flight = w1 - min(in_flight)
    stop = True
    _, pending = await asyncio.wait(tasks, timeout=spec.drain_timeout)
    if pending:
        # Borrowers still queued after the window (thousands, on a slow system):
        # their operations no longer count, so cancel rather than wait them out.
        result.extra["cancelled_after_window"] = len(pending)
        for task in pending:
            task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=10)
        if stuck:
            result.extra["stuck_after_cancel"] = len(stuck)

    lo = bisect_left(ends, w0)
    hi = bisect_right(ends, w1)
    window = sorted(latencies[lo:hi])
    if not window:
        result.status = "timeout"
        result.error = f"no operation completed in the {w1 - w0:.2f}s window"
    result.ops = len(window)
    result.window_s = w1 - w0
    result.throughput = len(window) / (w1 - w0)
    result.errors = dict(errors)
    if window:
        result.cpu_us_per_op = cpu / len(window) * 1e6
        result.p50_ms = percentile(window, 50) * 1e3
        result.p99_ms = percentile(window, 99) * 1e3
        result.mean_ms = sum(window) / len(window) * 1e3
        result.max_ms = max(window[-1], oldest_in_flight) * 1e3
    elif math.isfinite(oldest_in_flight):
        result.max_ms = oldest_in_flight * 1e3


async def _run_cell(spec: CellSpec, dsn: str) -> CellResult:
    result = CellResult(spec.system, spec.workload, spec.concurrency, spec.loop)
    system = SYSTEMS[spec.system](dsn, spec.size, spec.concurrency)
    try:
        try:
            async with asyncio.timeout(spec.setup_timeout):
                await system.start()
        except BaseException:
            # A pool that failed half-way may still hold connections.
            try:
                async with asyncio.timeout(30):
                    await system.stop()
            except Exception:
                pass
            raise
        try:
            await _measure(system, spec, result)
            result.connections_opened = system.connections_opened()
            result.extra.update(system.extra_stats())
        finally:
            async with asyncio.timeout(spec.stop_timeout):
                await system.stop()
    except Exception as exc:
        result.status = "error" if result.status == "ok" else result.status
        result.error = f"{type(exc).__name__}: {exc}"[:500]
    return result


def run_cell(spec: CellSpec, dsn: str) -> CellResult:
    """Measure one cell on a fresh event loop (blocking)."""
    rss_before = _read_status_kib("VmRSS")
    can_track = rss_before is not None and _reset_peak_rss()
    started = time.perf_counter()
    result = run_on_loop(spec.loop, _run_cell(spec, dsn))
    result.wall_s = time.perf_counter() - started
    if can_track and rss_before is not None:
        peak = _read_status_kib("VmHWM")
        if peak is not None:
            result.rss_peak_delta_kib = max(0, peak - rss_before)
    return result


async def _settle(dsn: str, timeout: float) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            if others == 0 or time.perf_counter() >= deadline:
                return int(others)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def settle(dsn: str, timeout: float = 15.0) -> int:
    """Wait until no other client is connected to the server (e.g. the hundreds of
    backends the per-request baseline leaves exiting), so they do not slow the next
    cell. Returns how many were still there at the timeout (0 normally).
    """
    return run_on_loop("asyncio", _settle(dsn, timeout))


def memory_cell(spec: CellSpec, dsn: str) -> tuple[CellResult, int]:
    """Run a cell under tracemalloc; return it and the peak traced bytes.

    Tracing starts before the pool is created and ends after it is closed, so the
    peak covers the pool, its connections, its waiters and the borrower tasks (the
    latter are the same for every system: compare with ``pinned``). Throughput from
    this pass is meaningless (tracemalloc slows everything down).
    """
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = run_on_loop(spec.loop, _run_cell(spec, dsn))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak
