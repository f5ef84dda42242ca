"""``python -m asyncpool demo``: one shared connection vs a connection per request vs a pool.

Runs the same concurrent workload three ways against one PostgreSQL server and
prints throughput and latency side by side. With no ``--dsn`` it starts a
throwaway server from the local PostgreSQL binaries (see ``asyncpool.testing``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

import asyncpg

from ._errors import PoolError
from ._pool import create_pool
from .testing._cluster import PostgresNotFoundError

__all__ = ("main", "run_demo")

QUERY = "SELECT pg_sleep(0.002), $1::int"
Request = Callable[[int], Awaitable[None]]


class _Progress:
    def __init__(self, label: str, total: int, out: TextIO) -> None:
        self.label, self.total, self.done, self.out = label, total, 0, out
        self._shown = -1
        self._every = 5 if out.isatty() else 50

    def step(self) -> None:
        self.done += 1
        percent = self.done * 100 // self.total
        if percent != self._shown and (percent % self._every == 0 or self.done == self.total):
            self._shown = percent
            bar = "#" * (percent // 5)
            self.out.write(f"\r  {self.label:<24} [{bar:<20}] {percent:3d}%")
            self.out.flush()

    def finish(self) -> None:
        self.out.write("\n")


async def _measure(
    label: str, request: Request, requests: int, concurrency: int, out: TextIO
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    progress = _Progress(label, requests, out)
    queue = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        for i in queue:
            t0 = time.perf_counter()
            try:
                await request(i)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - t0)
            progress.step()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    progress.finish()
    latencies.sort()
    return {
        "strategy": label,
        "throughput": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
    }


async def run_demo(
    dsn: str,
    *,
    requests: int = 2000,
    concurrency: int = 50,
    pool_size: int = 10,
    out: TextIO = sys.stdout,
) -> list[dict[str, Any]]:
    """Run the three strategies on ``dsn`` and return one result row per strategy."""
    results = []
    out.write(f"{requests} requests, {concurrency} concurrent, each {QUERY!r}\n")

    shared = await asyncpg.connect(dsn)
    lock = asyncio.Lock()

    async def one_shared(i: int) -> None:
        async with lock:  # one connection runs one query at a time
            await shared.fetchval(QUERY, i)

    try:
        results.append(
            await _measure("one shared connection", one_shared, requests, concurrency, out)
        )
    finally:
        await shared.close()

    async def per_request(i: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.fetchval(QUERY, i)
        finally:
            await conn.close()

    per_request_count = max(requests // 4, concurrency)
    results.append(
        await _measure("connection per request", per_request, per_request_count, concurrency, out)
    )

    async with create_pool(dsn, min_size=pool_size, max_size=pool_size) as pool:

        async def pooled(i: int) -> None:
            async with pool.acquire() as conn:
                await conn.fetchval(QUERY, i)

        results.append(
            await _measure(f"asyncpool (size {pool_size})", pooled, requests, concurrency, out)
        )
    return results


def _table(rows: list[dict[str, Any]]) -> str:
    base = rows[-1]["throughput"]
    lines = [
        "| strategy | requests/s | p50 ms | p99 ms | errors | vs pool |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['throughput']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {r['throughput'] / base:.2f}x |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _server(dsn: str | None, out: TextIO) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from .testing import PostgresServer

    out.write("Starting a throwaway PostgreSQL from the local binaries...\n")
    out.flush()
    with PostgresServer() as server:
        yield server.dsn


DESCRIPTION = (
    "Run the same concurrent workload three ways against one PostgreSQL server (one "
    "shared connection, a new connection per request, and an asyncpool pool) and print "
    "throughput and p50/p99 latency side by side. Each request runs "
    f"'{QUERY}'. Without --dsn it starts a throwaway server from the local PostgreSQL "
    "binaries and removes it afterwards."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m asyncpool demo", description=DESCRIPTION)
    parser.add_argument(
        "--dsn",
        help="PostgreSQL DSN, e.g. postgresql://user:password@host:5432/db "
        "(default: start a throwaway server)",
    )
    parser.add_argument(
        "--requests",
        type=_positive_int,
        default=2000,
        metavar="N",
        help="requests per strategy (a quarter of them for the slow connection-per-request "
        "strategy; default 2000)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=50,
        metavar="N",
        help="requests in flight at once (default 50)",
    )
    parser.add_argument(
        "--pool-size",
        type=_positive_int,
        default=10,
        metavar="N",
        help="the pool's min_size and max_size (default 10)",
    )
    return parser


def _connect_error_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m asyncpool demo``; returns the exit status.

    A server that cannot be reached (refused, wrong password, unknown database, no
    local PostgreSQL binaries) is reported in one line on stderr, with exit status 1.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        with _server(args.dsn, out) as dsn:
            rows = asyncio.run(
                run_demo(
                    dsn,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    pool_size=args.pool_size,
                    out=out,
                )
            )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(
            f"asyncpool demo: cannot use the database: {_connect_error_line(exc)}", file=sys.stderr
        )
        return 1
    except PostgresNotFoundError as exc:
        print(f"asyncpool demo: {_connect_error_line(exc)} (or pass --dsn)", file=sys.stderr)
        return 1
    except PoolError as exc:
        print(f"asyncpool demo: {_connect_error_line(exc)}", file=sys.stderr)
        return 1
    out.write("\n" + _table(rows) + "\n")
    return 0
