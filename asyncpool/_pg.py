"""Everything asyncpool knows about asyncpg and PostgreSQL, in one place.

The pool's bookkeeping (``_pool.py``) never talks to the server itself; it calls
these functions to open, check, reset and close connections. Anything that
quacks like an ``asyncpg.Connection`` (``execute``, ``is_closed``,
``is_in_transaction``, ``close``, ``terminate``) works, which is how the unit
tests drive the pool with fake connections.
"""

from __future__ import annotations

import inspect
import logging
import os
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from asyncpg.connection import _ConnectionProxy

from ._config import PoolConfig
from ._errors import PoolUsageError
from ._quiet import own, quiet

#: asyncpg's base class of pool proxies: ``isinstance(x, asyncpg.Connection)`` holds for
#: its subclasses, which is how asyncpool's lent connection passes for one.
ConnectionProxy = _ConnectionProxy

__all__ = (
    "CONFIG_ERROR",
    "ConnectionProxy",
    "FULL_RESET_SQL",
    "OUTAGE",
    "SERVER_FULL",
    "TIMED_OUT",
    "accepted_keywords",
    "check_connection",
    "classify_connect_error",
    "config_advice",
    "disown",
    "unmanaged_transaction",
    "input_check",
    "on_termination",
    "close_gracefully",
    "forget_listeners",
    "remove_callbacks",
    "lease_ender",
    "needs_rollback",
    "open_connection",
    "ping",
    "query_count",
    "reset_connection",
    "terminate",
)

logger = logging.getLogger("asyncpool.pool")

#: The statements of a full reset, after any ROLLBACK. It restores what a new
#: session looks like (like ``DISCARD ALL``) except that it keeps prepared
#: statements, so asyncpg's statement cache stays valid.
FULL_RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;"
)


_ASYNCPG_KEYWORDS: frozenset[str] | None = None


def accepted_keywords(connect: Callable[..., Any] | None) -> frozenset[str] | None:
    """The keyword names ``connect`` (``asyncpg.connect`` when None) accepts, or None
    when it takes any keyword (``**kwargs``) or its signature cannot be read.
    """
    global _ASYNCPG_KEYWORDS
    if connect is None and _ASYNCPG_KEYWORDS is not None:
        return _ASYNCPG_KEYWORDS
    try:
        params = inspect.signature(connect or asyncpg.connect).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    if connect is None:
        _ASYNCPG_KEYWORDS = names
    return names


