"""Smoke test of the overload benchmark (benchmarks/overload.py): a tiny run against the
test server, and the outcome classification it rests on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_overload_harness_tiny_run(postgres_dsn: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "overload",
        "--dsn",
        postgres_dsn,
        "--systems",
        "asyncpool,asyncpg",
        "--loads",
        "0.8,2",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
        "--drain",
        "0.5",
        "--capacity-seconds",
        "0.3",
        "--capacity-rounds",
        "1",
        "--output-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert set(doc) == {"meta", "capacity", "cells"}
    assert set(doc["meta"]["systems"]) == {"asyncpool", "asyncpg"}
    capacity = doc["capacity"]["value"]
    assert capacity > 0
    assert [c["status"] for c in doc["capacity"]["per_system"]] == ["ok", "ok"]
    assert (tmp_path / "smoke.md").read_text().startswith("# Overload benchmark")
    assert (tmp_path / "smoke.png").stat().st_size > 10_000

    cells = {(c["load"], c["system"]): c for c in doc["cells"]}
    assert set(cells) == {(load, s) for load in (0.8, 2.0) for s in ("asyncpool", "asyncpg")}
    for key, cell in cells.items():
        assert cell["status"] == "ok", (key, cell["error"])
        assert cell["offered"] > 0, key
        assert 0 <= cell["good"] <= cell["completed"] <= cell["offered"], key
        outcomes = ("completed", "shed", "timeout_wait", "timeout_query", "errors", "unfinished")
        assert sum(cell[k] for k in outcomes) == cell["offered"], key
        assert cell["completed"] == cell["good"] + cell["late"], key
        assert cell["goodput"] == pytest.approx(cell["good"] / cell["window_s"]), key
        assert cell["goodput_x"] == pytest.approx(cell["goodput"] / capacity), key
        assert cell["offered_rate"] == pytest.approx(key[0] * capacity), key
        assert 0 <= cell["wasted_server_s"] <= cell["server_estimate_s"], key
        assert 0 <= cell["wasted_frac"] <= 1, key
        if cell["good"]:
            assert 0 < cell["p50_good_ms"] <= cell["p99_good_ms"] <= cell["max_good_ms"], key
            # Good means done inside the deadline, counted from the scheduled arrival.
            assert cell["max_good_ms"] <= doc["meta"]["deadline_s"] * 1e3, key
    # Below capacity nearly everything is served in time.
    for system in ("asyncpool", "asyncpg"):
        cell = cells[(0.8, system)]
        assert cell["good"] >= 0.5 * cell["offered"], cell


def test_outcome_classification() -> None:
    from benchmarks.overload import (
        ERROR,
        SHED,
        SHED_MARGIN,
        TIMEOUT_QUERY,
        TIMEOUT_WAIT,
        _classify,
    )

    class PoolTimeout(Exception):  # psycopg_pool's is no TimeoutError: matched by name
        pass

    class TooManyWaiters(Exception):
        pass

    class EarlyRefusal(TimeoutError):  # a pool's PoolTimeout subclass, say
        pass

    early, at_deadline = 0.05, SHED_MARGIN / 2
    # Not yet lent a connection: an early refusal is a shed, one at the deadline a timeout.
    for exc in (PoolTimeout(), TooManyWaiters(), EarlyRefusal(), TimeoutError()):
        assert _classify(exc, False, early) == SHED, exc
        assert _classify(exc, False, at_deadline) == TIMEOUT_WAIT, exc
    assert _classify(ConnectionError(), False, early) == ERROR
    # Lent, query sent: the deadline ends it (however it is raised), or it is an error.
    assert _classify(TimeoutError(), True, at_deadline) == TIMEOUT_QUERY
    assert _classify(RuntimeError(), True, -0.001) == TIMEOUT_QUERY
    assert _classify(TimeoutError(), True, early) == ERROR


def test_poisson_schedule_is_seeded_and_in_range() -> None:
    from benchmarks.overload import poisson_schedule

    a = poisson_schedule(2000.0, 1.0, seed=3)
    assert a == poisson_schedule(2000.0, 1.0, seed=3)
    assert a != poisson_schedule(2000.0, 1.0, seed=4)
    assert a == sorted(a) and a[0] > 0 and a[-1] < 1.0
    assert 1800 < len(a) < 2200
