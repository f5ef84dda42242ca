"""Worker processes that consume jobs from a PostgreSQL table, one asyncpool each.

The supervisor starts ``--processes`` worker processes ("spawn": nothing of the parent,
and no pool, crosses into a child). Each worker opens its own pool, sized so that all
workers together stay within ``--budget`` connections
(``max_size = per_process_size(budget, processes) = budget // processes``), and runs
one consumer per connection. A consumer claims a job with
``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction, does the work and marks the job
done in the same transaction: each job is done exactly once, and if a worker dies
mid-job its lock goes with its connection and another worker takes the job.

On SIGTERM (or Ctrl-C) a worker stops claiming, lets its in-flight jobs finish, closes
its pool (every server session ends politely) and exits 0.

Run a demo (enqueue 40 jobs, process them all, check, drop the tables)::

    python examples/workers.py --processes 3 --budget 6 --jobs 40

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one for the run (see
examples/_database.py). With ``--jobs 0`` the workers wait for jobs until they get
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
from multiprocessing.synchronize import Event as ProcessEvent
from types import FrameType

from _database import database

import asyncpool
from asyncpool.contrib.workers import per_process_size, stop_on_signals

CLAIM = """
    SELECT id, payload FROM {table}
    WHERE done_at IS NULL
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
"""


async def create_tables(conn: asyncpool.PooledConnection, table: str) -> None:
    """The job queue, and a log with one row per execution (to check exactly-once)."""
    await conn.execute(f"""
        CREATE TABLE IF NOT EXISTS {table} (
            id bigserial PRIMARY KEY,
            payload bigint NOT NULL,
            result bigint,
            done_by text,
            done_at timestamptz
        );
        CREATE TABLE IF NOT EXISTS {table}_runs (job_id bigint NOT NULL, worker text NOT NULL);
    """)


async def run_one(
    pool: asyncpool.Pool,
    table: str,
    worker: str,
    job_seconds: float,
    claimed: ProcessEvent | None = None,
) -> bool:
    """Claim one job, do it, mark it done, all in one transaction. False if none is free."""
    async with pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(CLAIM.format(table=table))
        if job is None:
            return False
        if claimed is not None:
            claimed.set()
        await asyncio.sleep(job_seconds)  # the work; SIGTERM does not interrupt it
        result = await conn.fetchval("SELECT $1::bigint * $1::bigint", job["payload"])
        await conn.execute(
            f"INSERT INTO {table}_runs (job_id, worker) VALUES ($1, $2)", job["id"], worker
        )
        await conn.execute(
            f"UPDATE {table} SET result = $2, done_by = $3, done_at = now() WHERE id = $1",
            job["id"],
            result,
            worker,
        )
    return True


async def consume(
    pool: asyncpool.Pool,
    stop: asyncio.Event,
    table: str,
    worker: str,
    *,
    job_seconds: float,
    exit_when_idle: bool,
    claimed: ProcessEvent | None,
    poll_interval: float = 0.1,
) -> int:
    """Run jobs until ``stop`` is set (or, with ``exit_when_idle``, the queue is empty)."""
    done = 0
    while not stop.is_set():
        if await run_one(pool, table, worker, job_seconds, claimed):
            done += 1
            continue
        if exit_when_idle:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_interval)  # no job: wait for one
    return done


async def worker(
    dsn: str,
    name: str,
    *,
    table: str,
    pool_size: int,
    job_seconds: float = 0.05,
    exit_when_idle: bool = False,
    claimed: ProcessEvent | None = None,
) -> int:
    """One worker process's life: its own pool, ``pool_size`` consumers, a clean stop."""
    with stop_on_signals() as stop:
        async with asyncpool.create_pool(
            dsn, min_size=1, max_size=pool_size, server_settings={"application_name": name}
        ) as pool:
            counts = await asyncio.gather(
                *(
                    consume(
                        pool,
                        stop,
                        table,
                        name,
                        job_seconds=job_seconds,
                        exit_when_idle=exit_when_idle,
                        claimed=claimed,
                    )
                    for _ in range(pool_size)
                )
            )
        # Leaving the block closed the pool: no connection of this worker is left open.
    print(f"{name}: {sum(counts)} job(s) done, pool closed", flush=True)
    return sum(counts)


def worker_process(
    dsn: str,
    name: str,
    table: str,
    pool_size: int,
    job_seconds: float,
    exit_when_idle: bool,
    claimed: ProcessEvent | None = None,
) -> None:
    """A worker process's entry point (must be importable for the "spawn" start method)."""
    asyncio.run(
        worker(
            dsn,
            name,
            table=table,
            pool_size=pool_size,
            job_seconds=job_seconds,
            exit_when_idle=exit_when_idle,
            claimed=claimed,
        )
    )


async def prepare(dsn: str, table: str, jobs: int) -> None:
    """Create the tables and enqueue ``jobs`` jobs."""
    async with asyncpool.create_pool(dsn, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        await create_tables(conn, table)
        await conn.execute(
            f"INSERT INTO {table} (payload) SELECT g FROM generate_series(1, $1) g", jobs
        )


async def check_and_drop(dsn: str, table: str) -> tuple[int, int, int]:
    """Return (jobs, jobs done, jobs run more than once), then drop the tables."""
    async with asyncpool.create_pool(dsn, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        row = await conn.fetchrow(f"""
            SELECT (SELECT count(*) FROM {table}) AS jobs,
                   (SELECT count(*) FROM {table} WHERE result = payload * payload) AS done,
                   (SELECT count(*) FROM (SELECT job_id FROM {table}_runs
                     GROUP BY job_id HAVING count(*) > 1) twice) AS repeated
        """)
        await conn.execute(f"DROP TABLE {table}, {table}_runs")
    return row["jobs"], row["done"], row["repeated"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument(
        "--budget", type=int, default=6, help="connections all workers may hold together"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=40,
        help="enqueue this many demo jobs, run until done, check, drop "
        "(0: wait for jobs until SIGTERM)",
    )
    parser.add_argument("--job-seconds", type=float, default=0.02)
    parser.add_argument("--table", default="asyncpool_example_jobs")
    args = parser.parse_args(argv)
    with database() as dsn:
        return supervise(dsn, args)


def supervise(dsn: str, args: argparse.Namespace) -> int:
    """Enqueue, run the workers until done (or SIGTERM), check."""
    pool_size = per_process_size(args.budget, args.processes)
    print(f"{args.processes} workers x max_size {pool_size} <= budget {args.budget}")

    asyncio.run(prepare(dsn, args.table, args.jobs))
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=worker_process,
            name=f"worker-{i}",
            args=(
                dsn,
                f"asyncpool-example-worker-{i}",
                args.table,
                pool_size,
                args.job_seconds,
                args.jobs > 0,
            ),
        )
        for i in range(args.processes)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes]
    print(f"worker exit codes: {codes}")
    if args.jobs:
        jobs, done, repeated = asyncio.run(check_and_drop(dsn, args.table))
        print(f"{done}/{jobs} jobs done, {repeated} run more than once")
        if done != jobs or repeated:
            return 1
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
