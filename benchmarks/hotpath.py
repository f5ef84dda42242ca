"""Profiles of asyncpool's hot path, saved under ``benchmarks/results/profile/``.

Cases: the fake-connection machinery loop (pure pool code), the ``acquire`` and
``select1`` workloads at 1 and 100 borrowers and ``select1`` at 1000, on the asyncio
loop; and ``select1`` through the ``pinned`` FIFO as the reference. Each case is run
twice: under cProfile (deterministic: call counts and own time per function, with
its usual per-call overhead inflating small functions) and under pyinstrument
(sampling: a call tree of wall time). ``summary.md`` lists, per case, the share of
time by package and the asyncpool functions with the most own time.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .machinery import fake_connect
from .runner import CellSpec, run_cell, run_on_loop, settle

__all__ = ("CASES", "profile_hotpath")

#: (case name, system, workload or None for the machinery loop, concurrency). The
#: ``pinned`` cases are the reference: the same work through a minimal FIFO.
CASES: tuple[tuple[str, str, str | None, int], ...] = (
    ("machinery-fake", "asyncpool", None, 1),
    ("acquire-1", "asyncpool", "acquire", 1),
    ("acquire-100", "asyncpool", "acquire", 100),
    ("select1-1", "asyncpool", "select1", 1),
    ("select1-100", "asyncpool", "select1", 100),
    ("select1-1000", "asyncpool", "select1", 1000),
    ("pinned-select1-1", "pinned", "select1", 1),
    ("pinned-select1-100", "pinned", "select1", 100),
    ("pinned-select1-1000", "pinned", "select1", 1000),
)

_PACKAGES = ("asyncpool", "asyncpg", "asyncio", "benchmarks", "uvloop")


def _package(filename: str) -> str:
    if "/asyncpool/testing/" in filename:
        return "other"
    for name in _PACKAGES:
        if f"/{name}/" in filename:
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    return "other"


async def _machinery_loop(seconds: float) -> int:
    import asyncpool

    async with asyncpool.create_pool(connect=fake_connect, min_size=1, max_size=1) as pool:
        acquire = pool.acquire
        n = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(1000):
                async with acquire():
                    pass
            n += 1000
        return n


def _runner(
    system: str, workload: str | None, concurrency: int, dsn: str, seconds: float
) -> Callable[[], int]:
    """A callable that runs the case and returns (about) how many operations it ran."""
    if workload is None:
        return lambda: run_on_loop("asyncio", _machinery_loop(seconds))
    # No warm-up, so (nearly) every operation falls in the window and is counted.
    spec = CellSpec(
        system, workload, concurrency, "asyncio", duration=seconds, warmup=0.0, warmup_cap=0.0
    )
    return lambda: run_cell(spec, dsn).ops


def _summarise(stats: pstats.Stats, case: str, ops: int, top: int = 12) -> list[str]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    wall = sum(v[2] for v in raw.values()) or 1e-9
    # Time blocked in epoll is the loop waiting for the server: leave it out of the shares.
    idle = sum(v[2] for (_, _, func), v in raw.items() if "select.epoll" in func)
    total = max(wall - idle, 1e-9)
    by_package: dict[str, float] = {}
    ours = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        if "select.epoll" in func:
            continue
        pkg = _package(filename)
        by_package[pkg] = by_package.get(pkg, 0.0) + tt
        if pkg == "asyncpool":
            short = filename.split("/asyncpool/", 1)[1]
            ours.append((tt, ct, nc, f"{short}:{line} {func}"))
    ours.sort(reverse=True)
    calls = sum(v[1] for v in raw.values())
    out = [
        f"### {case}",
        "",
        f"About {ops:,} operations; per operation: {calls / max(ops, 1):.0f} function "
        f"calls, {total / max(ops, 1) * 1e6:.1f} µs busy in this process (profiler "
        f"overhead included), {idle / max(ops, 1) * 1e6:.1f} µs blocked in epoll.",
        "",
        "Share of busy time (own time) by package: "
        + ", ".join(
            f"{pkg} {tt / total:.1%}"
            for pkg, tt in sorted(by_package.items(), key=lambda kv: -kv[1])
        ),
        "",
        "| asyncpool function | own time, % of busy | cumulative % | calls | own µs/call |",
        "|---|---|---|---|---|",
    ]
    if not ours:
        return [*out[:-2], ""]
    for tt, ct, nc, name in ours[:top]:
        out.append(
            f"| `{name}` | {tt / total:.1%} | {ct / total:.1%} | {nc:,} | "
            f"{tt / max(nc, 1) * 1e6:.2f} |"
        )
    return [*out, ""]


def profile_hotpath(
    dsn: str, out_dir: Path, *, seconds: float = 1.0, progress: Callable[[str], None] | None = None
) -> Path:
    """Profile every case; write the reports and ``summary.md``; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = [
        "# asyncpool hot-path profiles",
        "",
        "cProfile own time (`tottime`) per function, as a share of the process's busy time "
        "in the case (all profiled time except the event loop blocked in epoll; the loop, "
        "asyncpg and the benchmark harness included). cProfile "
        "adds a fixed cost to every call, so small, frequently called functions look "
        "bigger than they are; the pyinstrument files give sampled wall time.",
        "",
    ]
    for case, system, workload, concurrency in CASES:
        run = _runner(system, workload, concurrency, dsn, seconds)
        settle(dsn)
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            ops = run()
        finally:
            profiler.disable()
        stats = pstats.Stats(profiler)
        with (out_dir / f"cprofile-{case}.txt").open("w") as f:
            stats.stream = f  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)
        summary += _summarise(stats, case, ops)
        try:
            from pyinstrument import Profiler
        except ImportError:
            summary += ["(pyinstrument not installed: no sampled profile)", ""]
        else:
            settle(dsn)
            sampler = Profiler(interval=0.0002, async_mode="disabled")
            sampler.start()
            try:
                run()
            finally:
                sampler.stop()
            (out_dir / f"pyinstrument-{case}.txt").write_text(
                sampler.output_text(unicode=False, color=False, show_all=False)
            )
        if progress is not None:
            progress(case)
    path = out_dir / "summary.md"
    path.write_text("\n".join(summary))
    return path
