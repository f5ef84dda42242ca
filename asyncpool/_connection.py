"""The connection a borrower holds: a thin, checked view of an asyncpg connection.

Methods are explicit pass-throughs (no per-call ``__getattr__``, no extra
coroutine frame): each checks that the lease is still live, notes whether the
statement may leave session state behind (see ``_tracking``), and returns
asyncpg's own awaitable. After release every method raises
:class:`ConnectionReleasedError`.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import asyncpg

from ._errors import ConnectionReleasedError, PoolUsageError
from ._pg import ConnectionProxy
from ._session_api import SessionMethods
from ._tracking import _cache as _verdicts
from ._tracking import (
    may_leave_session_state,
    opens_transaction_block,
    plain,
    remember_plain,
    session_feature,
)

if TYPE_CHECKING:
    from asyncpg import Record
    from asyncpg.cursor import CursorFactory
    from asyncpg.prepared_stmt import PreparedStatement
    from asyncpg.transaction import Transaction

    from ._session_api import Lender
    from ._slots import _Slot

    # asyncpg-stubs make the proxy base generic in the record type; at run time it
    # is asyncpg's plain class (this alias costs nothing on attribute access).
    _ProxyBase = ConnectionProxy[Record]
else:
    _ProxyBase = ConnectionProxy

__all__ = ("PooledConnection",)

logger = logging.getLogger("asyncpool.connection")

_T = TypeVar("_T")
_Coro = Coroutine[Any, Any, _T]
_R = TypeVar("_R", bound="Record")
#: Transaction isolation levels (asyncpg's names).
IsolationLevel = Literal["read_committed", "read_uncommitted", "serializable", "repeatable_read"]


class PooledConnection(SessionMethods, _ProxyBase):
    """A connection lent by an asyncpool :class:`Pool`; behaves like ``asyncpg.Connection``
    (``isinstance(conn, asyncpg.Connection)`` is true, as for asyncpg's own pool).

    Use it only between acquire and release. Statements that may change session
    state are noticed so that release can reset exactly when needed.
    """

    __slots__ = ("__weakref__", "_con", "_lease", "_pool", "_slot")

    __module__ = "asyncpool"

    # Made by the pool with object.__new__ and plain stores (half the cost of a class
    # call that runs an __init__ on CPython 3.11), never by calling the class.
    _pool: Lender
    _slot: _Slot | None  # None once released
    _con: Any  # the asyncpg connection; None once released
    _lease: int  # the slot's lend number this wrapper belongs to

    # -- lease bookkeeping -------------------------------------------------

    def _released(self, what: str) -> ConnectionReleasedError:
        return ConnectionReleasedError(
            f"cannot call {what}(): this connection was released back to the asyncpool pool "
            f"{self._pool.name!r} and may now belong to another borrower; acquire a new one "
            "(keep its use inside `async with pool.acquire() as conn:`)"
        )

    def _live(self, what: str) -> Any:
        con = self._con
        if con is None:
            raise self._released(what)
        return con

    def _note(self, query: str) -> Any:
        con = self._con
        if con is None:
            raise self._released("a query method")
        verdict = _verdicts.get(query)
        if verdict is None:
            verdict = may_leave_session_state(query)
        if verdict:
            if self._pool._config.shares_server_sessions:
                self._refuse_session_feature(session_feature(query))
            self._slot.dirty = True  # type: ignore[union-attr]
        elif opens_transaction_block(query):
            if self._pool._statement_pooler:
                self._refuse_transactions()
        else:
            remember_plain(query)  # next time the query methods skip this call
        return con

    def _refuse_transactions(self) -> None:
        raise PoolUsageError(
            f"asyncpool pool {self._pool.name!r} runs behind a statement pooler "
            "(pooler='pgbouncer-statement'), which does not allow transaction blocks; "
            "use pooler='pgbouncer-transaction' or connect directly for transactions"
        )

    def _refuse_session_feature(self, feature: str | None) -> None:
        if feature is not None:
            raise PoolUsageError(
                f"{feature} needs a server session of its own, but asyncpool pool "
                f"{self._pool.name!r} runs behind a transaction pooler "
                f"(pooler={self._pool._config.pooler!r}), where each transaction may run on "
                "another server connection; use SET LOCAL / transaction-scoped locks, or "
                "connect directly to PostgreSQL for this work"
            )

    def mark_dirty(self) -> None:
        """Tell the pool this borrower changed session state it could not see.

        The connection then gets a full reset on release (``reset="auto"``).
        """
        self._live("mark_dirty")
        self._slot.dirty = True  # type: ignore[union-attr]

    @property
    def raw_connection(self) -> asyncpg.Connection:
        """The underlying ``asyncpg.Connection`` (escape hatch; the pool no longer
        tracks what you do with it, so call :meth:`mark_dirty` if you change state).
        """
        return self._live("raw_connection")  # type: ignore[no-any-return]

    @property
    def is_released(self) -> bool:
        """True once this connection has been released back to the pool."""
        return self._con is None

    def __repr__(self) -> str:
        if self._con is None:
            return f"<PooledConnection released from {self._pool.name!r}>"
        return f"<PooledConnection {self._con!r} from {self._pool.name!r}>"

    # -- queries (asyncpg signatures) ----------------------------------------

    # Only the keywords a caller gives are passed on: calls stay cheap (no keyword
    # dict per query) and a custom connection_class may have narrower signatures.

    def execute(self, query: str, *args: object, timeout: float | None = None) -> _Coro[str]:
        """Run a command (or several, without arguments); return the status string."""
        con = self._con
        if con is None or query not in plain:  # _note(), but one set lookup when plain
            con = self._note(query)
        if timeout is None:
            return con.execute(query, *args) if args else con.execute(query)  # type: ignore[no-any-return]
        return con.execute(query, *args, timeout=timeout)  # type: ignore[no-any-return]

    def executemany(
        self, command: str, args: Iterable[Sequence[object]], *, timeout: float | None = None
    ) -> _Coro[None]:
        """Run a command once per argument sequence."""
        con = self._note(command)
        if timeout is None:
            return con.executemany(command, args)  # type: ignore[no-any-return]
        return con.executemany(command, args, timeout=timeout)  # type: ignore[no-any-return]

    @overload
    def fetch(
        self, query: str, *args: object, timeout: float | None = None, record_class: None = None
    ) -> _Coro[list[Record]]: ...
    @overload
    def fetch(
        self, query: str, *args: object, timeout: float | None = None, record_class: type[_R]
    ) -> _Coro[list[_R]]: ...
    def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> _Coro[list[Any]]:
        """Run a query and return all rows as a list of records."""
        con = self._con
        if con is None or query not in plain:  # _note(), but one set lookup when plain
            con = self._note(query)
        if timeout is None and record_class is None:
            return con.fetch(query, *args) if args else con.fetch(query)  # type: ignore[no-any-return]
        return con.fetch(  # type: ignore[no-any-return]
            query, *args, **_given(timeout=timeout, record_class=record_class)
        )

    @overload
    def fetchrow(
        self, query: str, *args: object, timeout: float | None = None, record_class: None = None
    ) -> _Coro[Record | None]: ...
    @overload
    def fetchrow(
        self, query: str, *args: object, timeout: float | None = None, record_class: type[_R]
    ) -> _Coro[_R | None]: ...
    def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> _Coro[Any]:
        """Run a query and return the first row, or None."""
        con = self._con
        if con is None or query not in plain:  # _note(), but one set lookup when plain
            con = self._note(query)
        if timeout is None and record_class is None:
            return con.fetchrow(query, *args) if args else con.fetchrow(query)  # type: ignore[no-any-return]
        return con.fetchrow(  # type: ignore[no-any-return]
            query, *args, **_given(timeout=timeout, record_class=record_class)
        )

    def fetchval(
        self, query: str, *args: object, column: int = 0, timeout: float | None = None
    ) -> _Coro[Any]:
        """Run a query and return one value of the first row, or None."""
        con = self._con
        if con is None or query not in plain:  # _note(), but one set lookup when plain
            con = self._note(query)
        if not column and timeout is None:
            return con.fetchval(query, *args) if args else con.fetchval(query)  # type: ignore[no-any-return]
        return con.fetchval(  # type: ignore[no-any-return]
            query, *args, **_given(column=column or None, timeout=timeout)
        )

    @overload
    def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[object]],
        *,
        timeout: float | None = None,
        record_class: None = None,
    ) -> _Coro[list[Record]]: ...
    @overload
    def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[object]],
        *,
        timeout: float | None = None,
        record_class: type[_R],
    ) -> _Coro[list[_R]]: ...
    def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[object]],
        *,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> _Coro[list[Any]]:
        """Run a query once per argument sequence and return all rows."""
        return self._note(query).fetchmany(  # type: ignore[no-any-return]
            query, args, **_given(timeout=timeout, record_class=record_class)
        )

    @overload
    def prepare(
        self,
        query: str,
        *,
        name: str | None = None,
        timeout: float | None = None,
        record_class: None = None,
    ) -> _Coro[PreparedStatement[Record]]: ...
    @overload
    def prepare(
        self,
        query: str,
        *,
        name: str | None = None,
        timeout: float | None = None,
        record_class: type[_R],
    ) -> _Coro[PreparedStatement[_R]]: ...
    def prepare(
        self,
        query: str,
        *,
        name: str | None = None,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> _Coro[PreparedStatement[Any]]:
        """Create a prepared statement (valid only while you hold this connection)."""
        con = self._note(query)
        # asyncpg's prepare sends no Sync: the server session stays in an implicit
        # transaction (holding locks) until the next statement; the reset ends it.
        self._slot.dirty = True  # type: ignore[union-attr]
        if (
            name is not None
            and self._pool._config.shares_server_sessions
            and (self._pool._config.connect_kwargs.get("statement_cache_size") == 0)
        ):
            self._refuse_session_feature("a named prepared statement")
        return con.prepare(  # type: ignore[no-any-return]
            query, **_given(name=name, timeout=timeout, record_class=record_class)
        )

    @overload
    def cursor(
        self,
        query: str,
        *args: object,
        prefetch: int | None = None,
        timeout: float | None = None,
        record_class: None = None,
    ) -> CursorFactory[Record]: ...
    @overload
    def cursor(
        self,
        query: str,
        *args: object,
        prefetch: int | None = None,
        timeout: float | None = None,
        record_class: type[_R],
    ) -> CursorFactory[_R]: ...
    def cursor(
        self,
        query: str,
        *args: object,
        prefetch: int | None = None,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> CursorFactory[Any]:
        """Return a cursor factory (use inside a transaction)."""
        if self._pool._statement_pooler:
            self._refuse_transactions()
        return self._note(query).cursor(  # type: ignore[no-any-return]
            query, *args, **_given(prefetch=prefetch, timeout=timeout, record_class=record_class)
        )

    def transaction(
        self,
        *,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> Transaction:
        """Return an asyncpg transaction object (``async with conn.transaction():``)."""
        con = self._live("transaction")
        if self._pool._statement_pooler:
            self._refuse_transactions()
        return con.transaction(  # type: ignore[no-any-return]
            **_given(isolation=isolation, readonly=readonly or None, deferrable=deferrable or None)
        )

    def is_in_transaction(self) -> bool:
        """True while a transaction is open on this connection."""
        return bool(self._live("is_in_transaction").is_in_transaction())

    # -- COPY ------------------------------------------------------------------

    def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> _Coro[str]:
        """Copy a table's contents to ``output`` (file, path or async callable)."""
        return self._live("copy_from_table").copy_from_table(  # type: ignore[no-any-return]
            table_name,
            output=output,
            columns=columns,
            schema_name=schema_name,
            timeout=timeout,
            **options,
        )

    def copy_from_query(
        self, query: str, *args: object, output: Any, timeout: float | None = None, **options: Any
    ) -> _Coro[str]:
        """Copy a query's result to ``output``."""
        return self._note(query).copy_from_query(  # type: ignore[no-any-return]
            query, *args, output=output, timeout=timeout, **options
        )

    def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> _Coro[str]:
        """Copy data from ``source`` into a table."""
        return self._live("copy_to_table").copy_to_table(  # type: ignore[no-any-return]
            table_name,
            source=source,
            columns=columns,
            schema_name=schema_name,
            timeout=timeout,
            **options,
        )

    def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> _Coro[str]:
        """Copy an iterable (or async iterable) of records into a table."""
        return self._live("copy_records_to_table").copy_records_to_table(  # type: ignore[no-any-return]
            table_name,
            records=records,
            columns=columns,
            schema_name=schema_name,
            timeout=timeout,
            where=where,
        )

    # No __getattr__ here: a class with one loses CPython's fast attribute access (every
    # `conn.fetchval` and `conn._con` would take the slow generic lookup). Names that a
    # connection_class adds are forwarded by a subclass made for it (wrapper_classes).


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments a caller gave: those not None (defaults are left out)."""
    return {name: value for name, value in kwargs.items() if value is not None}
