"""The issue's performance targets, each evaluated from cells measured in the same run.

A target is a ratio of two measurements and a threshold; nothing is hard-coded. A
target whose cells were not measured (filtered out) is reported as SKIP, and one
whose cells failed (error, timeout, no operation completed) as FAIL.

When both cells ran several times, the grid ran them in the same repetitions, close
together in time: the target's ratio is then the median of the per-repetition ratios
(paired), which cancels the machine's drift between repetitions that a ratio of the
two medians keeps (on a shared 2-core machine one cell's throughput moves by 30 %
from one repetition to the next).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from typing import Any

from .machinery import MachineryResult
from .runner import CellResult

__all__ = ("TARGETS", "CellKey", "Target", "TargetResult", "evaluate_targets", "target_cells")

#: (loop, workload, system, concurrency)
CellKey = tuple[str, str, str, int]


@dataclasses.dataclass(frozen=True)
class Target:
    """``numerator / denominator`` compared with ``threshold`` using ``op``."""

    name: str
    # Each side: (workload, system, concurrency, metric) with metric "throughput" or "p99_ms".
    numerator: tuple[str, str, int, str]
    denominator: tuple[str, str, int, str]
    op: str  # ">=" or "<="
    threshold: float


@dataclasses.dataclass
class TargetResult:
    """One target on one event loop."""

    name: str
    loop: str
    ratio: float | None
    op: str
    threshold: float
    status: str  # PASS | FAIL | SKIP
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        shown = "n/a" if self.ratio is None else f"{self.ratio:.2f}x"
        return (
            f"{self.status}: {self.name} [{self.loop}]: {shown} "
            f"(target {self.op} {self.threshold:g}x; {self.detail})"
        )


TARGETS: tuple[Target, ...] = (
    Target(
        "SELECT 1, 100 borrowers: asyncpool throughput vs pinned",
        ("select1", "asyncpool", 100, "throughput"),
        ("select1", "pinned", 100, "throughput"),
        ">=",
        0.85,
    ),
    Target(
        "SELECT 1, 1 borrower: asyncpool throughput vs pinned",
        ("select1", "asyncpool", 1, "throughput"),
        ("select1", "pinned", 1, "throughput"),
        ">=",
        0.85,
    ),
    Target(
        "acquire+release, 1 borrower: asyncpool throughput vs psycopg_pool",
        ("acquire", "asyncpool", 1, "throughput"),
        ("acquire", "psycopg", 1, "throughput"),
        ">=",
        4.0,
    ),
    Target(
        "acquire+release, 1 borrower: asyncpool throughput vs asyncpg pool",
        ("acquire", "asyncpool", 1, "throughput"),
        ("acquire", "asyncpg", 1, "throughput"),
        ">=",
        20.0,
    ),
    Target(
        "SELECT 1, 1000 borrowers: asyncpool p99 vs pinned p99",
        ("select1", "asyncpool", 1000, "p99_ms"),
        ("select1", "pinned", 1000, "p99_ms"),
        "<=",
        1.5,
    ),
    Target(
        "SELECT 1: asyncpool throughput at 10000 vs at 100 borrowers",
        ("select1", "asyncpool", 10000, "throughput"),
        ("select1", "asyncpool", 100, "throughput"),
        ">=",
        0.85,
    ),
)

#: Machinery targets: (name, asyncpool system, peer system, threshold); ratio = peer µs / ours.
MACHINERY_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("machinery: acquire+release µs, psycopg_pool vs asyncpool", "asyncpool", "psycopg", 4.0),
    ("machinery: acquire+release µs, asyncpg pool vs asyncpool", "asyncpool", "asyncpg", 20.0),
)


def target_cells() -> set[tuple[str, str, int]]:
    """The (workload, system, concurrency) cells the grid targets read."""
    return {side[:3] for t in TARGETS for side in (t.numerator, t.denominator)}


def _describe(side: tuple[str, str, int, str]) -> str:
    _, system, conc, metric = side
    return f"{system}@{conc} {metric}"


def _value(
    cells: Mapping[CellKey, CellResult], loop: str, side: tuple[str, str, int, str]
) -> tuple[float | None, str | None]:
    workload, system, conc, metric = side
    cell = cells.get((loop, workload, system, conc))
    if cell is None:
        return None, "not measured"
    value = getattr(cell, metric)
    if cell.status != "ok" or value is None or not math.isfinite(value) or value <= 0:
        return None, f"{_describe(side)}: {cell.status} {cell.error or 'no value'}"
    return float(value), None


def _paired(cells: Mapping[CellKey, CellResult], loop: str, t: Target) -> list[float]:
    """Per-repetition ratios of the target's two cells (empty unless both have the same
    number of repetitions, each with a value)."""
    sides = [cells.get((loop, *side[:3])) for side in (t.numerator, t.denominator)]
    if sides[0] is None or sides[1] is None:
        return []
    reps = [cell.extra.get("repeats") or [] for cell in sides]
    if len(reps[0]) != len(reps[1]) or len(reps[0]) < 3:
        return []
    ratios = []
    for a, b in zip(reps[0], reps[1], strict=True):
        x, y = a.get(t.numerator[3]), b.get(t.denominator[3])
        if a.get("status") != "ok" or b.get("status") != "ok" or not x or not y:
            return []
        ratios.append(x / y)
    return ratios


def _compare(ratio: float, op: str, threshold: float) -> bool:
    return ratio >= threshold if op == ">=" else ratio <= threshold


def evaluate_targets(
    cells: Mapping[CellKey, CellResult], loops: list[str], machinery: list[MachineryResult]
) -> list[TargetResult]:
    """Evaluate every target on every loop that was run."""
    results: list[TargetResult] = []
    for loop in loops:
        for t in TARGETS:
            num, why_num = _value(cells, loop, t.numerator)
            den, why_den = _value(cells, loop, t.denominator)
            if num is None or den is None:
                why = why_num or why_den or ""
                status = "SKIP" if why == "not measured" else "FAIL"
                results.append(TargetResult(t.name, loop, None, t.op, t.threshold, status, why))
                continue
            unit = "ops/s" if t.numerator[3] == "throughput" else "ms"
            detail = (
                f"{_describe(t.numerator)} {num:,.3g} {unit} / "
                f"{_describe(t.denominator)} {den:,.3g} {unit}"
            )
            paired = _paired(cells, loop, t)
            if paired:
                ratio = statistics.median(paired)
                detail = (
                    f"median of {len(paired)} paired repetitions (each "
                    f"{min(paired):.2f}-{max(paired):.2f}x); medians: {detail}"
                )
            else:
                ratio = num / den
            status = "PASS" if _compare(ratio, t.op, t.threshold) else "FAIL"
            results.append(TargetResult(t.name, loop, ratio, t.op, t.threshold, status, detail))
        by_name = {m.system: m for m in machinery if m.loop == loop}
        for name, ours, peer, threshold in MACHINERY_TARGETS:
            a, b = by_name.get(ours), by_name.get(peer)
            if a is None or b is None:
                results.append(
                    TargetResult(name, loop, None, ">=", threshold, "SKIP", "not measured")
                )
                continue
            if not a.us_per_cycle or not b.us_per_cycle:
                results.append(
                    TargetResult(
                        name, loop, None, ">=", threshold, "FAIL", a.error or b.error or "no value"
                    )
                )
                continue
            ratio = b.us_per_cycle / a.us_per_cycle
            detail = f"{peer} {b.us_per_cycle:.2f} µs / {ours} {a.us_per_cycle:.2f} µs per cycle"
            status = "PASS" if ratio >= threshold else "FAIL"
            results.append(TargetResult(name, loop, ratio, ">=", threshold, status, detail))
    return results
