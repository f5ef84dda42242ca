"""Smoke test of the benchmark harness: its tiniest run against the real test server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_harness_tiny_run(postgres_dsn: str, tmp_path: Path) -> None:
    for module in ("psycopg_pool", "sqlalchemy", "matplotlib", "uvloop"):
        pytest.importorskip(module)
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--dsn",
        postgres_dsn,
        "--output-dir",
        str(tmp_path),
        "--name",
        "smoke",
        "--workloads",
        "select1",
        "--concurrency",
        "1,10",
        "--loops",
        "asyncio,uvloop",
        "--duration",
        "0.05",
        "--warmup",
        "0.01",
        "--warmup-cap",
        "0.5",
        "--no-memory",
        "--no-progress",
    ]
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert {"meta", "cells", "memory", "machinery", "targets"} <= doc.keys()
    assert (tmp_path / "smoke.md").read_text().startswith("# asyncpool benchmark results")
    assert (tmp_path / "smoke.png").stat().st_size > 10_000

    systems = set(doc["meta"]["systems"])
    assert systems == {
        "asyncpool",
        "asyncpg",
        "asyncpg-noreset",
        "psycopg",
        "sqlalchemy",
        "pinned",
        "lock",
        "per-request",
    }
    assert doc["meta"]["skipped"] == {}
    cells = {(c["loop"], c["workload"], c["system"], c["concurrency"]): c for c in doc["cells"]}
    assert len(cells) == 2 * 2 * len(systems)
    for key, cell in cells.items():
        assert cell["status"] == "ok", (key, cell["error"])
        assert cell["throughput"] > 0, key
        assert cell["ops"] > 0, key
        assert cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"], key
        assert cell["connections_opened"] >= 1, key
        assert "throughput_vs_pinned" in cell["ratios"], key
    asyncpool = cells[("asyncio", "select1", "asyncpool", 10)]
    assert set(asyncpool["ratios"]["asyncpool_vs"]) == systems - {"asyncpool"}
    assert asyncpool["connections_opened"] == 10

    machinery = {(m["loop"], m["system"]): m for m in doc["machinery"]}
    assert machinery[("asyncio", "asyncpool (fake)")]["us_per_cycle"] > 0
    assert machinery[("uvloop", "pinned (fake)")]["us_per_cycle"] > 0
    for m in machinery.values():
        assert m["error"] is None, m

    statuses = {t["status"] for t in doc["targets"]}
    assert statuses <= {"PASS", "FAIL", "SKIP"}
    assert any(t["status"] != "SKIP" for t in doc["targets"])
    assert sum(
        line.startswith(("PASS: ", "FAIL: ", "SKIP: ")) for line in proc.stdout.splitlines()
    ) == len(doc["targets"])


def test_target_ratio_pairs_the_repetitions() -> None:
    """A target over cells run several times takes the median of the per-repetition
    ratios (drift between repetitions cancels); with one run, the plain ratio."""
    from benchmarks.runner import CellResult
    from benchmarks.targets import evaluate_targets

    def cell(system: str, conc: int, throughputs: list[float]) -> CellResult:
        ordered = sorted(throughputs)
        result = CellResult(
            system, "select1", conc, "asyncio", throughput=ordered[(len(ordered) - 1) // 2]
        )
        if len(throughputs) > 1:
            result.extra["repeats"] = [{"throughput": t, "status": "ok"} for t in throughputs]
        return result

    # The machine is slow in the 2nd and 3rd repetitions, and during our 4th run only:
    # the medians' ratio says 0.45 (450 / 1000), the pairs 0.9 in four of five.
    ours, ref = [900.0, 450.0, 450.0, 450.0, 900.0], [1000.0, 500.0, 500.0, 1000.0, 1000.0]
    cells = {
        ("asyncio", "select1", "asyncpool", 100): cell("asyncpool", 100, ours),
        ("asyncio", "select1", "pinned", 100): cell("pinned", 100, ref),
    }
    (target,) = [
        t
        for t in evaluate_targets(cells, ["asyncio"], [])
        if t.name.startswith("SELECT 1, 100 borrowers")
    ]
    assert target.ratio is not None and abs(target.ratio - 0.9) < 0.001
    assert "median of 5 paired repetitions" in target.detail and target.status == "PASS"
    cells = {
        ("asyncio", "select1", "asyncpool", 100): cell("asyncpool", 100, [800.0]),
        ("asyncio", "select1", "pinned", 100): cell("pinned", 100, [1000.0]),
    }
    (target,) = [
        t
        for t in evaluate_targets(cells, ["asyncio"], [])
        if t.name.startswith("SELECT 1, 100 borrowers")
    ]
    assert target.ratio == 0.8 and target.status == "FAIL" and "paired" not in target.detail
