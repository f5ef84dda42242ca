"""The command line: run the grid, the memory pass, the machinery benchmark, targets.

Usage: ``python -m benchmarks [options]`` (``--help`` lists them). Without ``--dsn``
(or ``ASYNCPOOL_BENCH_DSN``) a throwaway PostgreSQL server is started from the local
binaries with ``max_connections=300`` (the per-request baseline opens up to 100 at once).
``python -m benchmarks overload [options]`` runs the overload scenario (``overload.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .machinery import MACHINERY_SYSTEMS, run_machinery
from .provenance import _asyncpool_revision, _loadavg, _versions
from .runner import LOOPS, CellResult, CellSpec, memory_cell, run_cell, run_on_loop, settle
from .server import throwaway_server
from .systems import SYSTEMS, available_systems
from .targets import CellKey, evaluate_targets, target_cells
from .workloads import SETUP_SQL, WORKLOADS

__all__ = ("Plan", "main", "make_plan", "parse_args", "run")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CONCURRENCY = (1, 10, 100, 1000, 10000)
QUICK_CONCURRENCY = (1, 100)
QUICK_WORKLOADS = ("acquire", "select1")
#: Borrower counts of the memory pass (those of them the run measures; else all).
MEMORY_CONCURRENCY = (1, 100, 10000)
MEMORY_METHOD = (
    "Peak memory is tracemalloc's peak of Python allocations from pool creation to "
    "close, in a separate short pass with tracing on (SELECT 1, asyncio loop); it "
    "includes the borrower tasks, identical for every system. Each grid cell also "
    "records the growth of the process's peak RSS (`rss_peak_delta_kib` in the JSON, "
    "order-dependent)."
)


def _csv(kind: type, choices: Any = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if choices is not None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(map(str, bad))}; choose from {', '.join(choices)}"
                )
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark asyncpool against asyncpg's pool, psycopg_pool, SQLAlchemy "
        "and no-pool baselines.",
        epilog="The overload scenario (issue 17) is a separate command: "
        "python -m benchmarks overload --help",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode (< 60 s): acquire and select1 at 1 and 100 borrowers on "
        "the asyncio loop, short cells, short machinery; filters still apply",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measurement window per cell, seconds (default 0.5; quick 0.1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="minimum warm-up per cell, seconds (default 0.2; quick 0.05)",
    )
    p.add_argument(
        "--warmup-cap",
        type=float,
        default=None,
        help="maximum warm-up per cell, seconds (default 1.5; quick 1)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=1.0,
        help="seconds to let borrowers finish their operation after the window "
        "before cancelling them (default 1)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the grid this many times, interleaved; keep each cell's median",
    )
    p.add_argument(
        "--target-repeat",
        type=int,
        default=None,
        help="run the cells the targets compare at least this many times (default 9; quick 1)",
    )
    p.add_argument("--size", type=int, default=10, help="pool size N (default 10)")
    p.add_argument(
        "--systems",
        type=_csv(str, list(SYSTEMS)),
        default=None,
        help="comma-separated subset of: " + ", ".join(SYSTEMS),
    )
    p.add_argument(
        "--workloads",
        type=_csv(str, list(WORKLOADS)),
        default=None,
        help="comma-separated subset of: " + ", ".join(WORKLOADS),
    )
    p.add_argument(
        "--concurrency",
        type=_csv(int),
        default=None,
        help="comma-separated borrower counts (default 1,10,100,1000,10000)",
    )
    p.add_argument(
        "--loops",
        type=_csv(str, list(LOOPS)),
        default=None,
        help="comma-separated event loops: asyncio, uvloop (default both)",
    )
    p.add_argument(
        "--dsn",
        default=os.environ.get("ASYNCPOOL_BENCH_DSN"),
        help="use this server instead of starting one (needs max_connections "
        ">= 120 for the per-request baseline)",
    )
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--name",
        default=None,
        help="basename of the result files (default: 'latest' for a full run, "
        "'quick' with --quick, 'partial' with filters)",
    )
    p.add_argument("--no-machinery", action="store_true", help="skip the machinery benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile asyncpool's hot path (results/profile/)",
    )
    p.add_argument("--profile-only", action="store_true", help="only profile asyncpool's hot path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=1, help="random seed (transaction ids)")
    return p.parse_args(argv)


async def _prepare(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SETUP_SQL)
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return statistics.median(present) if present else None


def _median_cell(runs: list[CellResult]) -> CellResult:
    """One cell from several repetitions: the median-throughput run, with each latency
    figure replaced by its median over the repetitions.
    """
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda c: c.throughput)
    chosen = dataclasses.replace(ordered[(len(ordered) - 1) // 2])
    chosen.extra = {
        **chosen.extra,
        "repeats": [
            {
                "throughput": c.throughput,
                "p50_ms": c.p50_ms,
                "p99_ms": c.p99_ms,
                "max_ms": c.max_ms,
                "status": c.status,
            }
            for c in runs
        ],
    }
    ok = [c for c in runs if c.status == "ok"] or runs
    chosen.p50_ms = _median([c.p50_ms for c in ok])
    chosen.p99_ms = _median([c.p99_ms for c in ok])
    chosen.max_ms = _median([c.max_ms for c in ok])
    return chosen


class _Progress:
    """A tqdm bar, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="cell", dynamic_ncols=True, file=sys.stderr)

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run measures, resolved from the arguments."""

    systems: list[str]
    workloads: list[str]
    concurrency: list[int]
    loops: list[str]
    skipped: dict[str, str]
    duration: float
    warmup: float
    warmup_cap: float
    repeat: int
    target_repeat: int
    name: str

    def grid(self, seed: int) -> list[tuple[int, str, str, int, list[str]]]:
        """(repetition, loop, workload, concurrency, systems in run order) per cell.

        The same cell runs for every system back to back, in a fresh random order each
        time so no system always follows another. Repetitions past ``repeat`` run only
        the cells the targets compare.
        """
        rng = random.Random(seed)
        wanted = target_cells()
        out = []
        for rep in range(max(self.repeat, self.target_repeat)):
            for loop in self.loops:
                for workload in self.workloads:
                    for conc in self.concurrency:
                        order = self.systems[:]
                        rng.shuffle(order)
                        if rep >= self.repeat:
                            order = [s for s in order if (workload, s, conc) in wanted]
                        if order:
                            out.append((rep, loop, workload, conc, order))
        return out


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    usable = available_systems()
    skipped = {name: why for name, why in usable.items() if why}
    loops = args.loops or (["asyncio"] if quick else list(LOOPS))
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        loops = [lp for lp in loops if lp != "uvloop"]
        skipped["uvloop"] = "uvloop is not installed"
    filtered = any(
        v is not None for v in (args.systems, args.workloads, args.concurrency, args.loops)
    )
    return Plan(
        systems=[s for s in (args.systems or list(SYSTEMS)) if not usable[s]],
        workloads=args.workloads or list(QUICK_WORKLOADS if quick else WORKLOADS),
        concurrency=args.concurrency or list(QUICK_CONCURRENCY if quick else DEFAULT_CONCURRENCY),
        loops=loops,
        skipped=skipped,
        duration=args.duration if args.duration is not None else (0.1 if quick else 0.5),
        warmup=args.warmup if args.warmup is not None else (0.05 if quick else 0.2),
        warmup_cap=args.warmup_cap if args.warmup_cap is not None else (1.0 if quick else 1.5),
        repeat=args.repeat,
        target_repeat=(args.target_repeat if args.target_repeat is not None else 1 if quick else 9),
        name=args.name or ("quick" if quick else "partial" if filtered else "latest"),
    )


def _memory_concurrency(plan: Plan) -> list[int]:
    return [c for c in plan.concurrency if c in MEMORY_CONCURRENCY] or plan.concurrency


def _run_memory(
    plan: Plan, args: argparse.Namespace, dsn: str, progress: _Progress
) -> list[dict[str, Any]]:
    memory: list[dict[str, Any]] = []
    for conc in _memory_concurrency(plan):
        for system in plan.systems:
            spec = CellSpec(
                system,
                "select1",
                conc,
                "asyncio",
                size=args.size,
                duration=min(plan.duration, 0.2),
                warmup=0.0,
                warmup_cap=min(plan.warmup_cap, 1.0),
                drain_timeout=args.drain_timeout,
            )
            progress.step(f"memory select1@{conc} {system}")
            settle(dsn)
            cell, peak = memory_cell(spec, dsn)
            memory.append(
                {
                    "system": system,
                    "concurrency": conc,
                    "workload": "select1",
                    "loop": "asyncio",
                    "status": cell.status,
                    "peak_traced_kib": peak // 1024 if cell.status == "ok" else None,
                }
            )
    pinned = {m["concurrency"]: m["peak_traced_kib"] for m in memory if m["system"] == "pinned"}
    for m in memory:
        ref = pinned.get(m["concurrency"])
        m["delta_vs_pinned_kib"] = (
            None if ref is None or m["peak_traced_kib"] is None else m["peak_traced_kib"] - ref
        )
    return memory


def _meta(
    args: argparse.Namespace, plan: Plan, started: float, server_note: str, server_version: str
) -> dict[str, Any]:
    return {
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "elapsed_s": time.time() - started,
        "command": "python -m benchmarks " + shlex.join(getattr(args, "argv", [])),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": getattr(args, "loadavg_start", None),
        "loadavg_end": _loadavg(),
        "server": server_note,
        "server_version": server_version,
        "versions": _versions(),
        "asyncpool_revision": _asyncpool_revision(),
        "size": args.size,
        "duration": plan.duration,
        "warmup": plan.warmup,
        "warmup_cap": plan.warmup_cap,
        "drain_timeout": args.drain_timeout,
        "repeat": plan.repeat,
        "target_repeat": plan.target_repeat,
        "quick": args.quick,
        "systems": {s: SYSTEMS[s].description for s in plan.systems},
        "skipped": plan.skipped,
        "workloads": {w: WORKLOADS[w].description for w in plan.workloads},
        "concurrency": plan.concurrency,
        "loops": plan.loops,
        "memory_method": MEMORY_METHOD,
        "asyncpool_acquire_timeout": "default (30 s)",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run what ``args`` asks for; write the result files; return the JSON document."""
    from .report import build_json, write_json, write_markdown, write_plot

    started = time.time()
    random.seed(args.seed)
    plan = make_plan(args)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    with throwaway_server(args.dsn) as (dsn, server_note):
        server_version = run_on_loop("asyncio", _prepare(dsn))
        if args.profile_only:
            from .hotpath import profile_hotpath

            path = profile_hotpath(dsn, out_dir / "profile", seconds=0.3 if args.quick else 1.0)
            print(f"profiles written; summary: {path}")
            return {}
        grid = plan.grid(args.seed)
        n_machinery = (
            0
            if args.no_machinery
            else len(plan.loops)
            * sum(1 for _, base, _ in MACHINERY_SYSTEMS.values() if base in plan.systems)
        )
        total = (
            sum(len(order) for *_, order in grid)
            + n_machinery
            + (0 if args.no_memory else len(plan.systems) * len(_memory_concurrency(plan)))
        )
        progress = _Progress(total, not args.no_progress)
        runs: dict[CellKey, list[CellResult]] = {}
        memory: list[dict[str, Any]] = []
        machinery = []
        try:
            for rep, loop, workload, conc, order in grid:
                for system in order:
                    spec = CellSpec(
                        system,
                        workload,
                        conc,
                        loop,
                        size=args.size,
                        duration=plan.duration,
                        warmup=plan.warmup,
                        warmup_cap=plan.warmup_cap,
                        drain_timeout=args.drain_timeout,
                    )
                    progress.step(f"rep {rep + 1} {loop} {workload}@{conc} {system}")
                    settle(dsn)
                    runs.setdefault((loop, workload, system, conc), []).append(run_cell(spec, dsn))
            if not args.no_memory:
                memory = _run_memory(plan, args, dsn, progress)
            if not args.no_machinery:
                machinery = run_machinery(
                    dsn,
                    plan.loops,
                    batch_seconds=0.05 if args.quick else 0.2,
                    repeats=2 if args.quick else 5,
                    systems=plan.systems,
                    progress=lambda s: progress.step(f"machinery {s}"),
                )
        finally:
            progress.close()
        if args.profile:
            from .hotpath import profile_hotpath

            profile_hotpath(dsn, out_dir / "profile", seconds=0.3 if args.quick else 1.0)

    cells = {key: _median_cell(r) for key, r in runs.items()}
    targets = evaluate_targets(cells, plan.loops, machinery)
    doc = build_json(
        _meta(args, plan, started, server_note, server_version), cells, memory, machinery, targets
    )
    name = plan.name
    write_json(out_dir / f"{name}.json", doc)
    write_markdown(out_dir / f"{name}.md", doc, cells)
    if not args.no_plot:
        write_plot(out_dir / f"{name}.png", cells, plan.systems)
    print()
    print(f"Results: {out_dir / name}.{{json,md}}" + ("" if args.no_plot else " and .png"))
    for what, why in plan.skipped.items():
        print(f"skipped {what}: {why}")
    for t in targets:
        print(t.line())
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["overload"]:
        from .overload import main as overload_main

        return overload_main(argv[1:])
    args = parse_args(argv)
    args.argv = argv
    args.loadavg_start = _loadavg()
    run(args)
    return 0
