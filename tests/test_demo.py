from __future__ import annotations

import io
import subprocess
import sys

import asyncpool
from asyncpool._demo import _table, run_demo


async def test_demo_compares_three_strategies(postgres_dsn: str) -> None:
    out = io.StringIO()
    rows = await run_demo(postgres_dsn, requests=200, concurrency=20, pool_size=5, out=out)
    assert [r["strategy"] for r in rows] == [
        "one shared connection",
        "connection per request",
        "asyncpool (size 5)",
    ]
    assert all(r["errors"] == 0 and r["throughput"] > 0 for r in rows)
    # The point of the demo: a pool beats one shared connection on concurrent work.
    assert rows[2]["throughput"] > rows[0]["throughput"]
    table = _table(rows)
    assert "| asyncpool (size 5) |" in table and "1.00x" in table
    assert "100%" in out.getvalue()


def test_cli_help_and_unknown_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncpool", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "asyncpool", "nope"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "unknown command" in done.stderr
    assert asyncpool.__version__
