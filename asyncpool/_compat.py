"""asyncpg ``Pool`` compatibility methods (a thin layer kept apart from the core).

``asyncpg.create_pool(...)`` -> ``asyncpool.create_pool(...)`` should be the whole
migration. :class:`Pool` inherits these methods, which give asyncpg's ``Pool`` API
(same names, signatures and results) on top of asyncpool's own: sizes, connection
expiry, new connection arguments, and the pool-level query shortcuts. Each
shortcut borrows a connection for one call, like asyncpg's; its ``timeout`` is the
statement timeout, and the borrow uses the pool's ``acquire_timeout``.

Where asyncpool deliberately behaves differently from asyncpg, see
the README section "Migrating from asyncpg".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._slots import SlotState

if TYPE_CHECKING:
    from collections import deque

    from asyncpg import Record

    from ._config import PoolConfig
    from ._core import _AcquireContext
    from ._slots import SlotTable, _Slot

__all__ = ("AsyncpgPoolMethods",)

# Arguments that asyncpg's Pool keeps apart from the connect arguments, so that
# ``set_connect_args`` does not drop them; asyncpool keeps them with the others.
_KEPT_BY_SET_CONNECT_ARGS = ("connection_class", "record_class")


class AsyncpgPoolMethods:
    """Methods of ``asyncpg.Pool`` that asyncpool provides for one-line migration."""

    __slots__ = ()

    if TYPE_CHECKING:
        # What these methods use of Pool (declared for the type checker only).
        _config: PoolConfig
        _init_size: int
        _table: SlotTable
        _idle: deque[_Slot]
        _slots: set[_Slot]

        @property
        def closed(self) -> bool: ...

        def acquire(self, *, timeout: float | None = None) -> _AcquireContext: ...

        def expire(self) -> None: ...

        def set_connect_kwargs(self, dsn: str | None = None, **connect_kwargs: Any) -> None: ...

    # ------------------------------------------------------------ sizes and state

    def get_size(self) -> int:
        """Return the number of open connections (idle, borrowed, being reset or pinged).

        Connections still being opened or already being closed are not counted,
        like asyncpg's count of connected holders.
        """
        n = self._table.counts
        return len(self._slots) - n[SlotState.CONNECTING] - n[SlotState.CLOSING]

    def get_idle_size(self) -> int:
        """Return the number of open connections ready to be lent right now."""
        return len(self._idle)

    def get_min_size(self) -> int:
        """Return ``min_size``: the connections the pool keeps open."""
        return self._config.min_size

    def get_max_size(self) -> int:
        """Return ``max_size``: the cap on connections."""
        return self._config.max_size

    def get_init_size(self) -> int:
        """Return how many connections :meth:`open` opens: ``init_size`` (by default
        ``min_size``), as asyncpg 0.32 does.
        """
        return self._init_size

    def is_closing(self) -> bool:
        """Return True if the pool is closing or closed."""
        return self.closed

    # ------------------------------------------------------------ connections

    async def expire_connections(self) -> None:
        """Replace every current connection: idle ones close now, borrowed ones when
        released (asyncpg's name for :meth:`Pool.expire`).
        """
        self.expire()

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use new connection arguments for connections opened from now on.

        Like asyncpg, the new arguments replace the old ones, except
        ``connection_class`` and ``record_class``, which are kept unless given again.
        Existing connections stay until they expire; call
        :meth:`expire_connections` to replace them sooner.
        """
        current = self._config.connect_kwargs
        for name in _KEPT_BY_SET_CONNECT_ARGS:
            if name in current:
                connect_kwargs.setdefault(name, current[name])
        if self._config.shares_server_sessions:
            # As Pool.__init__ does: no named prepared statements behind a transaction pooler.
            connect_kwargs.setdefault("statement_cache_size", 0)
        self.set_connect_kwargs(dsn, **connect_kwargs)

    # ------------------------------------------------------------ query shortcuts

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """Run an SQL command (or several, without arguments) on a pooled connection;
        return the status of the last one. See ``asyncpg.Connection.execute``.
        """
        async with self.acquire() as con:
            status: str = await con.execute(query, *args, timeout=timeout)
            return status

    async def executemany(
        self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run an SQL command once per argument sequence, on one pooled connection.

        See ``asyncpg.Connection.executemany``.
        """
        async with self.acquire() as con:
            await con.executemany(command, args, timeout=timeout)

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> list[Record]:
        """Run a query on a pooled connection and return all rows as records.

        See ``asyncpg.Connection.fetch``.
        """
        async with self.acquire() as con:
            rows: list[Record] = await con.fetch(
                query, *args, timeout=timeout, record_class=record_class
            )
            return rows

    async def fetchval(
        self, query: str, *args: object, column: int = 0, timeout: float | None = None
    ) -> Any:
        """Run a query on a pooled connection and return a value of the first row (or
        None). See ``asyncpg.Connection.fetchval``.
        """
        async with self.acquire() as con:
            return await con.fetchval(query, *args, column=column, timeout=timeout)

    async def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> Record | None:
        """Run a query on a pooled connection and return the first row (or None).

        See ``asyncpg.Connection.fetchrow``.
        """
        async with self.acquire() as con:
            row: Record | None = await con.fetchrow(
                query, *args, timeout=timeout, record_class=record_class
            )
            return row

    async def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        record_class: type[Record] | None = None,
    ) -> list[Record]:
        """Run a query once per argument sequence, on one pooled connection, and return
        all rows. See ``asyncpg.Connection.fetchmany``.
        """
        async with self.acquire() as con:
            rows: list[Record] = await con.fetchmany(
                query, args, timeout=timeout, record_class=record_class
            )
            return rows

    # ------------------------------------------------------------ COPY shortcuts

    async def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        format: str | None = None,
        oids: bool | None = None,
        delimiter: str | None = None,
        null: str | None = None,
        header: bool | None = None,
        quote: str | None = None,
        escape: str | None = None,
        force_quote: bool | Sequence[str] | None = None,
        encoding: str | None = None,
    ) -> str:
        """Copy a table's contents to ``output`` (a path, file-like object or async
        callable) over a pooled connection; return the COPY status.

        See ``asyncpg.Connection.copy_from_table``.
        """
        async with self.acquire() as con:
            status: str = await con.copy_from_table(
                table_name,
                output=output,
                columns=columns,
                schema_name=schema_name,
                timeout=timeout,
                format=format,
                oids=oids,
                delimiter=delimiter,
                null=null,
                header=header,
                quote=quote,
                escape=escape,
                force_quote=force_quote,
                encoding=encoding,
            )
            return status

    async def copy_from_query(
        self,
        query: str,
        *args: Any,
        output: Any,
        timeout: float | None = None,
        format: str | None = None,
        oids: bool | None = None,
        delimiter: str | None = None,
        null: str | None = None,
        header: bool | None = None,
        quote: str | None = None,
        escape: str | None = None,
        force_quote: bool | Sequence[str] | None = None,
        encoding: str | None = None,
    ) -> str:
        """Copy a query's result to ``output`` over a pooled connection; return the COPY
        status. See ``asyncpg.Connection.copy_from_query``.
        """
        async with self.acquire() as con:
            status: str = await con.copy_from_query(
                query,
                *args,
                output=output,
                timeout=timeout,
                format=format,
                oids=oids,
                delimiter=delimiter,
                null=null,
                header=header,
                quote=quote,
                escape=escape,
                force_quote=force_quote,
                encoding=encoding,
            )
            return status

    async def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        format: str | None = None,
        oids: bool | None = None,
        freeze: bool | None = None,
        delimiter: str | None = None,
        null: str | None = None,
        header: bool | None = None,
        quote: str | None = None,
        escape: str | None = None,
        force_quote: bool | Sequence[str] | None = None,
        force_not_null: bool | Sequence[str] | None = None,
        force_null: bool | Sequence[str] | None = None,
        encoding: str | None = None,
        where: str | None = None,
    ) -> str:
        """Copy data from ``source`` (a path, file-like object or async iterable of
        bytes) into a table over a pooled connection; return the COPY status.

        See ``asyncpg.Connection.copy_to_table``.
        """
        async with self.acquire() as con:
            status: str = await con.copy_to_table(
                table_name,
                source=source,
                columns=columns,
                schema_name=schema_name,
                timeout=timeout,
                format=format,
                oids=oids,
                freeze=freeze,
                delimiter=delimiter,
                null=null,
                header=header,
                quote=quote,
                escape=escape,
                force_quote=force_quote,
                force_not_null=force_not_null,
                force_null=force_null,
                encoding=encoding,
                where=where,
            )
            return status

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> str:
        """Copy an iterable (or async iterable) of records into a table with binary COPY
        over a pooled connection; return the COPY status.

        See ``asyncpg.Connection.copy_records_to_table``.
        """
        async with self.acquire() as con:
            status: str = await con.copy_records_to_table(
                table_name,
                records=records,
                columns=columns,
                schema_name=schema_name,
                timeout=timeout,
                where=where,
            )
            return status
