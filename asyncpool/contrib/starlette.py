"""Starlette integration: the pool's lifespan, finding it from a request, health checks.

* :func:`pool_lifespan` opens a pool at start-up and closes it gracefully at shutdown;
  the pool is in the lifespan state (``request.state.pool``) and in ``app.state.pool``.
  Start-up fails with :class:`~asyncpool.DatabaseUnavailable` if the database cannot
  be reached, unless ``degraded_ok=True``: then the application starts anyway and the
  pool opens its ``min_size`` connections in the background, retrying with backoff.
* :func:`open_pool` is the same, as an async context manager for your own lifespan.
* :func:`get_pool` finds the pool from a request or websocket.
* :func:`health_routes` adds a liveness and a readiness endpoint; :func:`check_readiness`
  is the readiness check on its own.
* :class:`CancelOnDisconnect` is an ASGI middleware that cancels a request's handler
  when the client disconnects before the response is complete, so an abandoned slow
  query stops at once and its connection goes back to the pool.

Readiness, precisely: a ``GET`` on the readiness path borrows a connection with a
deadline of ``timeout`` seconds and runs ``SELECT 1`` on it within what remains of the
deadline. The answer is 200 when that succeeds (``"ready"``), and also when the borrow
timed out or was refused only because the pool is at ``max_size`` with every
connection lent out (``"saturated"``: the database answers, the process is busy; pass
``saturated_is_ready=False`` to answer 503 instead). Otherwise it is 503:
``"unavailable"`` (no connection could be opened, or the query failed), ``"timeout"``
(no connection within the deadline, pool not full), ``"closed"`` (shutting down) or
``"no_pool"`` (the lifespan did not run). Liveness always answers 200 while the
process serves HTTP and never touches the database, so a database outage makes the
instance unready, never restarted. Both bodies are JSON with the pool's statistics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypedDict, overload

import asyncpg
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncpool import (
    DatabaseUnavailable,
    Pool,
    PoolClosed,
    PoolStats,
    PoolTimeout,
    TimeSummary,
    TooManyWaiters,
)

__all__ = (
    "CancelOnDisconnect",
    "HealthReport",
    "PoolState",
    "check_readiness",
    "get_pool",
    "health_routes",
    "liveness_endpoint",
    "open_pool",
    "pool_lifespan",
    "readiness_endpoint",
    "stats_to_dict",
)

logger = logging.getLogger("asyncpool.contrib.starlette")

#: What opening a connection raises when the database cannot be used: network errors
#: (refused, unreachable, DNS, timeouts are OSErrors), server refusals (authentication,
#: "too many connections", "the database system is starting up") and protocol errors.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

_NO_STORE = {"Cache-Control": "no-store"}


# --------------------------------------------------------------------------- lifespan


async def _start_pool(dsn: str | None, degraded_ok: bool, pool_kwargs: dict[str, Any]) -> Pool:
    pool = Pool(dsn, **pool_kwargs)
    try:
        await pool.open()
    except _CONNECT_ERRORS as exc:
        if not degraded_ok:
            raise DatabaseUnavailable(
                f"asyncpool pool {pool.name!r} could not open its first connection at "
                f"start-up: {exc!r}. Check the DSN and that the database is reachable, or "
                "pass degraded_ok=True to start without the database",
                exc,
            ) from exc
        min_size = pool.config.min_size
        logger.warning(
            "asyncpool pool %r: the database is unreachable at start-up (%r); starting "
            "degraded, opening %d connection(s) in the background",
            pool.name,
            exc,
            min_size,
        )
        # A pool opens only once; its replacement opens without waiting, and connects in
        # the background (retried with backoff).
        pool = Pool(dsn, **{**pool_kwargs, "name": pool.name})
        await pool.open(wait=False)
    return pool


@asynccontextmanager
async def open_pool(
    dsn: str | None = None,
    *,
    degraded_ok: bool = False,
    close_timeout: float | None = None,
    **pool_kwargs: Any,
) -> AsyncIterator[Pool]:
    """Open a pool for an application's lifetime, and close it gracefully afterwards.

    Use it inside your own lifespan when the application opens other resources too::

        @asynccontextmanager
        async def lifespan(app):
            async with open_pool(dsn, max_size=20) as pool:
                yield {"pool": pool}

    ``pool_kwargs`` are :class:`asyncpool.Pool` settings. If not one of the first
    ``min_size`` connections can be opened, this raises
    :class:`~asyncpool.DatabaseUnavailable` (the connect error is its ``last_error``),
    unless ``degraded_ok`` is true: then it logs a warning and yields a pool that opens
    its ``min_size`` connections in the background, retrying with backoff; while the
    database stays unreachable, acquire fails fast with
    :class:`~asyncpool.DatabaseUnavailable`. On exit the pool closes with
    :meth:`Pool.close`: borrowed connections get ``close_timeout`` seconds (default:
    the pool's ``close_timeout``) to come back.
    """
    pool = await _start_pool(dsn, degraded_ok, pool_kwargs)
    try:
        yield pool
    finally:
        await pool.close(timeout=close_timeout)


class PoolState(TypedDict):
    """The lifespan state :func:`pool_lifespan` yields (with the default ``state_key``)."""

    pool: Pool


@overload
def pool_lifespan(
    dsn: str | None = None,
    *,
    degraded_ok: bool = False,
    close_timeout: float | None = None,
    state_key: Literal["pool"] = "pool",
    **pool_kwargs: Any,
) -> Callable[[Any], AbstractAsyncContextManager[PoolState]]: ...
@overload
def pool_lifespan(
    dsn: str | None = None,
    *,
    degraded_ok: bool = False,
    close_timeout: float | None = None,
    state_key: str,
    **pool_kwargs: Any,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Pool]]]: ...
def pool_lifespan(
    dsn: str | None = None,
    *,
    degraded_ok: bool = False,
    close_timeout: float | None = None,
    state_key: str = "pool",
    **pool_kwargs: Any,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Return a lifespan for ``Starlette(lifespan=...)`` or ``FastAPI(lifespan=...)``.

    At start-up it opens a new pool (see :func:`open_pool` for ``degraded_ok`` and
    ``close_timeout``), stores it as ``app.state.<state_key>`` and in the lifespan
    state, so handlers find it as ``request.state.<state_key>`` (or with
    :func:`get_pool`). At shutdown, after the server has finished in-flight requests,
    it closes the pool gracefully. Each start-up creates a new pool. The state is a
    :class:`PoolState` (``{"pool": pool}``), or ``{state_key: pool}``.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Pool]]:
        async with open_pool(
            dsn, degraded_ok=degraded_ok, close_timeout=close_timeout, **pool_kwargs
        ) as pool:
            app_state = getattr(app, "state", None)
            if app_state is not None:
                setattr(app_state, state_key, pool)
            yield {state_key: pool}

    return lifespan


def _find_pool(conn: HTTPConnection, state_key: str) -> Pool | None:
    pool = getattr(conn.state, state_key, None)
    if pool is None:
        app = conn.scope.get("app")
        pool = getattr(getattr(app, "state", None), state_key, None)
    return pool if isinstance(pool, Pool) else None


def get_pool(conn: HTTPConnection, state_key: str = "pool") -> Pool:
    """Return the pool of the request's (or websocket's) application.

    Looks in the lifespan state (``request.state.<state_key>``), then in
    ``request.app.state``. Raises :class:`RuntimeError` if neither holds a pool.
    """
    pool = _find_pool(conn, state_key)
    if pool is None:
        raise RuntimeError(
            f"no asyncpool pool under {state_key!r} in the request state or app.state: "
            "create the application with lifespan=pool_lifespan(...) (or store the pool "
            "there in your own lifespan)"
        )
    return pool


# --------------------------------------------------------------------------- health


def stats_to_dict(stats: PoolStats) -> dict[str, Any]:
    """Turn :class:`~asyncpool.PoolStats` into a JSON-ready dict.

    Every size and counter appears under its field name; each time summary becomes
    ``{"count": n, "mean": seconds, "max": seconds}``.
    """
    out: dict[str, Any] = {}
    for field in dataclasses.fields(stats):
        value = getattr(stats, field.name)
        if isinstance(value, TimeSummary):
            value = {"count": value.count, "mean": value.mean, "max": value.max}
        out[field.name] = value
    return out


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """The outcome of :func:`check_readiness`.

    ``status`` is one of ``"ready"``, ``"saturated"`` (both with ``ready`` true),
    ``"unavailable"``, ``"timeout"``, ``"closed"`` and ``"no_pool"``; ``detail`` says
    why in words; ``stats`` is the pool's state after the check; ``elapsed`` is the
    check's duration in seconds.
    """

    ready: bool
    status: str
    detail: str
    stats: PoolStats | None
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        """The report as the readiness endpoint's JSON body."""
        return {
            "status": self.status,
            "ready": self.ready,
            "detail": self.detail,
            "elapsed_ms": round(self.elapsed * 1000, 3),
            "pool": None if self.stats is None else stats_to_dict(self.stats),
        }


