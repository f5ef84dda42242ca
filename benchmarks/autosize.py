"""Issue 20's measurement: fixed pool sizes against the adaptive limit.

```
python -m benchmarks.autosize                     # fixed sizes + autosize row + offline driver
python -m benchmarks.autosize --parts fixed       # only the fixed-size baseline
python -m benchmarks.autosize --parts fleet       # four processes, max_connections=50
```

Parts (``--parts``, comma-separated):

* ``fixed``: pools with ``min_size = max_size = N`` for N in ``--sizes`` (1, 2, 4, 8, 40).
* ``autosize``: ``Pool(autosize=True, min_size=1, max_size=40)``; skipped (and said so)
  while ``Pool`` has no ``autosize`` parameter.
* ``offline``: :class:`asyncpool._autosize.AdaptiveLimit` driven from outside the pool:
  a pool of ``max_size=40`` behind a gate whose limit the algorithm sets every 0.5 s
  from the measured hold times. A sanity check of the algorithm on real latencies
  before it is wired into the pool.
* ``fleet``: four processes, each a pool with ``autosize=True, instances=4``, against a
  dedicated server with ``max_connections=50`` (as a non-superuser role, so the
  reserved slots stay reserved): "too many clients" errors and each process's mean
  size (``--fleet-workload``, ``io`` by default, so that every pool wants all 40).

Workloads: ``cpu`` (``SELECT count(*) FROM generate_series(1, 40000)``, ~3 ms of server
CPU) and ``io`` (``SELECT pg_sleep(0.005)``), ``--borrowers`` (100) in a closed loop.
Each cell: a fresh pool, ``--warmup`` seconds (``--autosize-warmup`` for the autosize
cells, whose limit starts at ``min_size``), then a ``--duration`` window in which
throughput, p50/p99 latency (acquire wait included) and the mean number of the pool's
connections (``stats().size`` sampled every 20 ms) are measured.

Output: ``benchmarks/results/autosize.{json,md}`` (``--name`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

import asyncpool
from asyncpool._autosize import AdaptiveLimit
from asyncpool.testing import PostgresServer

RESULTS = Path(__file__).parent / "results"

WORKLOADS: dict[str, str] = {
    "cpu": "SELECT count(*) FROM generate_series(1, 40000)",
    "io": "SELECT pg_sleep(0.005)",
}

UPDATE_INTERVAL = 0.5  # seconds between AdaptiveLimit.update calls (the pool's cadence)


@dataclasses.dataclass
class Cell:
    """One measured configuration."""

    part: str
    workload: str
    config: str
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_connections: float
    operations: int
    errors: int
    mean_limit: float | None = None
    limit_range: tuple[int, int] | None = None
    limit_trace: list[int] | None = None
    repeat: int = 0


def autosize_available() -> bool:
    """Whether this asyncpool's Pool takes ``autosize=`` (the lead adds it)."""
    return "autosize" in {f.name for f in dataclasses.fields(asyncpool.PoolConfig)}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Gate:
    """A concurrency limit that can change at any time (FIFO waiters)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.inflight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.inflight += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        if self.inflight < self.limit and not self._waiters:
            self.inflight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.inflight -= 1
                self._wake()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.inflight -= 1
        self._wake()


async def closed_loop(
    operation: Callable[[], Awaitable[None]],
    *,
    borrowers: int,
    warmup: float,
    duration: float,
    sample_size: Callable[[], int],
) -> tuple[list[float], int, float, int]:
    """Run ``borrowers`` loops of ``operation`` for ``warmup + duration`` seconds.

    Returns the latencies of the operations that started and finished in the window,
    the errors, the mean of ``sample_size()`` over the window and the number of
    operations that *finished* in it (the throughput's numerator: in a closed loop the
    operations in flight at either edge of the window are as many as those counted
    twice, so counting completions does not undercount short windows).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start = start + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    errors = 0
    completed = 0
    stop = False

    async def borrower() -> None:
        nonlocal errors, completed
        while not stop:
            t0 = loop.time()
            try:
                await operation()
            except Exception:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            t1 = loop.time()
            if window_start <= t1 <= window_end:
                completed += 1
                if window_start <= t0:
                    latencies.append(t1 - t0)

    sizes: list[int] = []

    async def sampler() -> None:
        while loop.time() < window_end:
            if loop.time() >= window_start:
                sizes.append(sample_size())
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(borrower()) for _ in range(borrowers)]
    await sampler()
    stop = True
    await asyncio.gather(*tasks)
    return latencies, errors, statistics.fmean(sizes) if sizes else math.nan, completed


