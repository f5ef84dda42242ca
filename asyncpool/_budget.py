"""The connection budget guard: does ``max_size * instances`` fit the server.

PostgreSQL refuses connections beyond ``max_connections``, of which
``superuser_reserved_connections`` (and, on PostgreSQL 16+, ``reserved_connections``)
are kept for privileged roles. A fleet of ``instances`` application processes, each
with a pool of ``max_size``, can ask for ``max_size * instances`` connections. When
that exceeds what the server can give, the pools work until load rises, and then
fail with ``too many clients already`` at the worst moment. This module checks it
once, when a pool opens, on the pool's first connection (one round trip):

* ``capacity = max_connections - reserved``: what ordinary roles can hold in total.
* ``ok``: ``requested <= capacity``. A fleet that can never fit is a configuration
  error: ``policy="refuse"`` raises, ``"warn"`` logs a warning.
* ``fits_now``: this pool can still grow to ``max_size`` given what every client
  (other instances, other applications, this check's own connection) holds now.
  When it cannot, a warning is logged under both policies, but never an error:
  during a rolling deploy the old instances still hold their connections.

Behind PgBouncer the numbers mean something else (the pool's connections go to
PgBouncer, which opens at most ``default_pool_size`` per database and user on the
server), so with ``pooler=`` set the check only reports the server's facts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from ._errors import ConnectionBudgetExceeded
from ._quiet import own, quiet

__all__ = (
    "BUDGET_POLICIES",
    "BudgetPolicy",
    "BudgetReport",
    "ServerFacts",
    "check_budget",
    "evaluate_budget",
    "read_server_facts",
)

logger = logging.getLogger("asyncpool.budget")

BudgetPolicy = Literal["warn", "refuse", "off"]
BUDGET_POLICIES: tuple[str, ...] = ("warn", "refuse", "off")

# One round trip. ``reserved_connections`` exists from PostgreSQL 16 (NULL before).
# pg_stat_activity lists every backend to every role, but hides ``backend_type`` of
# other roles' sessions from roles without pg_read_all_stats; such a row counts as a
# client when it has a database and a user (background processes lack one or both;
# other roles' parallel or logical-replication workers would be counted too).
_FACTS_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true)::int, 0),
       (SELECT count(*)::int FROM pg_catalog.pg_stat_activity
         WHERE backend_type = 'client backend'
            OR (backend_type IS NULL AND datid IS NOT NULL AND usesysid IS NOT NULL)),
       current_setting('server_version_num')::int
"""


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What the server says about its connection limits and current use."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    client_connections: int
    server_version_num: int

    @property
    def reserved(self) -> int:
        """Connection slots kept for superusers and ``pg_use_reserved_connections``."""
        return self.superuser_reserved_connections + self.reserved_connections

    @property
    def capacity(self) -> int:
        """Connections ordinary roles can hold in total: ``max_connections - reserved``."""
        return max(self.max_connections - self.reserved, 0)


async def read_server_facts(conn: Any) -> ServerFacts:
    """Read the connection limits and current client count (one query).

    ``conn`` is an ``asyncpg.Connection`` or a pooled connection.
    """
    with quiet():  # the pool's own query: no tracing span
        row = await own(conn, "fetchrow")(_FACTS_SQL)
    return ServerFacts(
        max_connections=int(row[0]),
        superuser_reserved_connections=int(row[1]),
        reserved_connections=int(row[2]),
        client_connections=int(row[3]),
        server_version_num=int(row[4]),
    )


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """The outcome of :func:`check_budget`.

    ``requested = max_size * instances``; ``available`` is what ordinary roles could
    still open right now (``max_connections - reserved - in_use_now``, where
    ``in_use_now`` counts every client backend, including the checking connection).
    ``ok`` is False when the fleet can never fit (``requested > capacity``).
    """

    max_connections: int
    reserved: int
    in_use_now: int
    available: int
    requested: int
    ok: bool
    message: str
    capacity: int = 0
    fits_now: bool = True
    max_size: int = 0
    instances: int = 1

    __module__ = "asyncpool"