async def check_readiness(
    pool: Pool | None,
    *,
    timeout: float = 1.0,
    query: str = "SELECT 1",
    saturated_is_ready: bool = True,
) -> HealthReport:
    """Check that ``pool`` can lend a connection on which the database answers.

    Borrows a connection with a ``timeout``-second deadline and runs ``query`` within
    what is left of it. See the module documentation for the meaning of each status.
    Never raises for a database or pool problem (only cancellation propagates).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()

    def report(ready: bool, status: str, detail: str) -> HealthReport:
        stats = None if pool is None else pool.stats()
        return HealthReport(ready, status, detail, stats, loop.time() - started)

    if pool is None:
        return report(False, "no_pool", "no pool: the application's lifespan did not open one")
    if pool.closed:
        return report(False, "closed", "the pool is closed (the application is shutting down)")
    try:
        async with pool.acquire(timeout=timeout) as conn:
            remaining = max(timeout - (loop.time() - started), 0.001)
            await conn.fetchval(query, timeout=remaining)
    except (PoolTimeout, TooManyWaiters) as exc:
        stats = pool.stats()
        if stats.in_use >= stats.max_size:  # every connection is lent out
            if saturated_is_ready:
                return report(True, "saturated", f"every connection is in use: {exc}")
            return report(False, "saturated", f"every connection is in use: {exc}")
        return report(False, "timeout", str(exc))
    except PoolClosed as exc:
        return report(False, "closed", str(exc))
    except DatabaseUnavailable as exc:
        return report(False, "unavailable", str(exc))
    except Exception as exc:  # the query failed: lost connection, server error, timeout
        return report(False, "unavailable", f"the readiness query failed: {exc!r}")
    return report(True, "ready", "a connection was lent and the database answered")


def liveness_endpoint(*, state_key: str = "pool") -> Callable[[Request], Awaitable[JSONResponse]]:
    """Return a liveness endpoint: always 200 while the process serves HTTP; no database I/O.

    The body is ``{"status": "alive", "pool": <statistics, or null without a pool>}``.
    """

    async def liveness(request: Request) -> JSONResponse:
        pool = _find_pool(request, state_key)
        stats = None if pool is None else stats_to_dict(pool.stats())
        return JSONResponse({"status": "alive", "pool": stats}, headers=_NO_STORE)

    return liveness


def readiness_endpoint(
    *,
    state_key: str = "pool",
    timeout: float = 1.0,
    query: str = "SELECT 1",
    saturated_is_ready: bool = True,
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Return a readiness endpoint: 200 or 503 from :func:`check_readiness`, JSON body."""

    async def readiness(request: Request) -> JSONResponse:
        report = await check_readiness(
            _find_pool(request, state_key),
            timeout=timeout,
            query=query,
            saturated_is_ready=saturated_is_ready,
        )
        return JSONResponse(
            report.as_dict(), status_code=200 if report.ready else 503, headers=_NO_STORE
        )

    return readiness


