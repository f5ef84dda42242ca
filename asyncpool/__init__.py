"""asyncpool: an event-loop-native PostgreSQL connection pool for asyncpg.

Quick start::

    import asyncpool

    async with asyncpool.create_pool("postgresql://app@db/app", max_size=10) as pool:
        async with pool.acquire() as conn:
            print(await conn.fetchval("SELECT 1"))
"""

from ._autosize import AutosizeStats
from ._budget import BudgetReport
from ._config import PoolConfig
from ._connection import PooledConnection
from ._errors import (
    ConnectionBudgetExceeded,
    ConnectionConfigError,
    ConnectionReleasedError,
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolOverloaded,
    PoolTimeout,
    PoolUsageError,
    TooManyWaiters,
)
from ._events import EventHook, EventKind, PoolEvent
from ._pool import Pool, create_pool
from ._slots import SlotState
from ._stats import HISTOGRAM_BOUNDS, PoolStats, TimeSummary

__all__ = (
    "HISTOGRAM_BOUNDS",
    "AutosizeStats",
    "BudgetReport",
    "ConnectionBudgetExceeded",
    "ConnectionConfigError",
    "ConnectionReleasedError",
    "DatabaseUnavailable",
    "EventHook",
    "EventKind",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolOverloaded",
    "PoolEvent",
    "PoolStats",
    "PoolTimeout",
    "PoolUsageError",
    "PooledConnection",
    "SlotState",
    "TimeSummary",
    "TooManyWaiters",
    "create_pool",
)

__version__ = "0.1.0"
