"""How big should a pool be? The published rules as functions, and a CLI.

Two limits decide a pool's ``max_size``:

1. **What the server can use.** A PostgreSQL server runs one process per
   connection; beyond a few active connections per core they only queue for CPU
   and disk and add latency. The rule of thumb from the PostgreSQL wiki
   ("Number Of Database Connections") and HikariCP's "About Pool Sizing" is
   ``connections = (core_count * 2) + effective_spindle_count`` for the whole
   server, where the spindle count is 0 when the working set is cached in RAM
   and about the number of disks otherwise (SSDs count as a few at most). The
   server's core count cannot be read through SQL, so pass it (``--cores``).
2. **What the server allows.** ``max_connections`` minus the reserved slots
   (``superuser_reserved_connections``, and ``reserved_connections`` on
   PostgreSQL 16+), minus some headroom for admin sessions, migrations,
   monitoring and cron jobs, divided among all instances of the application:
   ``per_instance = floor((max_connections - reserved - headroom) / instances)``.

The recommendation is the smaller of ``rule 1 / instances`` and ``rule 2``.
When that is far below what the application's concurrency wants, the answer
is PgBouncer in transaction mode in front of the server (``pooler=``), not a
bigger pool.

Run it against a server::

    python -m asyncpool size --dsn postgresql://app@db/app --instances 4 --cores 8
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._budget import BudgetReport, ServerFacts, read_server_facts
from ._budget import check_budget as _check_budget
from ._sizer import default_headroom

__all__ = (
    "BudgetReport",
    "Recommendation",
    "ServerFacts",
    "check_budget",
    "default_headroom",
    "main",
    "per_instance_limit",
    "read_server_facts",
    "recommend",
    "server_pool_size",
)


async def check_budget(
    conn: Any,
    *,
    max_size: int,
    instances: int = 1,
    pooler: str | None = None,
    pool_name: str = "asyncpool",
) -> BudgetReport:
    """Judge whether ``max_size * instances`` connections fit the server (one query).

    The check a pool runs by itself at :meth:`~asyncpool.Pool.open` (its
    ``budget_check=`` setting), for a deploy script or a health report: it neither logs
    nor raises, it returns the verdict.

    Args:
        conn: an open connection (``asyncpg.Connection`` or a pooled one).
        max_size: the ``max_size`` of each instance's pool.
        instances: how many processes run such a pool against this server, at peak.
        pooler: the pool's ``pooler=`` setting; behind a pooler the report only informs.
        pool_name: the name used in the report's message.

    Returns:
        a :class:`~asyncpool.BudgetReport`: ``ok`` is False when the fleet can never
        fit (``max_size * instances > max_connections - reserved``), ``fits_now`` is
        False when what other clients hold right now leaves too little, and
        ``message`` says so in words.
    """
    return await _check_budget(
        conn,
        max_size=max_size,
        instances=instances,
        policy="off",
        pool_name=pool_name,
        pooler=pooler,
    )


def server_pool_size(cores: int, effective_spindles: int = 0) -> int:
    """Connections a server works best with: ``cores * 2 + effective_spindles``.

    The PostgreSQL wiki / HikariCP rule, for all clients of the server together.
    ``effective_spindles`` is 0 when the active data set is cached in RAM.
    """
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if effective_spindles < 0:
        raise ValueError(f"effective_spindles must be >= 0, got {effective_spindles}")
    return cores * 2 + effective_spindles


def per_instance_limit(
    max_connections: int, reserved: int, instances: int, headroom: int = 0
) -> int:
    """The most connections each instance may hold so that all fit the server:
    ``floor((max_connections - reserved - headroom) / instances)`` (never below 0).
    """
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    if headroom < 0:
        raise ValueError(f"headroom must be >= 0, got {headroom}")
    return max((max_connections - reserved - headroom) // instances, 0)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """A recommended ``max_size`` per instance, with the numbers behind it."""

    max_size: int
    instances: int
    budget_limit: int
    headroom: int
    cpu_limit: int | None
    cores: int | None
    effective_spindles: int
    facts: ServerFacts
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the server facts nested under ``"server"``)."""
        data = dataclasses.asdict(self)
        data["server"] = data.pop("facts")
        data["server"]["capacity"] = self.facts.capacity
        data["server"]["reserved"] = self.facts.reserved
        data["notes"] = list(self.notes)
        return data

    def render(self) -> str:
        """A human-readable report."""
        f = self.facts
        lines = [
            "Server",
            f"  max_connections                 {f.max_connections}",
            f"  superuser_reserved_connections  {f.superuser_reserved_connections}",
        ]
        if f.server_version_num >= 160000:
            lines.append(f"  reserved_connections            {f.reserved_connections}")
        lines += [
            f"  client connections now          {f.client_connections}",
            f"  capacity for ordinary roles     {f.capacity}",
            "",
            "Limits",
            f"  connection budget: ({f.max_connections} - {f.reserved} reserved - "
            f"{self.headroom} headroom) // {self.instances} instance(s) = {self.budget_limit}",
        ]
        if self.cpu_limit is not None:
            total = server_pool_size(self.cores or 1, self.effective_spindles)
            lines.append(
                f"  server throughput: ({self.cores} cores * 2 + {self.effective_spindles} "
                f"spindles) = {total} for the server, // {self.instances} = {self.cpu_limit}"
            )
        else:
            lines.append(
                "  server throughput: unknown (pass --cores; the server's core "
                "count cannot be read through SQL)"
            )
        lines += ["", f"Recommended max_size per instance: {self.max_size}"]
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def recommend(
    facts: ServerFacts,
    *,
    instances: int = 1,
    cores: int | None = None,
    effective_spindles: int = 0,
    headroom: int | None = None,
) -> Recommendation:
    """Recommend a ``max_size`` per instance from the server's facts (pure, no I/O)."""
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    if headroom is None:
        headroom = default_headroom(facts.capacity)
    budget = per_instance_limit(facts.max_connections, facts.reserved, instances, headroom)
    cpu: int | None = None
    notes: list[str] = []
    if cores is not None:
        cpu = max(server_pool_size(cores, effective_spindles) // instances, 1)
    else:
        notes.append(
            "the server's core count is unknown (SQL cannot read it): pass --cores "
            "for the throughput limit; the budget limit alone is an upper bound"
        )
    size = budget if cpu is None else min(budget, cpu)
    if budget < 1:
        notes.append(
            f"the server has no room for {instances} instance(s): raise max_connections "
            f"(now {facts.max_connections}) or put PgBouncer in front (pooler=...)"
        )
    elif cpu is not None and cpu < budget:
        notes.append(
            "the server's cores, not max_connections, limit useful concurrency; if the "
            "application needs more concurrent borrowers, let them wait on the pool "
            "(acquire_timeout) or use PgBouncer in transaction mode"
        )
    elif cpu is not None and budget < cpu:
        notes.append(
            "max_connections limits this fleet below what the server's cores could "
            "serve; consider raising max_connections or using PgBouncer"
        )
    if instances > 1:
        notes.append(
            "count instances at their peak (e.g. a rolling deploy with surge runs old "
            "and new instances at once)"
        )
    notes.append(
        f"asyncpool checks this budget when a pool opens: pass instances={instances} "
        "(budget_check='warn' by default, 'refuse' to fail instead)"
    )
    return Recommendation(
        max_size=max(size, 0),
        instances=instances,
        budget_limit=budget,
        headroom=headroom,
        cpu_limit=cpu,
        cores=cores,
        effective_spindles=effective_spindles,
        facts=facts,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asyncpool size",
        description="Recommend a pool max_size per instance from the server's connection "
        "limits and the rule connections = cores * 2 + effective spindles.",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL"),
        help="server DSN (default: $DATABASE_URL, else the PG* variables)",
    )
    parser.add_argument(
        "--instances",
        type=_positive,
        default=1,
        help="application processes with a pool each, at peak (default 1)",
    )
    parser.add_argument(
        "--cores",
        type=_positive,
        default=None,
        help="the database server's CPU cores (not readable through SQL)",
    )
    parser.add_argument(
        "--spindles",
        type=_non_negative,
        default=0,
        help="effective spindles: 0 if the working set fits in RAM (default 0)",
    )
    parser.add_argument(
        "--headroom",
        type=_non_negative,
        default=None,
        help="slots to keep free for admin/migrations/monitoring "
        "(default 10%% of capacity, at least 3)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the connection (default 10)",
    )
    return parser


async def _read(dsn: str | None, timeout: float) -> ServerFacts:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=timeout, statement_cache_size=0)
    try:
        return await read_server_facts(conn)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m asyncpool size``: connect, read the server's limits, print a
    recommendation. Returns 0, or 1 when the server cannot be reached.
    """
    args = _parser().parse_args(argv)
    try:
        facts = asyncio.run(_read(args.dsn, args.connect_timeout))
    except Exception as exc:  # report any connect/query failure as a CLI error
        print(f"asyncpool size: cannot read the server's settings: {exc!r}", file=sys.stderr)
        return 1
    rec = recommend(
        facts,
        instances=args.instances,
        cores=args.cores,
        effective_spindles=args.spindles,
        headroom=args.headroom,
    )
    if args.json:
        print(json.dumps(rec.as_dict(), indent=2))
    else:
        print(rec.render())
    return 0