def health_routes(
    *,
    live_path: str = "/livez",
    ready_path: str = "/readyz",
    state_key: str = "pool",
    timeout: float = 1.0,
    saturated_is_ready: bool = True,
) -> list[Route]:
    """Return the liveness and readiness routes, e.g. ``Starlette(routes=[*health_routes()])``.

    See the module documentation for what each answers.
    """
    live = liveness_endpoint(state_key=state_key)
    ready = readiness_endpoint(
        state_key=state_key, timeout=timeout, saturated_is_ready=saturated_is_ready
    )
    return [
        Route(live_path, live, methods=["GET"], name="asyncpool_liveness"),
        Route(ready_path, ready, methods=["GET"], name="asyncpool_readiness"),
    ]


# --------------------------------------------------------------------------- disconnects


class CancelOnDisconnect:
    """ASGI middleware: cancel an HTTP request's handler when its client disconnects.

    Servers such as uvicorn do not stop a handler whose client has gone: a slow query
    runs to its end and keeps its connection meanwhile. With this middleware, the
    handler runs in its own task while a watcher reads the client's messages; when
    the client disconnects before the response is complete, the handler task is
    cancelled. ``async with pool.acquire()`` and the FastAPI dependencies then return
    the connection, and asyncpg cancels the running query on the server. The
    request's own body reaches the handler unchanged (one message at a time).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped application, cancelling it if the client goes away."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)
        complete = False
        disconnected = False

        async def app_receive() -> Message:
            if disconnected and inbox.empty():
                return {"type": "http.disconnect"}
            return await inbox.get()

        async def app_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        async def run_app() -> None:
            await self.app(scope, app_receive, app_send)

        loop = asyncio.get_running_loop()
        handler = loop.create_task(run_app())

        async def watch() -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    if not complete and handler.cancel("the client disconnected"):
                        logger.info(
                            "asyncpool: client disconnected from %s %s; handler cancelled",
                            scope.get("method"),
                            scope.get("path"),
                        )
                    await inbox.put(message)
                    return
                await inbox.put(message)

        watcher = loop.create_task(watch())
        watcher.add_done_callback(_retrieve)
        try:
            await handler
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if disconnected and not (task is not None and task.cancelling()):
                return  # we cancelled it; the client is gone, there is nobody to answer
            raise
        finally:
            watcher.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("asyncpool: disconnect watcher failed", exc_info=task.exception())