def evaluate_budget(
    facts: ServerFacts,
    *,
    max_size: int,
    instances: int,
    pool_name: str = "asyncpool",
    pooler: str | None = None,
) -> BudgetReport:
    """Judge ``max_size * instances`` against ``facts`` (pure; no I/O, no logging).

    Assumes the checking connection is one of the pool's own (counted in
    ``facts.client_connections``), so the pool needs ``max_size - 1`` more slots.
    """
    requested = max_size * instances
    capacity = facts.capacity
    available = max(capacity - facts.client_connections, 0)

    def report(ok: bool, fits_now: bool, message: str) -> BudgetReport:
        return BudgetReport(
            max_connections=facts.max_connections,
            reserved=facts.reserved,
            in_use_now=facts.client_connections,
            available=available,
            requested=requested,
            ok=ok,
            message=message,
            capacity=capacity,
            fits_now=fits_now,
            max_size=max_size,
            instances=instances,
        )

    facts_text = (
        f"the server allows max_connections={facts.max_connections}, "
        f"{facts.reserved} reserved for superusers, and {facts.client_connections} are "
        f"in use now"
    )
    if pooler is not None:
        return report(
            True,
            True,
            (
                f"asyncpool pool {pool_name!r}: behind {pooler} the server's connections are "
                f"bounded by the pooler's pool size, not by max_size * instances ({requested}); "
                f"{facts_text}. Keep PgBouncer's default_pool_size * (databases * users) "
                f"below {capacity}"
            ),
        )
    ok = requested <= capacity
    fits_now = max_size - 1 <= available
    if not ok:
        per_instance = capacity // instances if instances else capacity
        message = (
            f"asyncpool pool {pool_name!r}: max_size={max_size} * instances={instances} = "
            f"{requested} connections, but {facts_text}, so at most {capacity} can ever be "
            f"open. Lower max_size to at most {per_instance} per instance "
            f"(`python -m asyncpool size` recommends one), put PgBouncer in front "
            f"(pooler=...), or raise max_connections"
        )
    elif not fits_now:
        message = (
            f"asyncpool pool {pool_name!r}: max_size={max_size} fits the server's "
            f"capacity of {capacity} (* instances={instances} = {requested}), but {facts_text}, "
            f"leaving {available}: this pool may meet 'too many clients' errors before it "
            f"reaches max_size. Check for other clients or instances holding connections"
        )
    else:
        message = (
            f"asyncpool pool {pool_name!r}: max_size={max_size} * instances={instances} = "
            f"{requested} fits: {facts_text}, capacity {capacity}, {available} free"
        )
    return report(ok, fits_now, message)


async def check_budget(
    conn: Any,
    *,
    max_size: int,
    instances: int,
    policy: BudgetPolicy,
    pool_name: str,
    pooler: str | None = None,
) -> BudgetReport:
    """Check that ``max_size * instances`` connections fit the server (one query).

    Args:
        conn: an open connection of the pool (``asyncpg.Connection`` or pooled).
        max_size: the pool's ``max_size``.
        instances: how many processes run such a pool against this server (count
            the peak, e.g. during a rolling deploy with surge).
        policy: ``"warn"`` logs a warning on the ``asyncpool`` logger when the fleet
            cannot fit; ``"refuse"`` raises instead; ``"off"`` neither logs nor
            raises (callers skip the check entirely to save the round trip).
        pool_name: the pool's name, for the messages.
        pooler: the pool's ``pooler=`` setting; behind a pooler the check only reports.

    Returns:
        a :class:`BudgetReport` (also when it logs).

    Raises:
        ConnectionBudgetExceeded: with ``policy="refuse"`` when ``max_size * instances`` exceeds
            ``max_connections - reserved``.
        ValueError: for an unknown policy or sizes below 1.
    """
    if policy not in BUDGET_POLICIES:
        raise ValueError(
            f"budget_check must be one of {', '.join(BUDGET_POLICIES)}, got {policy!r}"
        )
    for name, value in (("max_size", max_size), ("instances", instances)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    facts = await read_server_facts(conn)
    result = evaluate_budget(
        facts, max_size=max_size, instances=instances, pool_name=pool_name, pooler=pooler
    )
    if policy == "off":
        return result
    if not result.ok:
        if policy == "refuse":
            raise ConnectionBudgetExceeded(result.message + " (budget_check='refuse')")
        logger.warning("%s", result.message)
    elif not result.fits_now:
        logger.warning("%s", result.message)
    else:
        logger.debug("%s", result.message)
    return result
