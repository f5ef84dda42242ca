"""FastAPI integration: lifespan, a connection or a transaction per request, health.

Typical use::

    from fastapi import FastAPI
    from asyncpool.contrib.fastapi import ConnectionDep, health_router, pool_lifespan

    app = FastAPI(lifespan=pool_lifespan("postgresql://app@db/app", max_size=20))
    app.include_router(health_router())  # GET /livez and /readyz

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, conn: ConnectionDep) -> dict[str, object]:
        row = await conn.fetchrow("SELECT id, name FROM items WHERE id = $1", item_id)
        return dict(row)

:data:`ConnectionDep` lends one connection per request (the same one to every
dependency of that request) and gives it back when the handler ends: when it returns,
when it raises, and when it is cancelled (a client disconnect with
:class:`CancelOnDisconnect`, a server shutdown). :data:`TransactionDep` also runs the
handler in a transaction: committed when the handler returns (before the response is
sent, so a failed commit is a 500, never a lost write reported as success), rolled back
when it raises, ``HTTPException`` included. When no connection can be had
(:class:`~asyncpool.PoolTimeout`, :class:`~asyncpool.TooManyWaiters`,
:class:`~asyncpool.DatabaseUnavailable`, :class:`~asyncpool.PoolClosed`) the request
fails with 503 and ``Retry-After: 1`` instead of a 500; those refusals are logged on the
``asyncpool.contrib.fastapi`` logger at most once per ``log_interval`` (10 s) with a count
of the ones not logged, so an overload does not flood the logs.

:data:`PoolDep` gives a handler the application's pool itself (for work that borrows
several connections, or none).

Needs FastAPI 0.121 or later (the ``fastapi`` extra): there, these dependencies end
before the response is sent (``Depends(..., scope="function")``). FastAPI 0.118 to 0.120
ended them only after the response, so a failed COMMIT would have been answered with
success: importing this module refuses those versions.

The lifespan, health endpoints and middleware are those of
:mod:`asyncpool.contrib.starlette`, re-exported here.
"""

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import fastapi
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from asyncpool import (
    DatabaseUnavailable,
    Pool,
    PoolClosed,
    PooledConnection,
    PoolTimeout,
    TooManyWaiters,
)
from asyncpool._connection import IsolationLevel
from asyncpool.contrib.starlette import (
    CancelOnDisconnect,
    HealthReport,
    PoolState,
    check_readiness,
    get_pool,
    liveness_endpoint,
    open_pool,
    pool_lifespan,
    readiness_endpoint,
    stats_to_dict,
)

__all__ = (
    "CancelOnDisconnect",
    "ConnectionDep",
    "HealthReport",
    "PoolDep",
    "PoolState",
    "TransactionDep",
    "check_readiness",
    "connection_dependency",
    "get_connection",
    "get_pool",
    "get_transaction",
    "health_router",
    "open_pool",
    "pool_dependency",
    "pool_lifespan",
    "stats_to_dict",
    "transaction_dependency",
)

logger = logging.getLogger("asyncpool.contrib.fastapi")

_UNAVAILABLE = (PoolTimeout, TooManyWaiters, DatabaseUnavailable, PoolClosed)

# FastAPI >= 0.121 can end a yield dependency before the response is sent.
_HAS_SCOPE = "scope" in inspect.signature(Depends).parameters


def _fastapi_version() -> tuple[int, ...]:
    parts = []
    for part in fastapi.__version__.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if not _HAS_SCOPE and _fastapi_version() >= (0, 118):
    raise ImportError(
        f"asyncpool.contrib.fastapi does not support FastAPI {fastapi.__version__}: from "
        "0.118 to 0.120 FastAPI ends dependencies with yield only after the response is "
        "sent, so a transaction whose COMMIT fails would be answered with success. "
        "Install FastAPI 0.121 or later: pip install 'asyncpool-pg[fastapi]'"
    )