def make_cell(
    part: str,
    workload: str,
    config: str,
    latencies: list[float],
    errors: int,
    mean_size: float,
    duration: float,
    completed: int,
) -> Cell:
    return Cell(
        part=part,
        workload=workload,
        config=config,
        throughput=completed / duration,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_connections=mean_size,
        operations=len(latencies),
        errors=errors,
    )


def pool_operation(pool: asyncpool.Pool, sql: str) -> Callable[[], Awaitable[None]]:
    """One borrower's operation: acquire from ``pool``, run ``sql``, release."""

    async def operation() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(sql)

    return operation


async def run_pool_cell(
    dsn: str, part: str, workload: str, config: str, pool_kwargs: dict[str, Any], args: Any
) -> Cell:
    sql = WORKLOADS[workload]
    async with asyncpool.Pool(dsn, **pool_kwargs) as pool:
        latencies, errors, mean_size, completed = await closed_loop(
            pool_operation(pool, sql),
            borrowers=args.borrowers,
            warmup=args.autosize_warmup if pool_kwargs.get("autosize") else args.warmup,
            duration=args.duration,
            sample_size=lambda: pool.stats().size,
        )
    return make_cell(part, workload, config, latencies, errors, mean_size, args.duration, completed)


async def run_offline_cell(dsn: str, workload: str, args: Any) -> Cell:
    """AdaptiveLimit sets a gate's limit in front of a pool of 40 from real hold times."""
    sql = WORKLOADS[workload]
    loop = asyncio.get_running_loop()
    algo = AdaptiveLimit(min_limit=1, max_limit=40)
    gate = Gate(algo.limit)
    limits: list[int] = []
    window_start = loop.time() + args.offline_warmup
    async with asyncpool.Pool(dsn, min_size=1, max_size=40) as pool:

        async def operation() -> None:
            async with gate, pool.acquire() as conn:
                t0 = loop.time()
                await conn.fetchval(sql)
                t1 = loop.time()
                algo.on_sample(t1, t1 - t0, gate.inflight)

        async def driver() -> None:
            while True:
                await asyncio.sleep(UPDATE_INTERVAL)
                decision = algo.update(loop.time())
                gate.set_limit(decision.limit)
                if args.verbose:
                    st = algo.stats()
                    print(
                        f"    {loop.time() - window_start:6.1f} {decision.limit:3d} "
                        f"{decision.reason:26s} rtt={1000 * (st.window_rtt or 0):.2f} "
                        f"base={1000 * (st.baseline_rtt or 0):.2f} q={st.queue} "
                        f"inflight={st.window_inflight}",
                        flush=True,
                    )
                if loop.time() >= window_start:
                    limits.append(decision.limit)

        driving = asyncio.create_task(driver())
        try:
            latencies, errors, mean_size, completed = await closed_loop(
                operation,
                borrowers=args.borrowers,
                warmup=args.offline_warmup,
                duration=args.offline_duration,
                sample_size=lambda: pool.stats().size,
            )
        finally:
            driving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driving
        stats = algo.stats()
    cell = make_cell(
        "offline",
        workload,
        "AdaptiveLimit",
        latencies,
        errors,
        mean_size,
        args.offline_duration,
        completed,
    )
    cell.mean_limit = statistics.fmean(limits) if limits else math.nan
    cell.limit_range = (min(limits), max(limits)) if limits else None
    cell.limit_trace = limits
    print(f"    {stats}", flush=True)
    return cell


# ---------------------------------------------------------------------- the fleet