async def _resolve_args(config: PoolConfig, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(config.connect_kwargs)
    if config.connect_args is not None:
        supplied = config.connect_args()
        if inspect.isawaitable(supplied):
            supplied = await supplied
        kwargs.update(supplied)
    if extra:
        kwargs.update(extra)
    return kwargs


def _enable_tcp_keepalive(conn: Any) -> None:
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:  # pragma: no cover - platform without these options
        logger.debug("asyncpool could not enable TCP keepalive", exc_info=True)


async def open_connection(config: PoolConfig, extra: Mapping[str, Any] | None = None) -> Any:
    """Open one connection with the pool's settings (no ``init`` hook; the pool runs it)."""
    kwargs = await _resolve_args(config, extra)
    connect: Callable[..., Awaitable[Any]] = config.connect or asyncpg.connect
    dsn = kwargs.pop("dsn", config.dsn)
    kwargs.setdefault("timeout", config.connect_timeout)
    conn = await (connect(dsn, **kwargs) if dsn is not None else connect(**kwargs))
    if config.connect is not None:
        check_connection(conn)
    if config.tcp_keepalive:
        _enable_tcp_keepalive(conn)
    return conn


#: What a failed connect means, from :func:`classify_connect_error`.
OUTAGE, SERVER_FULL, CONFIG_ERROR, TIMED_OUT = "outage", "server full", "configuration", "timeout"

# SQLSTATE classes a server answers a login with when the settings are wrong, not when
# the server is down: 28 authorization (password, role, pg_hba), 3D unknown database,
# 42 unknown object (e.g. a server_settings name), 22 bad parameter value, 0A feature
# not supported. Retrying cannot help until the settings change.
_CONFIG_SQLSTATE_CLASSES = ("28", "3D", "42", "22", "0A")


def classify_connect_error(exc: BaseException) -> str:
    """Whether a connect failure is an :data:`OUTAGE` (refused, reset, server starting
    or shutting down ...), :data:`SERVER_FULL` (too many clients), :data:`TIMED_OUT`
    (no answer in time), or a :data:`CONFIG_ERROR` (password, role, database, TLS or
    arguments wrong: retrying will not help). Pure: looks at the exception only.
    """
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return SERVER_FULL
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return CONFIG_ERROR if state[:2] in _CONFIG_SQLSTATE_CLASSES else OUTAGE
    if isinstance(exc, TimeoutError):  # (asyncio.TimeoutError is TimeoutError)
        return TIMED_OUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CONFIG_ERROR
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        return CONFIG_ERROR  # asyncpg: "... rejected SSL upgrade" (ssl= required)
    if isinstance(exc, (OSError, ssl.SSLError)):
        return OUTAGE  # refused, reset, unreachable, DNS, a TLS stream cut
    if isinstance(exc, (TypeError, ValueError, LookupError, asyncpg.InterfaceError)):
        return CONFIG_ERROR  # bad arguments (asyncpg checks them at connect)
    return OUTAGE


def config_advice(exc: BaseException) -> str:
    """What to change after a :data:`CONFIG_ERROR` (one sentence for logs and errors)."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return "check the password (or the connect_args callable that supplies it)"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return "check the user (role) and the server's pg_hba.conf rules for this client"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "check the database name"
    if isinstance(exc, (ssl.SSLError, ConnectionError)):
        return "check the ssl= setting (or sslmode in the DSN) and the server's certificates"
    if isinstance(exc, asyncpg.PostgresError):
        return "check the connection settings (server_settings, options) the server refused"
    return "check the connection arguments and the connect= / connect_args= callables"


def check_connection(conn: object) -> None:
    """Refuse what a ``connect=`` function returned unless it works like a connection."""
    missing = [
        name
        for name in ("is_closed", "execute", "close", "terminate")
        if not callable(getattr(conn, name, None))
    ]
    if missing:
        # (An asyncpg.InterfaceError, as asyncpg's pool raises for this.)
        raise PoolUsageError(
            "expected the connect= callback to return an asyncpg.Connection, got "
            f"{type(conn).__module__}.{type(conn).__qualname__} ({conn!r:.60}), which has no "
            f"{', '.join(missing)}; e.g. `return await asyncpg.connect(*args, **kwargs)`"
        )


def unmanaged_transaction(conn: Any) -> bool:
    """True when a connection being given back holds a transaction that no ``async with
    conn.transaction()`` will end: a ``BEGIN`` of the borrower's, or a transaction object
    not used as a context manager (asyncpg's pool reports these at release).
    """
    top = getattr(conn, "_top_xact", None)
    if top is not None:
        return not getattr(top, "_managed", False)
    return bool(conn.is_in_transaction())


def needs_rollback(conn: Any) -> bool:
    """True when the connection holds an open or failed transaction, or is still
    cancelling a query (all local protocol state, no I/O).
    """
    protocol = getattr(conn, "_protocol", None)
    if protocol is not None and hasattr(protocol, "_is_cancelling"):
        return bool(
            protocol.is_in_transaction()
            or getattr(conn, "_top_xact", None) is not None
            or protocol._is_cancelling()
        )
    # Not an asyncpg connection (e.g. a test double), or an aborted one.
    return bool(conn.is_in_transaction() or getattr(conn, "_top_xact", None) is not None)


#: What :func:`lease_ender`'s function finds when a borrower gives a connection back.
LEASE_CLEAN, LEASE_NEEDS_ROLLBACK, LEASE_CLOSED = 0, 1, 2


def lease_ender(conn: Any) -> Callable[[], int]:
    """A function to call when a lease of ``conn`` ends (made once per connection).

    It invalidates the asyncpg prepared statements and cursors made during the lease
    (as asyncpg's own pool does) and returns :data:`LEASE_CLOSED` when the connection
    is closed or aborted, :data:`LEASE_NEEDS_ROLLBACK` when it holds an open or failed
    transaction or is still cancelling a query (see :func:`needs_rollback`), else
    :data:`LEASE_CLEAN`. All local state, no I/O. For an asyncpg connection the
    protocol's methods are bound once here, which keeps release cheap.
    """
    try:
        protocol = conn._protocol
        connected = protocol.is_connected
        in_transaction = protocol.is_in_transaction
        cancelling = protocol._is_cancelling
        conn._aborted, conn._top_xact, conn._pool_release_ctr  # noqa: B018
    except AttributeError:  # not an asyncpg connection (e.g. a test double)

        def end_any() -> int:
            if conn.is_closed():
                return LEASE_CLOSED
            if hasattr(conn, "_pool_release_ctr"):
                conn._pool_release_ctr += 1
            return LEASE_NEEDS_ROLLBACK if needs_rollback(conn) else LEASE_CLEAN

        return end_any

    def end_asyncpg() -> int:
        # Connection.is_closed(), inlined (asyncpg drops _protocol only after _aborted).
        if conn._aborted or not connected():
            return LEASE_CLOSED
        conn._pool_release_ctr += 1
        if in_transaction() or conn._top_xact is not None or cancelling():
            return LEASE_NEEDS_ROLLBACK
        return LEASE_CLEAN

    return end_asyncpg


def query_count(conn: Any) -> int:
    """Statements this connection has run (asyncpg's ``max_queries`` counter), or 0."""
    protocol = getattr(conn, "_protocol", None)
    return int(getattr(protocol, "queries_count", 0))


async def _finish_cancellation(conn: Any) -> None:
    protocol: Any = getattr(conn, "_protocol", None)
    cancelling = getattr(protocol, "_is_cancelling", None)
    if cancelling is not None and cancelling():
        await protocol._wait_for_cancellation()


async def _rollback(conn: Any) -> None:
    await _finish_cancellation(conn)
    if getattr(conn, "_top_xact", None) is not None:
        # Forget asyncpg's Transaction object so the next borrower's
        # ``transaction()`` starts a real transaction, not a savepoint.
        conn._top_xact = None
    if conn.is_in_transaction():
        await own(conn, "execute")("ROLLBACK")


def remove_callbacks(conn: Any, callbacks: list[tuple[str, Any]]) -> None:
    """Remove callbacks a borrower registered (termination listeners, query loggers)."""
    for remover, callback in callbacks:
        try:
            getattr(conn, remover)(callback)
        except Exception:  # already removed by the borrower, or the connection is gone
            pass


def forget_listeners(conn: Any) -> None:
    """Drop asyncpg's client-side listener callbacks (no I/O)."""
    for name in ("_listeners", "_log_listeners"):
        registry = getattr(conn, name, None)
        if registry is not None:
            registry.clear()


async def reset_connection(conn: Any, *, full: bool, rollback: bool) -> None:
    """Bring a returned connection back to a clean session (the caller bounds the time).

    ``rollback`` ends an open or failed transaction (and waits out a cancelled
    query); ``full`` also restores session state with :data:`FULL_RESET_SQL`
    and drops client-side listener callbacks.
    """
    with quiet():  # the pool's own statements: no tracing spans
        if rollback:
            await _rollback(conn)
        if full:
            forget_listeners(conn)
            await own(conn, "execute")(FULL_RESET_SQL)


async def ping(conn: Any) -> None:
    """One round trip that proves the server answers (simple protocol, nothing prepared)."""
    with quiet():
        await own(conn, "execute")("SELECT 1")


async def close_gracefully(conn: Any, timeout: float) -> None:
    """Close politely (Terminate message), aborting if the server does not answer in time."""
    try:
        with quiet():
            await conn.close(timeout=timeout)
    except Exception:
        terminate(conn)


def _no_input() -> bool:
    return False


def input_check(conn: Any) -> Callable[[], bool]:
    """A function (made once per connection) that tells, without I/O on the connection,
    whether the server has sent anything the client has not read yet: one ``poll(0)`` of
    its socket. An idle connection normally has nothing to read; input there is most
    often the server ending the session (a FATAL error, then end of file), which asyncpg
    takes in as a protocol error until the socket closes: such a connection must not be
    lent without a check. Always False for a connection without a socket (a test double).
    """
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return _no_input
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poll = poller.poll

    def has_input() -> bool:
        return bool(poll(0))

    return has_input


def on_termination(conn: Any, callback: Callable[[Any], None]) -> None:
    """Have asyncpg call ``callback(conn)`` (soon after) when the connection closes, by
    either side. Nothing for a connection that cannot tell (a test double).
    """
    add = getattr(conn, "add_termination_listener", None)
    if add is not None:
        add(callback)


def disown(conns: list[Any]) -> None:
    """In a child process right after ``fork()``: let go of the parent's connections.

    The child shares each connection's socket with the parent, and on asyncio the epoll
    instance too. Whatever the child then does with an asyncpg connection (its
    finalizer at exit or garbage collection, ``terminate()``, a write) would end the
    parent's server session or unregister the parent's socket. So each socket's file
    descriptor is pointed, in this process only, at a private socket (``dup2``: the
    parent's socket is untouched), and asyncpg is told the connection is gone, so its
    finalizer does nothing. No I/O reaches the server.
    """
    fds = []
    for conn in conns:
        transport = getattr(conn, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        if fd >= 0:
            fds.append(fd)
        if hasattr(conn, "_aborted"):
            conn._aborted = True  # asyncpg: is_closed(); __del__ and terminate() skip I/O
    if not fds:
        return
    private, other = socket.socketpair()
    try:
        for fd in fds:
            try:
                os.dup2(private.fileno(), fd)
            except OSError:  # pragma: no cover - a descriptor already closed
                pass
    finally:
        private.close()
        other.close()


def terminate(conn: Any) -> None:
    """Abort the connection at once, without I/O; never raises."""
    try:
        conn.terminate()
    except Exception:  # pragma: no cover - defensive
        logger.debug("asyncpool: terminate() raised", exc_info=True)
