"""Results on disk: JSON for machines, a markdown report, and a PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .machinery import MachineryResult
from .runner import CellResult
from .targets import CellKey, TargetResult

__all__ = ("add_ratios", "build_json", "write_json", "write_markdown", "write_plot")

REFERENCE = "pinned"
OURS = "asyncpool"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def add_ratios(cells: Mapping[CellKey, CellResult]) -> dict[CellKey, dict[str, Any]]:
    """Ratios of each cell to pinned, and of asyncpool to each other system."""
    out: dict[CellKey, dict[str, Any]] = {}
    for key, cell in cells.items():
        loop, workload, system, conc = key
        ref = cells.get((loop, workload, REFERENCE, conc))
        ratios: dict[str, Any] = {
            "throughput_vs_pinned": _ratio(cell.throughput, ref.throughput) if ref else None,
            "p99_vs_pinned": _ratio(cell.p99_ms, ref.p99_ms) if ref else None,
        }
        if system == OURS:
            ratios["asyncpool_vs"] = {
                other: {
                    "throughput": _ratio(cell.throughput, peer.throughput),
                    "p99": _ratio(cell.p99_ms, peer.p99_ms),
                }
                for (lp, wl, other, c), peer in cells.items()
                if lp == loop and wl == workload and c == conc and other != OURS
            }
        out[key] = ratios
    return out


def build_json(
    meta: Mapping[str, Any],
    cells: Mapping[CellKey, CellResult],
    memory: list[dict[str, Any]],
    machinery: list[MachineryResult],
    targets: list[TargetResult],
) -> dict[str, Any]:
    """The whole run as one JSON-serialisable document."""
    ratios = add_ratios(cells)
    return {
        "meta": dict(meta),
        "cells": [{**cell.to_json(), "ratios": ratios[key]} for key, cell in cells.items()],
        "memory": memory,
        "machinery": [m.to_json() for m in machinery],
        "targets": [t.to_json() for t in targets],
    }


# ------------------------------------------------------------------ markdown


def _ops(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}"


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.3f}"


def _x(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def _cpu(cell: CellResult | None) -> str:
    if cell is None or cell.cpu_us_per_op is None:
        return "-"
    return f"{cell.cpu_us_per_op:.1f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _cell_mark(cell: CellResult) -> str:
    marks = []
    if cell.status != "ok":
        marks.append(cell.status.upper())
    if cell.errors:
        marks.append(f"{sum(cell.errors.values())} err")
    if not cell.steady:
        marks.append("†")
    return (" " + " ".join(marks)) if marks else ""


def write_markdown(path: Path, doc: Mapping[str, Any], cells: Mapping[CellKey, CellResult]) -> None:
    """Write the human-readable report."""
    meta = doc["meta"]
    systems = list(meta["systems"])
    out: list[str] = ["# asyncpool benchmark results", ""]
    out += [
        f"Run {meta['started']} - {meta['elapsed_s']:.0f} s wall time, "
        f"Python {meta['python']}, {meta['cpu_count']} CPU(s), PostgreSQL "
        f"{meta.get('server_version', '?')} on loopback TCP, pool size {meta['size']}. "
        f"Per cell: warm-up ≥ {meta['warmup']} s (until every borrower completed one "
        f"operation, at most {meta['warmup_cap']} s), then a {meta['duration']} s window; "
        f"{meta['repeat']} repetition(s) of the grid, {meta.get('target_repeat', 1)} of the "
        "cells the targets compare (median kept: the median-throughput run, with each "
        "latency the median over runs; a target's ratio is the median of its per-"
        "repetition ratios, each from two cells run close together). Load average at start: "
        f"{meta.get('loadavg_start')}, at end: {meta.get('loadavg_end')}.",
        "",
        "Command: `" + meta["command"] + "`",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f"; asyncpool at {meta.get('asyncpool_revision', '?')}.",
        "",
    ]
    out += ["## Targets", ""]
    out += _table(
        ["status", "target", "loop", "measured", "threshold", "detail"],
        (
            [
                t["status"],
                t["name"],
                t["loop"],
                _x(t["ratio"]),
                f"{t['op']} {t['threshold']:g}x",
                t["detail"],
            ]
            for t in doc["targets"]
        ),
    )
    if doc["machinery"]:
        out += ["## Machinery: pool overhead per acquire+release (µs, best of batches)", ""]
        loops = sorted({m["loop"] for m in doc["machinery"]})
        names = list(dict.fromkeys(m["system"] for m in doc["machinery"]))
        by = {(m["loop"], m["system"]): m for m in doc["machinery"]}
        ours = {lp: by.get((lp, "asyncpool (fake)")) for lp in loops}
        header = [
            "system",
            *[f"{lp} µs" for lp in loops],
            *[f"{lp} xasyncpool(fake)" for lp in loops],
            "note",
        ]
        rows = []
        for name in names:
            row = [name]
            for lp in loops:
                m = by.get((lp, name))
                row.append(
                    "-" if m is None or m["us_per_cycle"] is None else f"{m['us_per_cycle']:.2f}"
                )
            for lp in loops:
                m, base = by.get((lp, name)), ours[lp]
                row.append(_x(_ratio(m and m["us_per_cycle"], base and base["us_per_cycle"])))
            first = next((by[(lp, name)] for lp in loops if (lp, name) in by), None)
            row.append(first["note"] if first else "")
            rows.append(row)
        out += _table(header, rows)
    if doc["memory"]:
        out += [
            "## Peak memory (tracemalloc, MiB; SELECT 1, asyncio loop)",
            "",
            meta["memory_method"],
            "",
        ]
        concs = sorted({m["concurrency"] for m in doc["memory"]})
        by_mem = {(m["system"], m["concurrency"]): m for m in doc["memory"]}
        rows = []
        for system in systems:
            row = [system]
            for c in concs:
                m = by_mem.get((system, c))
                if m is None or m["peak_traced_kib"] is None:
                    row.append("-")
                    continue
                delta = m.get("delta_vs_pinned_kib")
                shown = f"{m['peak_traced_kib'] / 1024:.1f}"
                if delta is not None and system != REFERENCE:
                    shown += f" ({delta / 1024:+.1f})"
                row.append(shown)
            rows.append(row)
        out += _table(["system", *[f"{c} borrowers" for c in concs]], rows)
        out += [
            "(In brackets: difference from `pinned`, i.e. what the pool itself costs "
            "beyond N connections and the borrower tasks.)",
            "",
        ]

    out += ["## Systems", ""]
    out += [f"- `{name}`: {desc}" for name, desc in meta["systems"].items()]
    out += ["", "## Workloads", ""]
    out += [f"- `{name}`: {desc}" for name, desc in meta["workloads"].items()]
    out += [
        "",
        "Latency includes the wait for a connection. `†` marks a cell whose first "
        "round (every borrower done once) did not end within the warm-up cap; "
        "`TIMEOUT`/`ERROR`/`n err` mark failures (see the JSON for details). "
        "`max` includes the oldest operation still in flight at the end of the window.",
        "",
    ]

    loops = list(dict.fromkeys(k[0] for k in cells))
    workloads = list(dict.fromkeys(k[1] for k in cells))
    concs = sorted({k[3] for k in cells})
    for loop in loops:
        for workload in workloads:
            present = [s for s in systems if any((loop, workload, s, c) in cells for c in concs)]
            if not present:
                continue
            out += [f"## {workload} — {loop}", "", "Throughput, ops/s (x pinned):", ""]
            rows = []
            for s in present:
                row = [s]
                for c in concs:
                    cell = cells.get((loop, workload, s, c))
                    if cell is None:
                        row.append("")
                        continue
                    ref = cells.get((loop, workload, REFERENCE, c))
                    ratio = _ratio(cell.throughput, ref.throughput) if ref else None
                    shown = _ops(cell.throughput)
                    if ratio is not None and s != REFERENCE:
                        shown += f" ({_x(ratio)})"
                    row.append(shown + _cell_mark(cell))
                rows.append(row)
            out += _table(["system", *[str(c) for c in concs]], rows)
            out += ["Latency p50 / p99 / max, ms [connections opened]:", ""]
            rows = []
            for s in present:
                row = [s]
                for c in concs:
                    cell = cells.get((loop, workload, s, c))
                    row.append(
                        ""
                        if cell is None
                        else f"{_ms(cell.p50_ms)} / {_ms(cell.p99_ms)} / {_ms(cell.max_ms)} "
                        f"[{cell.connections_opened}]"
                    )
                rows.append(row)
            out += _table(["system", *[str(c) for c in concs]], rows)
            out += [
                "Client CPU per operation, µs (this process only; the server's CPU is "
                "not counted):",
                "",
            ]
            out += _table(
                ["system", *[str(c) for c in concs]],
                ([s, *[_cpu(cells.get((loop, workload, s, c))) for c in concs]] for s in present),
            )
            if OURS in present:
                out += [
                    "asyncpool vs each system (throughput ratio / p99 ratio; "
                    "throughput > 1 and p99 < 1 favour asyncpool):",
                    "",
                ]
                rows = []
                for s in present:
                    if s == OURS:
                        continue
                    row = [s]
                    for c in concs:
                        a = cells.get((loop, workload, OURS, c))
                        b = cells.get((loop, workload, s, c))
                        row.append(
                            ""
                            if a is None or b is None
                            else f"{_x(_ratio(a.throughput, b.throughput))} / "
                            f"{_x(_ratio(a.p99_ms, b.p99_ms))}"
                        )
                    rows.append(row)
                out += _table(["vs", *[str(c) for c in concs]], rows)
    failures = [c for c in cells.values() if c.status != "ok" or c.errors]
    if failures:
        out += ["## Failures and errors", ""]
        out += [
            f"- {c.system} {c.workload}@{c.concurrency} [{c.loop}]: {c.status}; "
            f"{c.error or ''} {c.errors or ''}".rstrip()
            for c in failures
        ]
        out.append("")
    path.write_text("\n".join(out))


# ------------------------------------------------------------------ plot

_STYLE: dict[str, dict[str, Any]] = {
    "asyncpool": {"color": "#d62728", "linewidth": 2.6, "marker": "o", "zorder": 10},
    "pinned": {"color": "black", "linestyle": "--", "marker": "s"},
    "asyncpg": {"color": "#1f77b4", "marker": "^"},
    "asyncpg-noreset": {"color": "#17becf", "marker": "v"},
    "psycopg": {"color": "#2ca02c", "marker": "D"},
    "sqlalchemy": {"color": "#9467bd", "marker": "P"},
    "lock": {"color": "#8c564b", "linestyle": ":", "marker": "x"},
    "per-request": {"color": "#7f7f7f", "linestyle": ":", "marker": "*"},
}


def write_plot(path: Path, cells: Mapping[CellKey, CellResult], systems: list[str]) -> None:
    """Throughput and p99 against concurrency (log x), one line per system.

    One row per workload; columns: throughput then p99, for each event loop.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = list(dict.fromkeys(k[0] for k in cells))
    workloads = list(dict.fromkeys(k[1] for k in cells))
    columns = [("throughput", lp) for lp in loops] + [("p99_ms", lp) for lp in loops]
    fig, axes = plt.subplots(
        len(workloads),
        len(columns),
        squeeze=False,
        figsize=(4.6 * len(columns), 3.6 * len(workloads) + 0.8),
    )
    for r, workload in enumerate(workloads):
        for col, (metric, loop) in enumerate(columns):
            ax = axes[r][col]
            for system in systems:
                points = sorted(
                    (k[3], getattr(cell, metric))
                    for k, cell in cells.items()
                    if k[0] == loop
                    and k[1] == workload
                    and k[2] == system
                    and cell.status == "ok"
                    and getattr(cell, metric)
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, label=system, **_STYLE.get(system, {}))
            ax.set_xscale("log")
            if metric == "p99_ms":
                ax.set_yscale("log")
                ax.set_ylabel("p99 latency, ms (log)")
            else:
                ax.set_ylim(bottom=0)
                ax.set_ylabel("throughput, ops/s")
            ax.set_xlabel("concurrent borrowers (pool of 10)")
            ax.set_title(
                f"{workload} — {'throughput' if metric == 'throughput' else 'p99'} — {loop}",
                fontsize=10,
            )
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), 2 * len(columns)))
    legend_rows = math.ceil(len(labels) / ncol) if labels else 0
    top = 1 - (0.3 + 0.3 * legend_rows) / fig.get_figheight()
    fig.legend(
        handles, labels, loc="upper center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 1.0)
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write the JSON document (indented, stable key order)."""
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
