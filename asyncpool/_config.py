"""Pool settings: one frozen dataclass, validated once at construction."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

__all__ = ("POOLERS", "RESET_MODES", "ConnectArgs", "PoolConfig", "Pooler", "ResetMode")

ResetMode = Literal["auto", "full", "rollback", "none"]
RESET_MODES: tuple[str, ...] = ("auto", "full", "rollback", "none")

Pooler = Literal["pgbouncer-session", "pgbouncer-transaction", "pgbouncer-statement"]
POOLERS: tuple[str, ...] = ("pgbouncer-session", "pgbouncer-transaction", "pgbouncer-statement")

#: A callable that supplies connection arguments at each connect (sync or async),
#: e.g. to fetch a fresh IAM token. Its mapping is merged over the static arguments.
ConnectArgs = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def _non_negative(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ValueError(f"{name} must be a number of seconds, not None")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Validated pool settings (see :func:`asyncpool.create_pool` for their meaning)."""

    dsn: str | None = None
    min_size: int = 1
    max_size: int = 10
    acquire_timeout: float = 30.0
    max_waiting: int | None = None
    reset: ResetMode | Callable[[Any], Awaitable[None]] = "auto"
    reset_timeout: float = 5.0
    max_lifetime: float | None = 3600.0
    lifetime_jitter: float = 0.1
    max_idle: float | None = 600.0
    max_uses: int | None = None
    max_queries: int | None = None
    ping_after_idle: float | None = 10.0
    ping_timeout: float = 5.0
    keepalive_interval: float | None = 60.0
    connect_timeout: float = 10.0
    connect_concurrency: int = 2
    reconnect_initial_delay: float = 0.05
    reconnect_max_delay: float = 1.0
    leak_timeout: float | None = None
    close_timeout: float = 10.0
    maintenance_interval: float = 1.0
    tcp_keepalive: bool = True
    init: Callable[[Any], Awaitable[None]] | None = None
    setup: Callable[[Any], Awaitable[None]] | None = None
    connect: Callable[..., Awaitable[Any]] | None = None
    connect_args: ConnectArgs | None = None
    connect_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "asyncpool"
    pooler: Pooler | None = None
    instances: int = 1
    budget_check: Literal["warn", "refuse", "off"] = "warn"

    __module__ = "asyncpool"

    @property
    def shares_server_sessions(self) -> bool:
        """True behind a transaction/statement pooler: server sessions are shared, so
        session state can be neither kept nor reset.
        """
        return self.pooler in ("pgbouncer-transaction", "pgbouncer-statement")

    def __post_init__(self) -> None:
        for name in ("min_size", "max_size", "connect_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {self.max_size}")
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )
        if self.connect_concurrency < 1:
            raise ValueError(f"connect_concurrency must be >= 1, got {self.connect_concurrency}")
        for name in ("max_waiting", "max_uses", "max_queries"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}")
        for name in ("max_uses", "max_queries"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be None (unlimited) or >= 1, got 0")
        for name in (
            "acquire_timeout",
            "reset_timeout",
            "ping_timeout",
            "connect_timeout",
            "close_timeout",
            "reconnect_initial_delay",
            "reconnect_max_delay",
        ):
            _non_negative(name, getattr(self, name), allow_none=False)
        for name in (
            "max_lifetime",
            "max_idle",
            "ping_after_idle",
            "keepalive_interval",
            "leak_timeout",
        ):
            _non_negative(name, getattr(self, name))
        if self.maintenance_interval <= 0:
            raise ValueError(f"maintenance_interval must be > 0, got {self.maintenance_interval!r}")
        if not 0 <= self.lifetime_jitter < 1:
            raise ValueError(f"lifetime_jitter must be in [0, 1), got {self.lifetime_jitter!r}")
        if not callable(self.reset) and self.reset not in RESET_MODES:
            raise ValueError(
                f"reset must be one of {', '.join(RESET_MODES)} or an async callable, "
                f"got {self.reset!r}"
            )
        if (
            isinstance(self.instances, bool)
            or not isinstance(self.instances, int)
            or (self.instances < 1)
        ):
            raise ValueError(f"instances must be an integer >= 1, got {self.instances!r}")
        if self.budget_check not in ("warn", "refuse", "off"):
            raise ValueError(
                f"budget_check must be one of warn, refuse, off, got {self.budget_check!r}"
            )
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ValueError(
                f"pooler must be None or one of {', '.join(POOLERS)}, got {self.pooler!r}"
            )
        for name in ("init", "setup", "connect", "connect_args"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable, got {value!r}")
