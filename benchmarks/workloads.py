"""What one borrower does per operation, and the SQL every system sends for it.

Every system sends the same statements to the server for a workload (one round trip
for ``select1``; BEGIN, four statements and COMMIT for ``transaction``), except
SQLAlchemy, whose connections always run inside a transaction: there ``select1`` is
BEGIN + SELECT 1 + ROLLBACK, which is what its users get.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .systems import System

__all__ = (
    "ACCOUNTS",
    "SETUP_SQL",
    "WORKLOADS",
    "Workload",
    "transaction_args",
)

#: Rows in the small table the ``transaction`` workload updates.
ACCOUNTS = 1000

SETUP_SQL = (
    "DROP TABLE IF EXISTS bench_accounts; "
    "CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint NOT NULL); "
    f"INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, {ACCOUNTS}) g; "
    "ANALYZE bench_accounts;"
)


def transaction_args() -> tuple[int, int]:
    """Two distinct account ids, in ascending order (so transactions never deadlock)."""
    a, b = random.sample(range(1, ACCOUNTS + 1), 2)
    return (a, b) if a < b else (b, a)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A named operation a borrower repeats."""

    name: str
    description: str
    #: The :class:`~benchmarks.systems.System` method that runs one operation.
    method: str
    #: Makes the method's arguments for each operation (None: no arguments).
    args: Callable[[], tuple[Any, ...]] | None = None

    def bind(self, system: System) -> Callable[[], Awaitable[None]]:
        """The operation as a no-argument coroutine function on ``system``."""
        method: Callable[..., Awaitable[None]] = getattr(system, self.method)
        make_args = self.args
        if make_args is None:
            return method

        def op() -> Awaitable[None]:
            return method(*make_args())

        return op


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("acquire", "acquire + release only (no query)", "acquire_release"),
        Workload("select1", "SELECT 1", "select_one"),
        Workload("sleep", "SELECT pg_sleep(0.002) (2 ms server-side wait)", "server_sleep"),
        Workload(
            "transaction",
            "BEGIN; SELECT; UPDATE; UPDATE; SELECT on a 1000-row table; COMMIT",
            "transaction",
            transaction_args,
        ),
    )
}