def _fleet_process(
    dsn: str,
    index: int,
    duration: float,
    queue: Any,
    fixed_size: int | None = None,
    workload: str = "io",
) -> None:
    """One of the four processes: a pool with autosize=True, instances=4, ``workload``
    (``io`` by default: each pool then wants all 40 connections, so the budget binds).

    With ``fixed_size`` (``--fleet-fixed``), a fixed pool of that size instead: a check
    of the harness itself (4 x 15 > 47 must show "too many clients").
    """

    async def main() -> dict[str, Any]:
        too_many = 0
        other_errors = 0
        sizes: list[int] = []
        loop = asyncio.get_running_loop()
        sizing: dict[str, Any] = (
            {"min_size": 1, "max_size": 40, "autosize": True, "instances": 4}
            if fixed_size is None
            else {"min_size": 1, "max_size": fixed_size, "budget_check": "off"}
        )
        pool = asyncpool.Pool(dsn, name=f"fleet-{index}", acquire_timeout=60.0, **sizing)
        await pool.open()
        end = loop.time() + duration
        done = 0

        async def borrower() -> None:
            nonlocal too_many, other_errors, done
            while loop.time() < end:
                try:
                    async with pool.acquire() as conn:
                        await conn.fetchval(WORKLOADS[workload])
                    done += 1
                except Exception as exc:
                    if isinstance(exc, asyncpg.TooManyConnectionsError) or (
                        "too many clients" in str(exc)
                    ):
                        too_many += 1
                    else:
                        other_errors += 1
                    await asyncio.sleep(0.01)

        async def sampler() -> None:
            while loop.time() < end:
                sizes.append(pool.stats().size)
                await asyncio.sleep(0.05)

        await asyncio.gather(sampler(), *(borrower() for _ in range(25)))
        stats = pool.stats()
        await pool.close()
        return {
            "index": index,
            "too_many_clients": too_many,
            "other_errors": other_errors,
            "connect_errors_total": stats.connect_errors_total,
            "operations": done,
            "mean_size": statistics.fmean(sizes) if sizes else math.nan,
            "max_size_seen": max(sizes) if sizes else 0,
        }

    queue.put(asyncio.run(main()))


def run_fleet(args: Any) -> dict[str, Any]:
    if not autosize_available() and args.fleet_fixed is None:
        return {"skipped": "asyncpool.Pool has no autosize parameter yet"}
    with PostgresServer(settings={"max_connections": "50"}) as server:

        async def setup() -> tuple[str, int, int]:
            conn = await asyncpg.connect(server.dsn)
            await conn.execute("CREATE ROLE fleet LOGIN")
            max_conn = int(await conn.fetchval("SHOW max_connections"))
            reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
            await conn.close()
            return server.dsn.replace(f"//{server.user}@", "//fleet@"), max_conn, reserved

        dsn, max_conn, reserved = asyncio.run(setup())
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=_fleet_process,
                args=(dsn, i, args.fleet_duration, queue, args.fleet_fixed, args.fleet_workload),
            )
            for i in range(4)
        ]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=args.fleet_duration + 120) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
    results.sort(key=lambda r: r["index"])
    shares = [r["mean_size"] for r in results]
    return {
        "pools": "autosize=True, instances=4"
        if args.fleet_fixed is None
        else f"fixed max_size={args.fleet_fixed} (harness check, not autosize)",
        "workload": args.fleet_workload,
        "max_connections": max_conn,
        "superuser_reserved_connections": reserved,
        "processes": results,
        # The pool retries a refused connect in the background, so borrowers rarely see
        # "too many clients": the pools' connect errors count the refusals.
        "too_many_clients_total": sum(
            r["too_many_clients"] + r["connect_errors_total"] for r in results
        ),
        "share_spread": (max(shares) - min(shares)) / max(shares) if max(shares) else 0.0,
    }


