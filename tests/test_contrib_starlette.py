"""asyncpool.contrib.starlette: lifespan, get_pool, readiness, and CancelOnDisconnect.

Client disconnects are tested for real: uvicorn serves on 127.0.0.1 in the test's event
loop and a raw socket sends a request to a slow endpoint, then hangs up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import asyncpool
from asyncpool.contrib.starlette import (
    CancelOnDisconnect,
    check_readiness,
    get_pool,
    health_routes,
    open_pool,
    pool_lifespan,
    stats_to_dict,
)
from asyncpool.testing import TcpProxy

#: Run once with 0 before the slow call, so that the cancellation lands in the query
#: itself rather than between asyncpg's prepare and execute.
SLEEP = "SELECT pg_sleep($1)"


def app_name() -> str:
    return f"aptest-starlette-{uuid.uuid4().hex[:10]}"


async def backends(dsn: str, name: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = $1", name
        )
    finally:
        await conn.close()


async def sleeping(dsn: str, name: str) -> None:
    """Wait until a backend of ``name`` is inside pg_sleep: a cancel request that reaches
    the server before the backend has read the query is ignored by PostgreSQL.
    """

    async def in_sleep() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND wait_event = 'PgSleep'",
                    name,
                )
            )
        finally:
            await conn.close()

    await eventually(in_sleep, f"a backend of {name} runs pg_sleep")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0):
    """Poll a condition that has no event to await (server-side state), with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def client_for(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@asynccontextmanager
async def uvicorn_on_loopback(app: ASGIApp) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in this event loop; yield the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # clients queue in the backlog until uvicorn has started
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        log_level="warning",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


class SlowEndpoint:
    """A handler that holds a connection in a 30 s query, reporting how it ended."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = asyncio.Event()
        self.outcome: list[str] = []

    async def handle(self, request: Request) -> Response:
        try:
            async with get_pool(request).acquire() as conn:
                await conn.fetchval(SLEEP, 0)
                self.started.set()
                await conn.fetchval(SLEEP, self.seconds)
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            raise
        self.outcome.append("completed")
        return PlainTextResponse("done")


def signal_when_done(app: ASGIApp, path: str, done: asyncio.Event) -> ASGIApp:
    """Wrap ``app``; set ``done`` when a request to ``path`` has left the application."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            if scope.get("path") == path:
                done.set()

    return wrapped


async def hang_up_mid_request(
    port: int, started: asyncio.Event, until: Callable[[], Awaitable[None]] | None = None
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(started.wait(), 5)
    if until is not None:
        await until()
    writer.close()
    await writer.wait_closed()


# ----------------------------------------------------------------------------- lifespan


async def test_pool_in_lifespan_state_and_app_state(postgres_dsn: str):
    async def which(request: Request) -> JSONResponse:
        pool = get_pool(request)
        replica = get_pool(request, "replica")
        return JSONResponse(
            {
                "state": request.state.pool is pool,
                "app": request.app.state.pool is pool,
                "distinct": replica is not pool,
            }
        )

    lifespan_pool = pool_lifespan(postgres_dsn, min_size=1, max_size=2)
    replica_pool = pool_lifespan(postgres_dsn, min_size=0, max_size=1, state_key="replica")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with lifespan_pool(app) as state, replica_pool(app) as more:
            yield {**state, **more}

    app = Starlette(routes=[Route("/which", which)], lifespan=lifespan)
    async with client_for(app) as client:
        assert (await client.get("/which")).json() == {
            "state": True,
            "app": True,
            "distinct": True,
        }
        pools = (app.state.pool, app.state.replica)
    assert all(p.closed for p in pools)


async def test_open_pool_in_a_custom_lifespan(postgres_dsn: str):
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_pool(postgres_dsn, min_size=1, max_size=2) as pool:
            yield {"pool": pool, "greeting": "hello"}

    async def hello(request: Request) -> PlainTextResponse:
        async with get_pool(request).acquire() as conn:
            return PlainTextResponse(await conn.fetchval("SELECT $1::text", request.state.greeting))

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    async with client_for(app) as client:
        assert (await client.get("/")).text == "hello"


async def test_get_pool_without_lifespan_explains():
    async def handler(request: Request) -> PlainTextResponse:
        with pytest.raises(RuntimeError, match=r"lifespan=pool_lifespan"):
            get_pool(request)
        return PlainTextResponse("checked")

    app = Starlette(routes=[Route("/", handler)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).text == "checked"


# ----------------------------------------------------------------------------- health


async def test_readiness_distinguishes_failures(postgres_dsn: str):
    async with (
        TcpProxy.from_dsn(postgres_dsn) as proxy,
        asyncpool.create_pool(proxy.dsn, min_size=1, max_size=2) as pool,
    ):
        ok = await check_readiness(pool)
        assert (ok.ready, ok.status) == (True, "ready")
        assert ok.stats is not None
        assert ok.stats.in_use == 0
        json.dumps(ok.as_dict())  # JSON-ready, stats included

        failed = await check_readiness(pool, query="SELECT 1/0")
        assert (failed.ready, failed.status) == (False, "unavailable")
        assert "DivisionByZero" in failed.detail

        async with pool.acquire():
            proxy.set_delay(5)  # the second connection cannot open in time
            slow = await check_readiness(pool, timeout=0.2)
            proxy.set_delay(0)
        assert (slow.ready, slow.status) == (False, "timeout")  # not saturated: size < max
        assert slow.elapsed < 1.0


async def test_health_routes_on_starlette(postgres_dsn: str):
    app = Starlette(
        routes=health_routes(live_path="/live", ready_path="/ready"),
        lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2),
    )
    async with client_for(app) as client:
        live = await client.get("/live")
        ready = await client.get("/ready")
    assert (live.status_code, live.json()["status"]) == (200, "alive")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert ready.json()["pool"] == {
        **ready.json()["pool"],
        "max_size": 2,
        "in_use": 0,
        "waiting": 0,
    }


def test_stats_to_dict_is_json():
    pool = asyncpool.Pool("postgresql://unused", min_size=0)
    data = stats_to_dict(pool.stats())
    assert json.loads(json.dumps(data)) == data
    assert data["wait_time"] == {"count": 0, "mean": 0.0, "max": 0.0}
    assert data["size"] == 0


# ----------------------------------------------------------------------------- disconnects


async def test_cancel_on_disconnect_returns_connection_under_uvicorn(postgres_dsn: str):
    name = app_name()
    slow = SlowEndpoint(30)
    done = asyncio.Event()
    app = Starlette(
        routes=[Route("/slow", slow.handle)],
        middleware=[Middleware(CancelOnDisconnect)],
        lifespan=pool_lifespan(
            postgres_dsn, min_size=1, max_size=2, server_settings={"application_name": name}
        ),
    )
    async with uvicorn_on_loopback(signal_when_done(app, "/slow", done)) as port:
        await hang_up_mid_request(port, slow.started, lambda: sleeping(postgres_dsn, name))
        await asyncio.wait_for(done.wait(), 5)  # well before the 30 s query would end
        pool: asyncpool.Pool = app.state.pool
        assert slow.outcome == ["cancelled"]
        assert pool.stats().in_use == 0

        async def settled() -> bool:
            s = pool.stats()
            return s.idle == s.size

        await eventually(settled, "the cancelled connection is reset and idle")
        rows = await backends(postgres_dsn, name)
        assert len(rows) == pool.stats().size == pool.stats().connections_opened_total
        assert {r["state"] for r in rows} == {"idle"}  # the query was cancelled server-side


async def test_without_middleware_the_handler_runs_to_its_end(postgres_dsn: str):
    """What CancelOnDisconnect changes: uvicorn alone lets the abandoned query finish."""
    slow = SlowEndpoint(0.3)
    done = asyncio.Event()
    app = Starlette(
        routes=[Route("/slow", slow.handle)],
        lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2),
    )
    async with uvicorn_on_loopback(signal_when_done(app, "/slow", done)) as port:
        await hang_up_mid_request(port, slow.started)
        await asyncio.wait_for(done.wait(), 5)
        assert slow.outcome == ["completed"]
        assert app.state.pool.stats().in_use == 0


async def test_cancel_on_disconnect_passes_bodies_through(postgres_dsn: str):
    async def echo(request: Request) -> Response:
        body = await request.body()
        assert not await request.is_disconnected()

        async def chunks() -> AsyncIterator[bytes]:
            for part in (body[:3], body[3:]):
                yield part

        return StreamingResponse(chunks())

    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])], middleware=[Middleware(CancelOnDisconnect)]
    )

    async def upload() -> AsyncIterator[bytes]:
        for part in (b"hel", b"lo ", b"world"):
            yield part

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/echo", content=upload())
    assert response.status_code == 200
    assert response.text == "hello world"
