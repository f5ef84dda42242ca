"""Worker processes: per-process sizing, refusal after fork(), and SIGTERM draining.

The SIGTERM test runs the worker of examples/workers.py in "spawn" processes against the
real server and checks, from the server's side, that every job was done exactly once
and that the workers' sessions ended politely (none abandoned, none left behind).
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import signal
import sys
import time
import urllib.parse
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import asyncpool
from asyncpool.contrib.workers import per_process_size, stop_on_signals

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_workers() -> Any:
    """Import examples/workers.py as ``workers`` (spawned children import it by name)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("workers")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0):
    """Poll server-side state (it has no event to await), with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- sizing


@pytest.mark.parametrize(
    ("budget", "processes", "reserve", "expected"),
    [(40, 4, 0, 10), (10, 3, 0, 3), (10, 3, 1, 3), (10, 3, 2, 2), (7, 7, 0, 1), (100, 1, 5, 95)],
)
def test_per_process_size(budget: int, processes: int, reserve: int, expected: int):
    size = per_process_size(budget, processes, reserve=reserve)
    assert size == expected
    assert processes * size + reserve <= budget  # all pools at max fit the budget
    assert processes * (size + 1) + reserve > budget  # and no bigger size would


@pytest.mark.parametrize(
    ("budget", "processes", "reserve"), [(3, 4, 0), (4, 4, 1), (10, 0, 0), (10, 2, -1)]
)
def test_per_process_size_refuses_impossible_budgets(budget: int, processes: int, reserve: int):
    with pytest.raises(ValueError, match=r"processes|reserve|budget"):
        per_process_size(budget, processes, reserve=reserve)


async def test_stop_on_signals_sets_event_and_restores_handler():
    def previous(signum: int, frame: Any) -> None:
        raise AssertionError("the previous handler must not run while stop_on_signals is on")

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        with stop_on_signals([signal.SIGUSR1]) as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(stop.wait(), 5)
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)


# ----------------------------------------------------------------------------- fork


async def test_pool_opened_before_fork_refuses_in_child(postgres_dsn: str):
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            parent_pid = await conn.fetchval("SELECT pg_backend_pid()")
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # Python 3.12+ warns about fork() with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child, reports through the pipe
            os.close(read_end)
            report = "unexpected"
            try:

                async def in_child() -> str:
                    try:
                        async with pool.acquire():
                            return "lent a connection"
                    except asyncpool.PoolUsageError as exc:
                        refused = str(exc)
                    # The fix: a new pool in the child works.
                    async with (
                        asyncpool.create_pool(postgres_dsn, min_size=1) as own,
                        own.acquire() as own_conn,
                    ):
                        value = await own_conn.fetchval("SELECT 41 + 1")
                    return f"refused: {refused} | own pool: {value}"

                report = asyncio.run(in_child())
            except BaseException as exc:
                report = f"error: {exc!r}"
            finally:
                os.write(write_end, report.encode())
                os._exit(0 if report.startswith("refused") else 1)
        os.close(write_end)
        chunks = []
        while chunk := await asyncio.to_thread(os.read, read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = await asyncio.to_thread(os.waitpid, child, 0)
        report = b"".join(chunks).decode()
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert "was opened in another process before fork()" in report
        assert "create a new pool in each child process" in report
        assert report.endswith("own pool: 42")
        # The child did not touch the parent's connections: same session, still working.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == parent_pid
        assert pool.stats().connections_lost_total == 0


# ----------------------------------------------------------------------------- SIGTERM


@pytest.fixture
async def own_database_dsn(postgres_dsn: str) -> AsyncIterator[str]:
    """A DSN for a database of this test's own: ``pg_stat_database.sessions_abandoned``
    counts per database, so sessions that other tests' pools leave behind on the
    shared database (ended by the server or a garbage collector while this test runs)
    do not count as the workers'.
    """
    parts = urllib.parse.urlsplit(postgres_dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        pytest.skip("needs a URL DSN to point at a database of its own")
    name = f"aptest_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_sigterm_drains_jobs_and_closes_connections(own_database_dsn: str):
    postgres_dsn = own_database_dsn
    workers = example_workers()
    table = f"jobs_{uuid.uuid4().hex[:8]}"
    prefix = f"aptest-worker-{uuid.uuid4().hex[:8]}"
    processes_n, budget, n_jobs = 3, 6, 60
    pool_size = per_process_size(budget, processes_n)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await workers.prepare(postgres_dsn, table, n_jobs)
        abandoned_before = await sessions_abandoned(admin)

        # Phase 1: workers take jobs (0.3 s each, 3 s of work for all); SIGTERM while
        # jobs are in flight.
        context = multiprocessing.get_context("spawn")
        claimed = [context.Event() for _ in range(processes_n)]
        procs = [
            context.Process(
                target=workers.worker_process,
                args=(postgres_dsn, f"{prefix}-{i}", table, pool_size, 0.3, False, claimed[i]),
            )
            for i in range(processes_n)
        ]
        for proc in procs:
            proc.start()
        try:
            for event in claimed:
                assert await asyncio.to_thread(event.wait, 30), "a worker never took a job"
            in_flight = await locked_jobs(admin, table)
            assert in_flight, "jobs are in flight at SIGTERM"
            sent = time.monotonic()
            for proc in procs:
                os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                await asyncio.to_thread(proc.join, 10)
            stopped_in = time.monotonic() - sent
            assert [proc.exitcode for proc in procs] == [0] * processes_n
            assert stopped_in < 5, f"workers took {stopped_in:.1f}s to stop"
        finally:
            for proc in procs:
                if proc.exitcode is None:
                    proc.kill()
                    proc.join()

        # In-flight jobs were finished, not abandoned; nothing ran twice; jobs remain.
        done = {
            r["id"] for r in await admin.fetch(f"SELECT id FROM {table} WHERE done_at IS NOT NULL")
        }
        assert in_flight <= done
        assert len(done) < n_jobs, "SIGTERM stopped the workers before the queue was empty"
        await assert_exactly_once(admin, table)
        await assert_sessions_gone(admin, prefix, abandoned_before)

        # Phase 2: the rest of the queue, then every job is done exactly once.
        await asyncio.to_thread(run_until_empty, workers, postgres_dsn, table, prefix)
        assert await admin.fetchval(f"SELECT count(*) FROM {table} WHERE done_at IS NULL") == 0
        await assert_exactly_once(admin, table)
        assert await admin.fetchval(f"SELECT count(*) FROM {table}_runs") == n_jobs
        await assert_sessions_gone(admin, prefix, abandoned_before)
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}, {table}_runs")
        await admin.close()


def run_until_empty(workers: Any, dsn: str, table: str, prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=workers.worker_process, args=(dsn, f"{prefix}-late-{i}", table, 2, 0.0, True)
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(20)
    assert [proc.exitcode for proc in procs] == [0, 0]


async def sessions_abandoned(admin: asyncpg.Connection) -> int:
    """Sessions of this database that ended without the client's Terminate message."""
    return int(
        await admin.fetchval(
            "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def locked_jobs(admin: asyncpg.Connection, table: str) -> set[int]:
    """Jobs whose rows a worker holds locked right now (claimed, not yet committed)."""
    async with admin.transaction():
        pending = {
            r["id"] for r in await admin.fetch(f"SELECT id FROM {table} WHERE done_at IS NULL")
        }
        free = {
            r["id"]
            for r in await admin.fetch(
                f"SELECT id FROM {table} WHERE done_at IS NULL FOR UPDATE SKIP LOCKED"
            )
        }
        # The transaction ends here (commit of a read-only transaction): locks released.
    return pending - free


async def assert_exactly_once(admin: asyncpg.Connection, table: str) -> None:
    bad = await admin.fetch(f"""
        SELECT j.id, count(r.job_id) AS runs
        FROM {table} j LEFT JOIN {table}_runs r ON r.job_id = j.id
        GROUP BY j.id
        HAVING count(r.job_id) <> (CASE WHEN j.done_at IS NULL THEN 0 ELSE 1 END)
    """)
    assert bad == [], f"jobs not run exactly once when done: {bad}"


async def assert_sessions_gone(admin: asyncpg.Connection, prefix: str, abandoned: int) -> None:
    async def gone() -> bool:
        return not await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
            prefix + "%",
        )

    await eventually(gone, "the workers' server sessions have ended")
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    # Every worker closed its pool: each session ended with a Terminate message.
    assert await sessions_abandoned(admin) == abandoned


async def test_abandoned_sessions_are_counted(own_database_dsn: str):
    """The control for assert_sessions_gone: a process that dies holding a connection
    (no Terminate message, as when a worker exits without closing its pool) counts.
    """
    postgres_dsn = own_database_dsn
    admin = await asyncpg.connect(postgres_dsn)
    try:
        before = await sessions_abandoned(admin)
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import asyncio, sys, asyncpg\n"
            "async def main():\n"
            "    conn = await asyncpg.connect(sys.argv[1])\n"
            "    print('connected', flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "    await conn.close()\n"
            "asyncio.run(main())\n",
            postgres_dsn,
            stdout=asyncio.subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 20) == b"connected\n"
        holder.kill()
        await holder.wait()

        async def counted() -> bool:
            await admin.execute("SELECT pg_stat_clear_snapshot()")
            return await sessions_abandoned(admin) == before + 1

        await eventually(counted, "the dead process's session is counted as abandoned")
    finally:
        await admin.close()