class _RefusalLog:
    """Logs the 503 answers of borrow failures at most once per ``interval`` seconds,
    each line with the number of refusals since the last one (no timer, no task).
    """

    __slots__ = ("interval", "_next_at", "_unlogged")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next_at = 0.0
        self._unlogged = 0

    def refused(self, path: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._unlogged += 1
            return
        unlogged, self._unlogged = self._unlogged, 0
        self._next_at = now + self.interval
        logger.warning(
            "answering 503 to %s: %s: %s%s",
            path,
            type(exc).__name__,
            exc,
            (
                f" ({unlogged} more 503s in the last {self.interval:g} s were not logged)"
                if unlogged
                else ""
            ),
        )


_refusals = _RefusalLog()

ConnectionDependency = Callable[[HTTPConnection], AsyncIterator[PooledConnection]]


def _depends(dependency: Callable[..., Any]) -> Any:
    if _HAS_SCOPE:
        return Depends(dependency, scope="function")
    return Depends(dependency)  # pragma: no cover - older FastAPI


def connection_dependency(
    *, timeout: float | None = None, state_key: str = "pool"
) -> ConnectionDependency:
    """Return a dependency that lends one connection of the app's pool per request.

    ``timeout`` is the borrow deadline (default: the pool's ``acquire_timeout``);
    ``state_key`` names the pool in the lifespan state. The connection goes back when
    the handler ends, however it ends; a failed borrow is answered with 503.
    Use it as ``Annotated[PooledConnection, Depends(dep, scope="function")]``.
    """

    async def connection(request: HTTPConnection) -> AsyncIterator[PooledConnection]:
        """Lend one connection of the app's pool for this request."""
        pool = get_pool(request, state_key)
        try:
            conn = await pool.acquire(timeout=timeout)
        except _UNAVAILABLE as exc:
            _refusals.refused(request.url.path, exc)
            raise HTTPException(
                status_code=503,
                detail="the database is busy or unavailable; retry later",
                headers={"Retry-After": "1"},
            ) from exc
        try:
            yield conn
        finally:
            # No await runs before the release (it is synchronous inside), so a
            # cancelled request still returns the connection.
            if not conn.is_released:
                await pool.release(conn)

    return connection


def transaction_dependency(
    *,
    isolation: IsolationLevel | None = None,
    readonly: bool = False,
    deferrable: bool = False,
    connection: ConnectionDependency | None = None,
) -> Callable[[PooledConnection], AsyncIterator[PooledConnection]]:
    """Return a dependency that runs the request in a transaction on its connection.

    Commits when the handler returns, rolls back when it raises. ``isolation``
    (``"serializable"``, ``"repeatable_read"``, ``"read_committed"``), ``readonly`` and
    ``deferrable`` are asyncpg's transaction options. The connection comes from
    ``connection`` (default :func:`get_connection`), so a handler that also asks for
    :data:`ConnectionDep` gets the same connection, inside the transaction.
    """
    conn_dependency = get_connection if connection is None else connection

    async def transaction(
        conn: Annotated[PooledConnection, _depends(conn_dependency)],
    ) -> AsyncIterator[PooledConnection]:
        """Run this request in a transaction on its connection."""
        async with conn.transaction(isolation=isolation, readonly=readonly, deferrable=deferrable):
            yield conn

    return transaction


def pool_dependency(*, state_key: str = "pool") -> Callable[[HTTPConnection], Pool]:
    """Return a dependency that gives the application's pool (stored under ``state_key``
    by the lifespan); its only parameter is the request, so nothing of it appears in the
    OpenAPI schema.
    """

    def app_pool(request: HTTPConnection) -> Pool:
        """Return the application's pool."""
        return get_pool(request, state_key)

    return app_pool


#: A handler parameter type: the application's pool (lifespan state ``"pool"``).
PoolDep = Annotated[Pool, Depends(pool_dependency())]

#: The default connection dependency (pool under ``"pool"``, pool's acquire timeout).
get_connection = connection_dependency()

#: The default transaction dependency (the server's default isolation level).
get_transaction = transaction_dependency()

#: A handler parameter type: one pooled connection for this request.
ConnectionDep = Annotated[PooledConnection, _depends(get_connection)]

#: A handler parameter type: this request's connection, inside a transaction.
TransactionDep = Annotated[PooledConnection, _depends(get_transaction)]


def health_router(
    *,
    live_path: str = "/livez",
    ready_path: str = "/readyz",
    state_key: str = "pool",
    timeout: float = 1.0,
    saturated_is_ready: bool = True,
    include_in_schema: bool = False,
) -> APIRouter:
    """Return a router with the liveness and readiness endpoints.

    Liveness answers 200 while the process serves HTTP; readiness answers 200 or 503
    from :func:`check_readiness` (see :mod:`asyncpool.contrib.starlette`). Both bodies
    are JSON and carry the pool's statistics.
    """
    router = APIRouter()
    router.add_api_route(
        live_path,
        liveness_endpoint(state_key=state_key),
        methods=["GET"],
        response_class=JSONResponse,
        include_in_schema=include_in_schema,
        name="asyncpool_liveness",
    )
    router.add_api_route(
        ready_path,
        readiness_endpoint(
            state_key=state_key, timeout=timeout, saturated_is_ready=saturated_is_ready
        ),
        methods=["GET"],
        response_class=JSONResponse,
        include_in_schema=include_in_schema,
        name="asyncpool_readiness",
        responses={503: {"description": "Not ready (see the JSON body's status)"}},
    )
    return router
