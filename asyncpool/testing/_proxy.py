"""A fault-injecting asyncio TCP proxy for network failure tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ("TcpProxy",)

_LINGER_RST = struct.pack("ii", 1, 0)


def _abort_with_rst(transport: asyncio.BaseTransport | None) -> None:
    """Abort ``transport`` so that the peer sees a TCP RST (SO_LINGER 0), not a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    cast(asyncio.Transport, transport).abort()


def _rewrite_dsn(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgresql:// DSN: {dsn!r}")
    userinfo, sep, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{sep}{host}:{port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("host", "port")
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def _dsn_host_port(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    if host.startswith("/"):
        raise ValueError(f"DSN names a Unix-domain socket, which TcpProxy cannot front: {dsn!r}")
    port = parts.port or int(query.get("port", "5432"))
    return host, port


class _Endpoint(asyncio.Protocol):
    """One side (client or upstream) of a proxied connection."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reading = True
        self.peer_full = False  # the peer's write buffer is full: stop reading from this side
        self.held: list[bytes] = []  # data read while stalled, delivered on resume

    def is_open(self) -> bool:
        return self.transport is not None and not self.lost and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.conn.endpoint_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.forward(self, data)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost() then closes the peer gracefully

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.endpoint_lost(self, exc)

    def pause_writing(self) -> None:
        self.conn.peer(self).peer_full = True
        self.conn.update_reading()

    def resume_writing(self) -> None:
        self.conn.peer(self).peer_full = False
        self.conn.update_reading()


class _Connection:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.client = _Endpoint(self)
        self.upstream = _Endpoint(self)
        self.dial_task: asyncio.Task[None] | None = None
        self.finished = False
        # Blackholed: every byte either way is dropped, for good (see TcpProxy.blackhole).
        self.dead = False

    def peer(self, endpoint: _Endpoint) -> _Endpoint:
        return self.upstream if endpoint is self.client else self.client

    # -- callbacks from the endpoints

    def endpoint_made(self, endpoint: _Endpoint) -> None:
        if endpoint is self.client:
            self.proxy._client_connected(self)
        self.update_reading()

    def forward(self, source: _Endpoint, data: bytes) -> None:
        if self.dead:
            return  # a blackholed connection: dropped, never delivered
        target = self.peer(source)
        if self.proxy._stalled or source.held or target.transport is None:
            source.held.append(data)  # delivered by flush_held()
            return
        if target.is_open():
            assert target.transport is not None
            target.transport.write(data)

    def endpoint_lost(self, endpoint: _Endpoint, exc: Exception | None) -> None:
        peer = self.peer(endpoint)
        if peer.is_open():
            if exc is None:
                assert peer.transport is not None
                peer.transport.close()
            else:
                _abort_with_rst(peer.transport)
        if endpoint is self.client and self.dial_task is not None:
            self.dial_task.cancel()
        client_gone = self.client.transport is None or self.client.lost
        if client_gone and (self.upstream.transport is None or self.upstream.lost):
            self._finish()

    # -- control

    def update_reading(self) -> None:
        stalled = self.proxy._stalled
        for endpoint in (self.client, self.upstream):
            if not endpoint.is_open():
                continue
            assert endpoint.transport is not None
            should_read = not stalled and self.peer(endpoint).is_open() and not endpoint.peer_full
            if should_read and not endpoint.reading:
                endpoint.reading = True
                endpoint.transport.resume_reading()
            elif not should_read and endpoint.reading:
                endpoint.reading = False
                endpoint.transport.pause_reading()

    def flush_held(self) -> None:
        for endpoint in (self.client, self.upstream):
            held, endpoint.held = endpoint.held, []
            target = self.peer(endpoint)
            if held and target.is_open():
                assert target.transport is not None
                target.transport.writelines(held)

    def cut(self) -> None:
        if self.dial_task is not None:
            self.dial_task.cancel()
        _abort_with_rst(self.client.transport)
        _abort_with_rst(self.upstream.transport)

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.proxy._connections.discard(self)

    async def dial(self, host: str, port: int, delay: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.client.is_open():
                return
            await loop.create_connection(lambda: self.upstream, host, port)
        except asyncio.CancelledError:
            _abort_with_rst(self.client.transport)
            raise
        except OSError:
            _abort_with_rst(self.client.transport)
            return
        if not self.client.is_open():
            _abort_with_rst(self.upstream.transport)
            return
        if not self.proxy._stalled:
            self.flush_held()
        self.update_reading()


class TcpProxy:
    """An asyncio TCP proxy on 127.0.0.1 with fault injection, for network failure tests.

    The proxy runs in the current event loop. Every connection accepted on
    :attr:`host` and :attr:`port` is forwarded to ``upstream_host``:``upstream_port``.
    Faults can be switched on at any time:

    * :meth:`cut` resets every open connection (both sides see a TCP RST);
    * :meth:`stall` stops forwarding bytes, in both directions, on existing and new
      connections while keeping them open (a half-open network); :meth:`resume`
      delivers what was held back;
    * :meth:`blackhole` drops every byte, for good, on existing connections and on new
      ones until :meth:`heal` (a half-open network that comes back for new sockets);
    * :meth:`refuse` resets every new connection right after accepting it;
    * :meth:`set_delay` waits before dialling upstream for each new connection;
    * :meth:`resume` clears every fault.

    Use it as an async context manager::

        async with TcpProxy.from_dsn(dsn) as proxy:
            conn = await asyncpg.connect(proxy.dsn)
            proxy.cut()
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        dsn: str | None = None,
    ) -> None:
        """Configure (but do not start) a proxy.

        Args:
            upstream_host: where to forward connections to.
            upstream_port: the upstream TCP port.
            listen_host: the address to listen on.
            listen_port: the port to listen on; ``0`` picks a free one.
            dsn: an upstream DSN; if given, :attr:`dsn` returns it rewritten to go
                through the proxy.
        """
        self._upstream_host = upstream_host
        self._upstream_port = upstream_port
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._upstream_dsn = dsn
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled = False
        self._blackholed = False
        self._refusing = False
        self._connect_delay = 0.0
        self._connections_total = 0
        self._refused_total = 0

    @classmethod
    def from_dsn(cls, dsn: str, *, listen_host: str = "127.0.0.1") -> TcpProxy:
        """Create a proxy in front of the host and port named by a ``postgresql://`` DSN."""
        host, port = _dsn_host_port(dsn)
        return cls(host, port, listen_host=listen_host, dsn=dsn)

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def upstream(self) -> tuple[str, int]:
        """The ``(host, port)`` connections are forwarded to."""
        return self._upstream_host, self._upstream_port

    @property
    def dsn(self) -> str:
        """The DSN given to the constructor or :meth:`from_dsn`, rewritten to the proxy."""
        if self._upstream_dsn is None:
            raise RuntimeError("no DSN was given to this proxy; use dsn_for(dsn)")
        return self.dsn_for(self._upstream_dsn)

    def dsn_for(self, dsn: str) -> str:
        """Return ``dsn`` (a ``postgresql://`` URL) with host and port replaced by the proxy's."""
        return _rewrite_dsn(dsn, self.host, self.port)

    @property
    def is_running(self) -> bool:
        """Whether the proxy is listening."""
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Number of proxied connections currently open."""
        return len(self._connections)

    @property
    def connections_total(self) -> int:
        """Number of client connections accepted since start (refused ones included)."""
        return self._connections_total

    @property
    def refused_total(self) -> int:
        """Number of client connections reset because of :meth:`refuse`."""
        return self._refused_total

    @property
    def stalled(self) -> bool:
        """Whether :meth:`stall` is in effect."""
        return self._stalled

    @property
    def refusing(self) -> bool:
        """Whether :meth:`refuse` is in effect."""
        return self._refusing

    @property
    def connect_delay(self) -> float:
        """Seconds waited before dialling upstream for each new connection."""
        return self._connect_delay

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening. Does nothing if already started."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self).client,
            self._listen_host,
            self._port if self._port is not None else self._listen_port,
        )
        sockname = self._server.sockets[0].getsockname()
        self._port = int(sockname[1])

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait for all of the proxy's tasks.

        The proxy can be started again later, on the same port if it is still free.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.cut()
        await server.wait_closed()
        # Let the transports' connection_lost callbacks run so that every socket is closed.
        for _ in range(100):
            if not self._connections:
                break
            await asyncio.sleep(0)
        self._connections.clear()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def cut(self) -> None:
        """Reset (TCP RST) every currently open connection, on both sides."""
        for conn in list(self._connections):
            conn.cut()

    def stall(self) -> None:
        """Stop forwarding bytes on existing and new connections; keep them open."""
        self._stalled = True
        for conn in list(self._connections):
            conn.update_reading()

    def blackhole(self) -> None:
        """Silently drop every byte on existing and new connections, keeping them open,
        until :meth:`heal`; connections that saw the blackhole stay dead after it (like
        sockets whose packets were lost on a half-open network, with no RST ever sent).
        """
        self._blackholed = True
        for conn in list(self._connections):
            conn.dead = True
            for endpoint in (conn.client, conn.upstream):
                endpoint.held.clear()

    def heal(self) -> None:
        """End a :meth:`blackhole` for new connections (the dead ones stay dead)."""
        self._blackholed = False

    def refuse(self) -> None:
        """Reset every new connection as soon as it is accepted (open ones are kept)."""
        self._refusing = True

    def set_delay(self, connect_delay: float = 0.0) -> None:
        """Wait ``connect_delay`` seconds before dialling upstream for each new connection."""
        if connect_delay < 0:
            raise ValueError("connect_delay must be >= 0")
        self._connect_delay = connect_delay

    def resume(self) -> None:
        """Clear every fault: forward again (held bytes first), accept, no delay."""
        self._stalled = False
        self._refusing = False
        self._connect_delay = 0.0
        for conn in list(self._connections):
            conn.flush_held()
            conn.update_reading()

    # ------------------------------------------------------------------ internals

    def _client_connected(self, conn: _Connection) -> None:
        self._connections_total += 1
        if self._refusing or self._server is None:
            self._refused_total += 1
            _abort_with_rst(conn.client.transport)
            return
        self._connections.add(conn)
        conn.dead = self._blackholed
        task = asyncio.get_running_loop().create_task(
            conn.dial(self._upstream_host, self._upstream_port, self._connect_delay)
        )
        conn.dial_task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        return (
            f"<TcpProxy {self._listen_host}:{port} -> {self._upstream_host}:"
            f"{self._upstream_port} open={self.connection_count}>"
        )
