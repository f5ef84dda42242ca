"""The session-level methods of the lent connection: listeners, query loggers, type
codecs, server facts, and closing (a part of :class:`PooledConnection`, kept apart
from the query methods; see ``_connection.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from asyncpg.types import ServerVersion

    from ._config import PoolConfig
    from ._slots import _Slot

__all__ = ("Lender", "SessionMethods")

_T = TypeVar("_T")
_Coro = Coroutine[Any, Any, _T]


class Lender(Protocol):
    """What a lent connection knows of the pool that lent it."""

    _config: PoolConfig
    _statement_pooler: bool

    @property
    def name(self) -> str: ...

    def _reclaim_later(self, slot: _Slot, lend: int) -> None: ...


class SessionMethods:
    """Listeners, loggers, codecs, server facts and closing, for :class:`PooledConnection`."""

    __slots__ = ()

    if TYPE_CHECKING:
        _pool: Lender
        _slot: _Slot | None

        def _live(self, what: str) -> Any: ...

        def _refuse_session_feature(self, feature: str | None) -> None: ...

    # -- listeners (each marks the session dirty: release removes them) ------------

    def add_listener(self, channel: str, callback: Callable[..., Any]) -> _Coro[None]:
        """LISTEN on ``channel``; removed (UNLISTEN) when the connection is released."""
        con = self._live("add_listener")
        if self._pool._config.shares_server_sessions:
            self._refuse_session_feature("LISTEN")
        self._slot.dirty = True  # type: ignore[union-attr]
        return con.add_listener(channel, callback)  # type: ignore[no-any-return]

    def remove_listener(self, channel: str, callback: Callable[..., Any]) -> _Coro[None]:
        """Remove a listener added with :meth:`add_listener`."""
        return self._live("remove_listener").remove_listener(channel, callback)  # type: ignore[no-any-return]

    def add_log_listener(self, callback: Callable[..., Any]) -> None:
        """Receive server log messages (removed on release)."""
        con = self._live("add_log_listener")
        self._slot.dirty = True  # type: ignore[union-attr]
        con.add_log_listener(callback)

    def remove_log_listener(self, callback: Callable[..., Any]) -> None:
        """Remove a log listener."""
        self._live("remove_log_listener").remove_log_listener(callback)

    def _remember(self, remover: str, callback: Callable[..., Any]) -> None:
        slot = self._slot
        assert slot is not None
        if slot.callbacks is None:
            slot.callbacks = []
        slot.callbacks.append((remover, callback))

    def add_termination_listener(self, callback: Callable[..., Any]) -> None:
        """Be told when the underlying connection closes (removed on release)."""
        self._live("add_termination_listener").add_termination_listener(callback)
        self._remember("remove_termination_listener", callback)

    def remove_termination_listener(self, callback: Callable[..., Any]) -> None:
        """Remove a termination listener."""
        self._live("remove_termination_listener").remove_termination_listener(callback)

    def add_query_logger(self, callback: Callable[..., Any]) -> None:
        """Log every query run on this connection (removed on release)."""
        self._live("add_query_logger").add_query_logger(callback)
        self._remember("remove_query_logger", callback)

    def remove_query_logger(self, callback: Callable[..., Any]) -> None:
        """Remove a query logger."""
        self._live("remove_query_logger").remove_query_logger(callback)

    def query_logger(self, callback: Callable[..., Any]) -> Any:
        """A context manager that logs the queries run inside it with ``callback``."""
        return self._live("query_logger").query_logger(callback)

    # -- introspection and codecs ----------------------------------------------

    def get_server_pid(self) -> int:
        """The PID of the server process behind this connection."""
        return int(self._live("get_server_pid").get_server_pid())

    def get_server_version(self) -> ServerVersion:
        """The server version as asyncpg's ``ServerVersion`` tuple."""
        return self._live("get_server_version").get_server_version()  # type: ignore[no-any-return]

    def get_settings(self) -> Any:
        """Asyncpg's connection settings object."""
        return self._live("get_settings").get_settings()

    def is_closed(self) -> bool:
        """True when the underlying connection is closed."""
        return bool(self._live("is_closed").is_closed())

    def set_type_codec(self, typename: str, **kwargs: Any) -> _Coro[None]:
        """Set a custom codec (it stays on the connection: prefer the pool's ``init``)."""
        return self._live("set_type_codec").set_type_codec(typename, **kwargs)  # type: ignore[no-any-return]

    def reset_type_codec(self, typename: str, **kwargs: Any) -> _Coro[None]:
        """Reset a codec to asyncpg's default."""
        return self._live("reset_type_codec").reset_type_codec(typename, **kwargs)  # type: ignore[no-any-return]

    def set_builtin_type_codec(self, typename: str, **kwargs: Any) -> _Coro[None]:
        """Set a builtin codec (it stays on the connection: prefer the pool's ``init``)."""
        return self._live("set_builtin_type_codec").set_builtin_type_codec(  # type: ignore[no-any-return]
            typename, **kwargs
        )

    def reload_schema_state(self) -> _Coro[None]:
        """Drop cached type and statement information after schema changes."""
        return self._live("reload_schema_state").reload_schema_state()  # type: ignore[no-any-return]

    # -- closing -----------------------------------------------------------------

    def close(self, *, timeout: float | None = None) -> _Coro[None]:
        """Close the underlying connection; the pool replaces it when it is released."""
        return self._live("close").close(timeout=timeout)  # type: ignore[no-any-return]

    def terminate(self) -> None:
        """Abort the underlying connection; the pool replaces it when it is released."""
        self._live("terminate").terminate()

    def reset(self, *, timeout: float | None = None) -> _Coro[None]:
        """Run asyncpg's own session reset now (the pool resets on release anyway)."""
        return self._live("reset").reset(timeout=timeout)  # type: ignore[no-any-return]

    def get_reset_query(self) -> str:
        """The statement asyncpg's ``reset()`` runs on this server."""
        return self._live("get_reset_query").get_reset_query()  # type: ignore[no-any-return]
