"""CPU instructions per operation, counted by valgrind: a noise-free A/B for the hot path.

Wall-clock figures on a shared 2-core machine move by 30 % between runs; the number
of instructions the client process executes per operation does not (it repeats to
within ~0.2 %). This counts them with ``valgrind --tool=cachegrind`` for a scenario
run twice with different operation counts, so start-up and pool creation cancel out::

    python -m benchmarks.icount                     # every scenario, asyncpool and pinned
    python -m benchmarks.icount --scenario wait-select1 --loop uvloop
    python -m benchmarks.icount --path /tmp/old     # an older asyncpool checkout

Scenarios: ``hot`` (acquire+release of an idle connection, fake connection),
``wait`` (100 borrowers over 10 fake connections, each holding one across a
``sleep(0)``), ``select1`` and ``wait-select1`` (``SELECT 1`` on a real server at 1 and
100 borrowers over 10 connections; needs ``--dsn``, or a server started here). The
``pinned`` FIFO of :mod:`benchmarks.systems` runs the same scenario as the reference.
Needs ``valgrind`` on ``PATH``. Instructions are not time (a cache miss costs more
than an add), but a change that removes instructions from the hot path is one the
wall clock would show on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ("SCENARIOS", "count_per_op", "main")

#: name: (borrowers, connections, real server)
SCENARIOS: dict[str, tuple[int, int, bool]] = {
    "hot": (1, 1, False),
    "wait": (100, 10, False),
    "select1": (1, 10, True),
    "wait-select1": (100, 10, True),
}

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def _scenario(system: str, scenario: str, ops: int, dsn: str | None) -> None:
    import asyncpg

    import asyncpool

    from .machinery import FakeConnection, fake_connect
    from .systems import PinnedPool

    borrowers, size, real = SCENARIOS[scenario]
    if system == "pinned":
        conns = (
            [await asyncpg.connect(dsn) for _ in range(size)]
            if real
            else [FakeConnection() for _ in range(size)]
        )
        acquire = PinnedPool(conns).acquire
    else:
        kwargs = {} if real else {"connect": fake_connect}
        pool = await asyncpool.create_pool(
            dsn if real else None, min_size=size, max_size=size, **kwargs
        )
        acquire = pool.acquire

    async def borrower() -> None:
        for _ in range(ops // borrowers):
            async with acquire() as conn:
                if real:
                    await conn.fetchval("SELECT 1")
                elif borrowers > 1:
                    await asyncio.sleep(0)

    await asyncio.gather(*(borrower() for _ in range(borrowers)))


def _child(argv: list[str]) -> None:
    system, scenario, ops, loop, dsn = argv[0], argv[1], int(argv[2]), argv[3], argv[4]
    coro = _scenario(system, scenario, ops, dsn or None)
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _instructions(path: Path, system: str, scenario: str, ops: int, loop: str, dsn: str) -> int:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [
                str(path),
                str(Path(__file__).resolve().parent.parent),
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
    )
    result = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.icount",
            "--child",
            system,
            scenario,
            str(ops),
            loop,
            dsn,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=path,  # ``-m`` puts the working directory first on sys.path
    )
    match = _REFS.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"valgrind run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def count_per_op(
    system: str,
    scenario: str,
    *,
    loop: str = "asyncio",
    dsn: str = "",
    path: Path | None = None,
    ops: int = 2000,
) -> int:
    """Instructions per operation: the difference of a run of ``3 * ops`` operations
    and one of ``ops``, divided by ``2 * ops``."""
    where = path or Path(__file__).resolve().parent.parent
    small = _instructions(where, system, scenario, ops, loop, dsn)
    large = _instructions(where, system, scenario, 3 * ops, loop, dsn)
    return round((large - small) / (2 * ops))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.icount",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--dsn", default="", help="server for the real scenarios")
    parser.add_argument("--path", type=Path, help="directory holding the asyncpool to count")
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    scenarios = args.scenario or list(SCENARIOS)
    server = None
    if any(SCENARIOS[s][2] for s in scenarios) and not args.dsn:
        from asyncpool.testing import PostgresServer

        server = PostgresServer()
        server.start()
        args.dsn = server.dsn
    try:
        for scenario in scenarios:
            ours = count_per_op(
                "asyncpool", scenario, loop=args.loop, dsn=args.dsn, path=args.path, ops=args.ops
            )
            ref = count_per_op("pinned", scenario, loop=args.loop, dsn=args.dsn, ops=args.ops)
            print(
                f"{scenario:13} {args.loop:8} asyncpool {ours:7,d}  pinned {ref:7,d}  "
                f"+{ours - ref:,d} instructions/op ({ref / ours:.2f}x pinned)",
                flush=True,
            )
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
