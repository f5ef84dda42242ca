#!/usr/bin/env python
"""Many asyncpool processes through one PgBouncer vs straight to PostgreSQL.

Starts a throwaway PostgreSQL server and a PgBouncer in transaction mode with a
small server-side pool (``default_pool_size=5``) in front of it. Then, for each
workload, runs N worker processes (default 4), each with an asyncpool pool of
``--pool-size`` (default 10) and ``--concurrency`` tasks (default 10) borrowing in
a loop: directly against the server, directly with pools shrunk to
``default_pool_size // processes`` (the same server budget without PgBouncer), and
through PgBouncer. Measures
throughput, latency per borrow (acquire + statement + release: p50/p99/max) and
the number of server-side client backends (sampled from pg_stat_activity).

Workloads:
  * ``select``: ``SELECT $1::int`` - a trivial statement; measures overhead.
  * ``io-2ms``: ``SELECT pg_sleep(0.002)`` - a statement that waits 2 ms on the
    server (like a short disk or lock wait) without using CPU; shows what a small
    server-side pool does to concurrency.
  * ``io-2ms-skewed``: the same, but one process is busy (``--concurrency`` tasks)
    and the others nearly idle (one task each, pausing 20 ms between borrows):
    shrunk pools strand server connections in idle processes, PgBouncer lends
    them to the busy one.

Usage:  python benchmarks/pgbouncer_scale.py [--duration 6] [--output PATH]
Bounded: 8 runs x (duration + ~3.5) s plus server start (about 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

import asyncpool
from asyncpool.testing import PostgresServer
from asyncpool.testing._pgbouncer import PgBouncer, find_pgbouncer, pgbouncer_version

# name: (statement, takes an argument, skewed load)
WORKLOADS = {
    "select": ("SELECT $1::int", True, False),
    "io-2ms": ("SELECT pg_sleep(0.002)", False, False),
    "io-2ms-skewed": ("SELECT pg_sleep(0.002)", False, True),
}


@dataclass
class Result:
    scenario: str
    workload: str
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_conns_max: int
    client_conns: int

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- worker process


async def _worker_main(
    dsn: str,
    pooler: str | None,
    workload: str,
    pool_size: int,
    concurrency: int,
    think: float,
    start_at: float,
    end_at: float,
) -> tuple[list[float], int]:
    query, with_arg, _ = WORKLOADS[workload]
    latencies: list[float] = []
    errors = 0
    async with asyncpool.create_pool(
        dsn, pooler=pooler, min_size=pool_size, max_size=pool_size, acquire_timeout=30
    ) as pool:
        async with pool.acquire() as conn:  # warm up type info
            await (conn.fetchval(query, 1) if with_arg else conn.fetchval(query))
        await asyncio.sleep(max(start_at - time.time(), 0))

        async def loop_task(i: int) -> None:
            nonlocal errors
            clock = time.perf_counter
            while time.time() < end_at:
                t0 = clock()
                try:
                    async with pool.acquire() as conn:
                        if with_arg:
                            await conn.fetchval(query, i)
                        else:
                            await conn.fetchval(query)
                except Exception:
                    errors += 1
                    continue
                latencies.append(clock() - t0)
                if think:
                    await asyncio.sleep(think)

        await asyncio.gather(*(loop_task(i) for i in range(concurrency)))
    return latencies, errors


def _worker(
    args: tuple[str, str | None, str, int, int, float, float, float], out: mp.Queue
) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_worker_main(*args)))


# ---------------------------------------------------------------- driver


async def _count_server_conns(dsn: str, stop_at: float) -> int:
    conn = await asyncpg.connect(dsn)
    best = 0
    try:
        while time.time() < stop_at:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            best = max(best, int(n))
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    return best


def run_scenario(
    name: str,
    dsn: str,
    pooler: str | None,
    direct_dsn: str,
    workload: str,
    processes: int,
    pool_size: int,
    concurrency: int,
    duration: float,
) -> Result:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start_at = time.time() + 2.5  # time to spawn, import and open the pools
    end_at = start_at + duration
    # Skewed: one busy process; the others have one task that pauses 20 ms between
    # borrows (their connections are mostly idle).
    skewed = WORKLOADS[workload][2]
    tasks = [concurrency if i == 0 or not skewed else 1 for i in range(processes)]
    think = [0.02 if skewed and i > 0 else 0.0 for i in range(processes)]
    procs = [
        ctx.Process(
            target=_worker,
            args=((dsn, pooler, workload, pool_size, tasks[i], think[i], start_at, end_at), out),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    # Sample the server during the measured window only.
    time.sleep(max(start_at + 0.5 - time.time(), 0))
    server_max = asyncio.run(_count_server_conns(direct_dsn, end_at - 0.25))
    results = [out.get(timeout=duration + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    p99 = latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] if latencies else 0.0
    return Result(
        scenario=name,
        workload=workload,
        ops=len(latencies),
        seconds=duration,
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p99_ms=p99 * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else 0.0,
        errors=errors,
        server_conns_max=server_max,
        client_conns=processes * pool_size,
    )


def render(
    results: list[Result],
    args: argparse.Namespace,
    pg_version: str,
    bouncer_version: str,
    load: str,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# PgBouncer scale-out benchmark",
        "",
        f"Generated by `benchmarks/pgbouncer_scale.py` on {now}.",
        "",
        f"- {args.processes} processes, each with an asyncpool pool of {args.pool_size} "
        f"(min_size = max_size) and {args.concurrency} tasks borrowing in a loop; "
        f"{args.duration:g} s measured per row. 'direct, pool of N': the same processes "
        "with pools shrunk to fit a comparable server budget",
        f"- PgBouncer {bouncer_version}, pool_mode=transaction, "
        f"default_pool_size={args.bouncer_pool_size}; asyncpool pooler='pgbouncer-transaction'",
        f"- PostgreSQL {pg_version} (fsync off), asyncpg {asyncpg.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores shared by "
        "everything (clients, PgBouncer, server)",
        f"- load average before the run: {load} (other work on the machine skews figures)",
        "- latency = one borrow: acquire + statement + release, as the application sees it",
        "- server conns = most client backends seen in pg_stat_activity during the run",
        "",
        "| workload | path | client conns | server conns | ops/s | p50 ms | p99 ms | "
        "max ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.workload} | {r.scenario} | {r.client_conns} | {r.server_conns_max} | "
            f"{r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} | {r.errors} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--bouncer-pool-size", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "pgbouncer_scale.md"
    )
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    if find_pgbouncer() is None:
        print("pgbouncer not found (apt-get install pgbouncer)", file=sys.stderr)
        return 2
    version = pgbouncer_version() or ()
    bouncer_version = ".".join(map(str, version)) or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: list[Result] = []
    small = max(args.bouncer_pool_size // args.processes, 1)
    with PostgresServer(settings={"max_connections": "200"}) as server:
        pg_version = asyncio.run(_server_version(server.dsn))
        for workload in workloads:
            paths = ["direct", f"direct, pool of {small}", "pgbouncer"]
            if WORKLOADS[workload][2]:
                paths.remove("direct")  # the point is the small server budget
            for name in paths:
                pool_size = small if name.startswith("direct, pool") else args.pool_size
                bouncer = None
                dsn, pooler = server.dsn, None
                if name == "pgbouncer":
                    # A fresh PgBouncer per run, so that no idle server connections of
                    # an earlier run are counted in a later one.
                    bouncer = PgBouncer(
                        server.host,
                        server.port,
                        pool_mode="transaction",
                        default_pool_size=args.bouncer_pool_size,
                        max_client_conn=args.processes * pool_size + 20,
                    )
                    bouncer.start()
                    dsn, pooler = bouncer.dsn, "pgbouncer-transaction"
                try:
                    result = run_scenario(
                        name,
                        dsn,
                        pooler,
                        server.dsn,
                        workload,
                        args.processes,
                        pool_size,
                        args.concurrency,
                        args.duration,
                    )
                finally:
                    if bouncer is not None:
                        bouncer.close()
                results.append(result)
                print(
                    f"{workload:14} {name:18} {result.rate:9,.0f} ops/s  "
                    f"p99 {result.p99_ms:7.2f} ms  server conns {result.server_conns_max}"
                    f"  errors {result.errors}",
                    flush=True,
                )
    text = render(results, args, pg_version, bouncer_version, load)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"\nwritten to {args.output}")
    return 0


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
