"""Pool settings: one frozen dataclass, validated once at construction."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = (
    "POOLERS",
    "RESET_MODES",
    "ConnectArgs",
    "PoolConfig",
    "Pooler",
    "ResetMode",
    "check_acquire_timeout",
    "check_seconds",
    "redact_dsn",
    "redact_kwargs",
    "server_label",
    "unique_name",
    "unknown_keywords",
)

ResetMode = Literal["auto", "full", "rollback", "none"]
RESET_MODES: tuple[str, ...] = ("auto", "full", "rollback", "none")

Pooler = Literal["pgbouncer-session", "pgbouncer-transaction", "pgbouncer-statement"]
POOLERS: tuple[str, ...] = ("pgbouncer-session", "pgbouncer-transaction", "pgbouncer-statement")

#: A callable that supplies connection arguments at each connect (sync or async),
#: e.g. to fetch a fresh IAM token. Its mapping is merged over the static arguments.
ConnectArgs = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def check_seconds(
    name: str, value: object, *, none_ok: bool = True, inf_ok: bool = True
) -> float | None:
    """Validate a duration setting or argument and return it as a float (or None).

    Raises :class:`TypeError` for a bool or a non-number, :class:`ValueError` for NaN,
    a negative value, or infinity where ``inf_ok`` is false (a duration that reaches the
    event loop's timer heap must be finite). Pure: no I/O, no clock.
    """
    if value is None:
        if none_ok:
            return None
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"{name} must be a number of seconds, got NaN")
    if seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    if not inf_ok and math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return seconds


def check_acquire_timeout(timeout: object) -> float:
    """Validate ``acquire(timeout=...)``: seconds >= 0; ``float("inf")`` means no deadline."""
    seconds = check_seconds("timeout", timeout, none_ok=False)
    assert seconds is not None
    return seconds


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (URL, query and key=value forms)."""
    # postgresql://user:secret@host/db -> postgresql://user:***@host/db
    dsn = re.sub(r"(?<=://)([^/@:?#]*):[^@/?#]*@", r"\1:***@", dsn)
    # ?password=secret (URL query) and password=secret (key=value DSN), quoted or not
    return re.sub(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", r"\1***", dsn)


def redact_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of connection arguments with passwords replaced by ``***``."""
    shown: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "password" and value is not None:
            shown[key] = "***"
        elif key == "dsn" and isinstance(value, str):
            shown[key] = redact_dsn(value)
        else:
            shown[key] = value
    return shown


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
    name: str = "asyncpool"  # Pool() gives each pool a unique name by default
    pooler: Pooler | None = None
    instances: int = 1
    budget_check: Literal["warn", "refuse", "off"] = "warn"
    init_size: int | None = None  # asyncpg's: connections open() opens (None: min_size)
    overload: Literal["adaptive", "fifo"] = "adaptive"
    autosize: bool = False

    __module__ = "asyncpool"

    @property
    def shares_server_sessions(self) -> bool:
        """True behind a transaction/statement pooler: server sessions are shared, so
        session state can be neither kept nor reset.
        """
        return self.pooler in ("pgbouncer-transaction", "pgbouncer-statement")

    @classmethod
    def from_kwargs(
        cls,
        dsn: str | None,
        settings: Mapping[str, Any],
        *,
        connect_keywords: frozenset[str] | None,
    ) -> PoolConfig:
        """The one place a pool's keyword arguments become settings: pool settings by
        their field names (and asyncpg's ``max_inactive_connection_lifetime`` for
        ``max_idle``), every other keyword a connection argument. ``connect_keywords``:
        what the connect function accepts (None: anything), so that a typo is refused
        here, with the closest name, instead of failing every connect later.
        """
        own = {f.name for f in dataclasses.fields(cls)} - {"dsn", "connect_kwargs"}
        values: dict[str, Any] = {}
        connect_kwargs: dict[str, Any] = {}
        for key, value in settings.items():
            if key == "max_inactive_connection_lifetime":
                if value is not None:  # asyncpg's name for max_idle; 0 turns it off there
                    values["max_idle"] = value or None
            elif key in own:
                values[key] = value
            else:
                connect_kwargs[key] = value
        if connect_keywords is not None:
            message = unknown_keywords(
                connect_kwargs,
                sorted(own | connect_keywords | {"max_inactive_connection_lifetime"}),
            )
            if message is not None:
                target = (
                    "asyncpg.connect()"
                    if values.get("connect") is None
                    else "the connect= function"
                )
                raise TypeError(
                    f"asyncpool.Pool() got an {message} (it is neither a pool setting nor a "
                    f"parameter of {target})"
                )
        if values.get("pooler") in ("pgbouncer-transaction", "pgbouncer-statement"):
            # Server sessions are shared: named prepared statements cannot be cached.
            connect_kwargs.setdefault("statement_cache_size", 0)
        if values.get("name") is None:
            values["name"] = unique_name(server_label(dsn, connect_kwargs))
        return cls(dsn=dsn, connect_kwargs=connect_kwargs, **values)

    def __repr__(self) -> str:
        # Passwords never show: not in the DSN, nor in the connection arguments.
        fields = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "dsn" and isinstance(value, str):
                value = redact_dsn(value)
            elif field.name == "connect_kwargs":
                value = redact_kwargs(value)
            fields.append(f"{field.name}={value!r}")
        return f"PoolConfig({', '.join(fields)})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        if self.dsn is not None and not isinstance(self.dsn, str):
            raise TypeError(
                f"dsn must be a connection string such as 'postgresql://user@host/db' or None, "
                f"got {type(self.dsn).__name__}"
            )
        for name in ("min_size", "max_size", "connect_concurrency"):
            _check_count(name, getattr(self, name))
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
            if value is not None:
                _check_count(name, value)
                if value < 0:
                    raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}")
        for name in ("max_uses", "max_queries"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be None (unlimited) or >= 1, got 0")
        # acquire_timeout may be infinite (no deadline), and close_timeout (close() waits
        # for every borrowed connection, as asyncpg's pool does); the other timeouts bound
        # I/O the pool itself waits for, and the delays and the maintenance interval pace
        # its timers: those must be finite. NaN is refused everywhere.
        check_seconds("acquire_timeout", self.acquire_timeout, none_ok=False)
        check_seconds("close_timeout", self.close_timeout, none_ok=False)
        for name in (
            "reset_timeout",
            "ping_timeout",
            "connect_timeout",
            "reconnect_initial_delay",
            "reconnect_max_delay",
            "maintenance_interval",
        ):
            check_seconds(name, getattr(self, name), none_ok=False, inf_ok=False)
        for name in (
            "max_lifetime",
            "max_idle",
            "ping_after_idle",
            "keepalive_interval",
            "leak_timeout",
        ):
            check_seconds(name, getattr(self, name))  # None (or inf): off
        if self.maintenance_interval <= 0:
            raise ValueError(f"maintenance_interval must be > 0, got {self.maintenance_interval!r}")
        if (
            isinstance(self.lifetime_jitter, bool)
            or not isinstance(self.lifetime_jitter, (int, float))
            or not 0 <= self.lifetime_jitter < 1
        ):
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
        if self.init_size is not None:
            _check_count("init_size", self.init_size)
            if not self.min_size <= self.init_size <= self.max_size:
                raise ValueError(
                    f"init_size must be between min_size ({self.min_size}) and max_size "
                    f"({self.max_size}), got {self.init_size!r}"
                )
        if not isinstance(self.autosize, bool):
            raise TypeError(f"autosize must be True or False, got {self.autosize!r}")
        if self.overload not in ("adaptive", "fifo"):
            raise ValueError(f"overload must be 'adaptive' or 'fifo', got {self.overload!r}")
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ValueError(
                f"pooler must be None or one of {', '.join(POOLERS)}, got {self.pooler!r}"
            )
        for name in ("init", "setup", "connect", "connect_args"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable, got {value!r}")


def server_label(dsn: str | None, kwargs: Mapping[str, Any]) -> str:
    """``host:port/database`` of a pool's server as far as its settings tell (no
    password, no I/O), the default pool name OpenTelemetry suggests; ``"asyncpool"``
    when the settings name no server (for example, a custom ``connect=``).
    """
    host = kwargs.get("host")
    port = kwargs.get("port")
    database = kwargs.get("database")
    if isinstance(dsn, str) and "://" in dsn:
        try:
            parts = urlsplit(dsn)
            host = host or parts.hostname
            port = port or parts.port
            database = database or (parts.path.lstrip("/") or None)
        except ValueError:  # e.g. a malformed port: asyncpg reports it at connect
            pass
    elif isinstance(dsn, str):
        pairs = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
        host = host or pairs.get("host")
        port = port or pairs.get("port")
        database = database or pairs.get("dbname")
    if isinstance(host, (list, tuple)):
        host = ",".join(str(h) for h in host)
    if not host and not database:
        return "asyncpool"
    label = str(host or "localhost")
    if port:
        label += f":{port}"
    return f"{label}/{database}" if database else label


def unknown_keywords(given: Mapping[str, Any], accepted: Iterable[str]) -> str | None:
    """The message for the first keyword in ``given`` that is not in ``accepted``
    (with the closest accepted name, if one is close), or None when all are known.
    """
    names = list(accepted)
    for key in given:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"unexpected keyword argument {key!r}{hint}"
    return None


_names_used: dict[str, int] = {}


def unique_name(label: str) -> str:
    """A pool name not given to another pool of this process: ``label``, then
    ``label#2``, ``label#3`` ... (metrics and tracing tell pools apart by name).
    """
    count = _names_used.get(label, 0) + 1
    _names_used[label] = count
    return label if count == 1 else f"{label}#{count}"
