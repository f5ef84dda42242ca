"""The one error tree of asyncpool.

Every error the pool raises derives from :class:`PoolError`. Messages say what
happened and which setting to change. The errors of misuse (:class:`PoolUsageError`,
:class:`PoolClosed`, :class:`ConnectionReleasedError`) are also
``asyncpg.InterfaceError``, which asyncpg's own pool raises in those cases, so code
migrating from it catches them unchanged.
"""

from __future__ import annotations

from asyncpg import InterfaceError

__all__ = (
    "ConnectionBudgetExceeded",
    "ConnectionConfigError",
    "ConnectionReleasedError",
    "DatabaseUnavailable",
    "PoolClosed",
    "PoolError",
    "PoolOverloaded",
    "PoolTimeout",
    "PoolUsageError",
    "TooManyWaiters",
)


class PoolError(Exception):
    """Base class of every error raised by asyncpool."""

    __module__ = "asyncpool"


class PoolTimeout(PoolError, TimeoutError):
    """No connection could be lent before the acquire deadline."""

    __module__ = "asyncpool"


class PoolOverloaded(PoolTimeout):
    """Refused at once (or dropped from the queue) because, with the pool past its
    capacity, the borrower could not have been served before its deadline.
    """

    __module__ = "asyncpool"


class PoolClosed(PoolError, InterfaceError):
    """The pool is closed (or closing) and lends no more connections."""

    __module__ = "asyncpool"


class TooManyWaiters(PoolError):
    """The waiting queue is full (``max_waiting`` reached); the borrower was refused."""

    __module__ = "asyncpool"


class ConnectionReleasedError(PoolError, InterfaceError):
    """A pooled connection was used after it was released back to the pool."""

    __module__ = "asyncpool"


class DatabaseUnavailable(PoolError):
    """The database is known to be down; ``last_error`` is the latest connect failure."""

    __module__ = "asyncpool"

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class ConnectionConfigError(PoolError):
    """The server refused the pool's connection settings (password, role, database, TLS
    or arguments); ``last_error`` is its answer. Retrying cannot help until they change.
    """

    __module__ = "asyncpool"

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class PoolUsageError(PoolError, InterfaceError, RuntimeError):
    """The pool was misused: another event loop or thread, after ``fork()``, before
    ``open()``, or a session feature behind a transaction pooler.
    """

    __module__ = "asyncpool"


class ConnectionBudgetExceeded(PoolError):
    """``max_size * instances`` exceeds what the server allows (``budget_check="refuse"``)."""

    __module__ = "asyncpool"