# ---------------------------------------------------------------------- report


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Autosize benchmark (issue 20)", ""]
    meta = report["meta"]
    lines.append(
        f"{meta['date']}, {meta['cpus']} CPUs, {meta['borrowers']} borrowers closed-loop, "
        f"{meta['duration']} s window after {meta['warmup']} s warm-up; asyncpool "
        f"{meta['revision']}; load average (1/5/15 min) {meta['loadavg_before']} before, "
        f"{meta['loadavg_after']} after (the machine is shared: compare rows of one run). "
        "Workloads: " + "; ".join(f"`{k}`: `{v}`" for k, v in WORKLOADS.items()) + "."
    )
    lines.append("")
    lines.append(
        "| run | part | workload | config | req/s | p50 ms | p99 ms | mean conns | mean limit "
        "| errors |"
    )
    lines.append("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for c in report["cells"]:
        limit = "" if c["mean_limit"] is None else f"{c['mean_limit']:.1f}"
        if c["limit_range"]:
            limit += f" ({c['limit_range'][0]}-{c['limit_range'][1]})"
        lines.append(
            f"| {c.get('repeat', 0) + 1} | {c['part']} | {c['workload']} | {c['config']} | "
            f"{c['throughput']:.0f} | "
            f"{c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['mean_connections']:.1f} | {limit} | "
            f"{c['errors']} |"
        )
    lines.append("")
    lines.append(
        "`mean conns`: the pool's `stats().size` (server connections it holds), sampled "
        "every 20 ms. `mean limit`: the adaptive limit over the window, sampled likewise "
        "(range); for the offline driver, its gate's limit."
    )
    for note in report["notes"]:
        lines.append("")
        lines.append(f"- {note}")
    targets = report.get("targets")
    if targets:
        lines += ["", "## Targets (CPU-bound)", ""]
        for t in targets:
            lines.append(f"- {t}")
    fleet = report.get("fleet")
    if fleet:
        lines += ["", "## Four processes, max_connections=50", ""]
        lines.append("```")
        lines.append(json.dumps(fleet, indent=1))
        lines.append("```")
    return "\n".join(lines) + "\n"


def median_interval(values: Sequence[float], rounds: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of ``values`` (seeded: reproducible)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def targets(cells: list[Cell]) -> list[str]:
    """Issue 20's done-when, for whichever adaptive rows ran, as medians of paired ratios.

    The best fixed size is the configuration with the highest median throughput over
    the repetitions; each adaptive cell is paired with that configuration's cell of the
    same repetition (the machine moves between repetitions). A stricter figure pairs it
    with the best fixed cell of each repetition, whichever size that was: the maximum
    of several noisy cells, which no single fixed configuration reaches either.
    """
    fixed = [c for c in cells if c.part == "fixed" and c.workload == "cpu"]
    if not fixed:
        return []
    by_config: dict[str, list[float]] = collections.defaultdict(list)
    for c in fixed:
        by_config[c.config].append(c.throughput)
    best_config = max(by_config, key=lambda k: statistics.median(by_config[k]))
    best_cells = {c.repeat: c for c in fixed if c.config == best_config}
    out = [
        f"best fixed size: {best_config} ({statistics.median(by_config[best_config]):.0f} "
        f"req/s, p99 {statistics.median(c.p99_ms for c in best_cells.values()):.1f} ms"
        + (f", median of {len(best_cells)} runs)" if len(best_cells) > 1 else ")")
    ]
    adaptive: dict[tuple[str, str], list[Cell]] = collections.defaultdict(list)
    for c in cells:
        if c.workload == "cpu" and c.part != "fixed":
            adaptive[(c.part, c.config)].append(c)
    for (part, config), runs in adaptive.items():
        paired = [(c, best_cells[c.repeat]) for c in runs if c.repeat in best_cells]
        if not paired:
            continue
        ratios = [c.throughput / best.throughput for c, best in paired]
        p99s = [c.p99_ms / best.p99_ms for c, best in paired]
        strict = [
            c.throughput / max(f.throughput for f in fixed if f.repeat == c.repeat)
            for c, _ in paired
        ]
        ratio, p99 = statistics.median(ratios), statistics.median(p99s)
        conns = statistics.median(c.mean_connections for c, _ in paired)
        ok = ratio >= 0.95 and conns <= 8 and p99 <= 1.2
        each = (
            f" (each repetition: {', '.join(f'{r:.2f}x' for r in ratios)}; p99 "
            f"{', '.join(f'{p:.2f}x' for p in p99s)})"
            if len(paired) > 1
            else ""
        )
        if len(paired) >= 5:
            low, high = median_interval(ratios)
            geomean = math.exp(statistics.fmean(math.log(r) for r in ratios))
            each += (
                f"; geometric mean {geomean:.2f}x; 95 % bootstrap interval of the median "
                f"{low:.2f}x..{high:.2f}x"
            )
        out.append(
            f"{part} {config} against {best_config}: throughput {ratio:.2f}x (>= 0.95), "
            f"{conns:.1f} connections (<= 8), p99 {p99:.2f}x (<= 1.2): "
            f"{'PASS' if ok else 'FAIL'}{each}"
        )
        out.append(
            f"{part} {config} against the best fixed cell of each repetition (stricter): "
            f"throughput {statistics.median(strict):.2f}x "
            f"({', '.join(f'{r:.2f}x' for r in strict)})"
        )
    return out


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "asyncpool"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


async def run_cells(dsn: str, args: Any, notes: list[str]) -> list[Cell]:
    if args.schedule == "interleaved" and args.parts & {"fixed", "autosize"}:
        return await run_interleaved(dsn, args, notes)
    cells: list[Cell] = []
    for repeat in range(args.repeat):
        done = len(cells)
        await run_cells_once(dsn, args, notes if repeat == 0 else [], cells)
        for cell in cells[done:]:
            cell.repeat = repeat
    return cells


async def run_cells_once(dsn: str, args: Any, notes: list[str], cells: list[Cell]) -> None:
    parts = args.parts
    for workload in args.workloads:
        if "fixed" in parts:
            for size in args.sizes:
                print(f"  fixed {workload} size={size}", flush=True)
                cells.append(
                    await run_pool_cell(
                        dsn,
                        "fixed",
                        workload,
                        f"size {size}",
                        {"min_size": size, "max_size": size},
                        args,
                    )
                )
        if "autosize" in parts:
            if autosize_available():
                print(f"  autosize {workload}", flush=True)
                cells.append(
                    await run_pool_cell(
                        dsn,
                        "autosize",
                        workload,
                        "autosize, max 40",
                        {"min_size": 1, "max_size": 40, "autosize": True},
                        args,
                    )
                )
            elif workload == args.workloads[0]:
                notes.append("autosize row skipped: asyncpool.Pool has no autosize parameter yet")
        if "offline" in parts:
            print(f"  offline {workload}", flush=True)
            cells.append(await run_offline_cell(dsn, workload, args))


def print_limit_event(event: asyncpool.PoolEvent) -> None:
    """``--verbose``: print each move of the autosize pool's limit."""
    if event.kind is asyncpool.EventKind.LIMIT:
        print(f"    {time.monotonic():.1f} limit {event.reason}", flush=True)


async def run_interleaved(dsn: str, args: Any, notes: list[str]) -> list[Cell]:
    """Fixed sizes and autosize in turns: every pool open at once, ``--repeat`` rounds
    in which each pool runs one ``--warmup`` + ``--duration`` slice (the order rotates
    from round to round), so that each round pairs configurations measured within
    seconds of each other. The autosize pool stays open from round to round (its limit
    is what it has learned) after one ``--autosize-warmup`` of its own.
    """
    configs: list[tuple[str, str, dict[str, Any]]] = []
    if "fixed" in args.parts:
        configs += [("fixed", f"size {n}", {"min_size": n, "max_size": n}) for n in args.sizes]
    if "autosize" in args.parts:
        if autosize_available():
            configs.append(
                ("autosize", "autosize, max 40", {"min_size": 1, "max_size": 40, "autosize": True})
            )
        else:
            notes.append("autosize row skipped: asyncpool.Pool has no autosize parameter yet")
    notes.append(
        f"interleaved: {args.repeat} rounds; in each, every configuration runs one "
        f"{args.warmup:g} s + {args.duration:g} s slice, in an order that rotates from "
        "round to round; all pools stay open throughout"
    )
    cells: list[Cell] = []
    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(asyncpool.Pool(dsn, **kwargs))
            for _, _, kwargs in configs
        ]
        for pool in pools:
            if args.verbose and pool.stats().autosize is not None:
                pool.add_event_hook(print_limit_event)
        for workload in args.workloads:
            sql = WORKLOADS[workload]
            for (_, _, kwargs), pool in zip(configs, pools, strict=True):
                if kwargs.get("autosize"):
                    print(f"  autosize {workload}: warm-up {args.autosize_warmup:g} s", flush=True)
                    await closed_loop(
                        pool_operation(pool, sql),
                        borrowers=args.borrowers,
                        warmup=0.0,
                        duration=args.autosize_warmup,
                        sample_size=lambda: 0,
                    )
            for round_ in range(args.repeat):
                print(f"  {workload}: round {round_ + 1} of {args.repeat}", flush=True)
                order = list(range(len(configs)))
                shift = round_ % len(order)
                for i in order[shift:] + order[:shift]:
                    part, config, _ = configs[i]
                    pool = pools[i]
                    limits: list[int] = []

                    def sample(pool: asyncpool.Pool = pool, limits: list[int] = limits) -> int:
                        stats = pool.stats()
                        limits.append(stats.limit)
                        return stats.size

                    latencies, errors, mean_size, completed = await closed_loop(
                        pool_operation(pool, sql),
                        borrowers=args.borrowers,
                        warmup=args.warmup,
                        duration=args.duration,
                        sample_size=sample,
                    )
                    cell = make_cell(
                        part,
                        workload,
                        config,
                        latencies,
                        errors,
                        mean_size,
                        args.duration,
                        completed,
                    )
                    cell.repeat = round_
                    if part != "fixed" and limits:
                        cell.mean_limit = statistics.fmean(limits)
                        cell.limit_range = (min(limits), max(limits))
                    cells.append(cell)
    if "offline" in args.parts:
        for workload in args.workloads:
            print(f"  offline {workload}", flush=True)
            cells.append(await run_offline_cell(dsn, workload, args))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="fixed,autosize,offline")
    parser.add_argument("--workloads", default="cpu,io")
    parser.add_argument("--sizes", default="1,2,4,8,40")
    parser.add_argument("--borrowers", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--autosize-warmup",
        type=float,
        default=15.0,
        help="warm-up of the autosize cells: the limit starts at min_size and must converge",
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="repetitions (targets: medians of paired ratios)"
    )
    parser.add_argument(
        "--schedule",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="interleaved: all pools open, one slice each per round (rotating order); "
        "sequential: a fresh pool per cell, one cell after another",
    )
    parser.add_argument("--offline-warmup", type=float, default=10.0)
    parser.add_argument("--offline-duration", type=float, default=30.0)
    parser.add_argument("--fleet-duration", type=float, default=30.0)
    parser.add_argument("--fleet-workload", choices=sorted(WORKLOADS), default="io")
    parser.add_argument(
        "--fleet-fixed",
        type=int,
        default=None,
        help="fleet of fixed pools of this size instead of autosize (checks the harness)",
    )
    parser.add_argument("--dsn", default=None, help="use a running server")
    parser.add_argument("--verbose", action="store_true", help="print every decision")
    parser.add_argument("--name", default="autosize", help="results/<name>.{json,md}")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.parts = set(args.parts.split(","))
    args.workloads = args.workloads.split(",")
    args.sizes = [int(s) for s in args.sizes.split(",")]

    notes: list[str] = []
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None and args.parts & {"fixed", "autosize", "offline"}:
            server = stack.enter_context(PostgresServer())
            dsn = server.dsn
        cells = asyncio.run(run_cells(dsn, args, notes)) if dsn is not None else []
    fleet = run_fleet(args) if "fleet" in args.parts else None
    if fleet and "skipped" in fleet:
        notes.append(f"fleet run skipped: {fleet['skipped']}")
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "revision": revision(),
            "borrowers": args.borrowers,
            "warmup": args.warmup,
            "autosize_warmup": args.autosize_warmup,
            "duration": args.duration,
            "repeat": args.repeat,
            "offline_warmup": args.offline_warmup,
            "offline_duration": args.offline_duration,
            "update_interval": UPDATE_INTERVAL,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "cells": [dataclasses.asdict(c) for c in cells],
        "notes": notes,
        "targets": targets(cells),
        "fleet": fleet,
    }
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    markdown = to_markdown(report)
    (out / f"{args.name}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
