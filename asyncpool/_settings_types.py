"""The keyword arguments of :func:`asyncpool.create_pool`, as a ``TypedDict`` for type
checkers: a misspelt setting or a wrong ``reset``/``pooler``/``budget_check`` value is a
type error, not a connect argument that asyncpg rejects at run time.

Typing only: nothing here runs on a hot path. The keys are :class:`asyncpool.Pool`'s
keyword parameters plus the ``asyncpg.connect`` arguments the pool passes on (a test
keeps them in step with ``Pool.__init__``).
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._config import ConnectArgs, Pooler, ResetMode

if TYPE_CHECKING:
    import asyncio

    import asyncpg

__all__ = ("BudgetCheck", "PoolSettings")

#: What a pool does when the fleet's connections could exceed the server's limit.
BudgetCheck = Literal["warn", "refuse", "off"]

_Hook = Callable[[Any], Awaitable[None]]


class PoolSettings(TypedDict, total=False):
    """Settings of :func:`asyncpool.create_pool` (see its docstring for their meaning)."""

    # -- the pool's own settings
    min_size: int
    max_size: int
    acquire_timeout: float
    max_waiting: int | None
    reset: ResetMode | _Hook
    reset_timeout: float
    max_lifetime: float | None
    lifetime_jitter: float
    max_idle: float | None
    max_uses: int | None
    max_queries: int | None
    ping_after_idle: float | None
    ping_timeout: float
    keepalive_interval: float | None
    connect_timeout: float
    connect_concurrency: int
    reconnect_initial_delay: float
    reconnect_max_delay: float
    leak_timeout: float | None
    close_timeout: float
    maintenance_interval: float
    tcp_keepalive: bool
    init: _Hook | None
    setup: _Hook | None
    connect: Callable[..., Awaitable[Any]] | None
    connect_args: ConnectArgs | None
    name: str
    pooler: Pooler | None
    instances: int
    budget_check: BudgetCheck
    overload: Literal["adaptive", "fifo"]
    autosize: bool
    # -- asyncpg.create_pool's names, accepted for migration
    max_inactive_connection_lifetime: float | None
    loop: asyncio.AbstractEventLoop | None
    init_size: int | None
    # -- passed on to asyncpg.connect
    host: str | Sequence[str]
    port: int | str | Sequence[int | str]
    user: str
    password: str | Callable[[], str | Awaitable[str]]
    passfile: str
    service: str
    servicefile: str
    database: str
    statement_cache_size: int
    max_cached_statement_lifetime: int
    max_cacheable_statement_size: int
    command_timeout: float | None
    ssl: (
        _ssl.SSLContext
        | bool
        | Literal["disable", "prefer", "allow", "require", "verify-ca", "verify-full"]
    )
    direct_tls: bool
    server_settings: Mapping[str, str]
    target_session_attrs: Literal[
        "any", "primary", "standby", "prefer-standby", "read-write", "read-only"
    ]
    krbsrvname: str
    gsslib: Literal["gssapi", "sspi"]
    connection_class: type[asyncpg.Connection]
    record_class: type[asyncpg.Record]
