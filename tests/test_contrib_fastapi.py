"""asyncpool.contrib.fastapi through the real ASGI lifecycle, against the real server.

In-process tests drive the app with httpx.ASGITransport + asgi_lifespan.LifespanManager;
the disconnect test runs uvicorn on a loopback port and hangs up a raw socket.

Handlers are defined inside the tests, so this module must not use
``from __future__ import annotations`` (FastAPI reads the annotations at run time).
"""

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

import asyncpool
import asyncpool.contrib.fastapi as fastapi_contrib
from asyncpool.contrib.fastapi import (
    CancelOnDisconnect,
    ConnectionDep,
    PoolDep,
    PoolState,
    TransactionDep,
    check_readiness,
    connection_dependency,
    get_connection,
    get_pool,
    health_router,
    pool_lifespan,
)
from asyncpool.testing import TcpProxy

# ----------------------------------------------------------------------------- helpers

#: The slow query of the cancellation tests. They run it once with 0 first: asyncpg
#: prepares a new statement with Parse/Describe and no Sync, so a cancellation landing
#: just after the prepare (before the execute) would leave the backend "active" in an
#: implicit transaction until its next command (reported to the core pool's owners).
SLEEP = "SELECT pg_sleep($1)"


def app_name() -> str:
    return f"aptest-fastapi-{uuid.uuid4().hex[:10]}"


async def backends(dsn: str, name: str) -> list[asyncpg.Record]:
    """The server's sessions whose application_name is ``name``."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT pid, state, wait_event FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
    finally:
        await conn.close()


async def sleeping(dsn: str, name: str) -> None:
    """Wait until a backend of ``name`` is inside pg_sleep: a cancel request that reaches
    the server before the backend has read the query is ignored by PostgreSQL.
    """

    async def in_sleep() -> bool:
        rows = await backends(dsn, name)
        return any(r["wait_event"] == "PgSleep" for r in rows)

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
async def client_for(app: FastAPI, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport_ = httpx.ASGITransport(app=manager.app, **transport)
        async with httpx.AsyncClient(transport=transport_, base_url="http://test") as client:
            yield client


def pool_of(app: FastAPI) -> asyncpool.Pool:
    pool = app.state.pool
    assert isinstance(pool, asyncpool.Pool)
    return pool


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"fastapi_items_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            f"CREATE TABLE {name} (id int PRIMARY KEY, "
            f"tag text UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )
        yield name
        await conn.execute(f"DROP TABLE {name}")
    finally:
        await conn.close()


async def count_rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- lifespan


async def test_lifespan_opens_pool_in_state_and_closes_it(postgres_dsn: str):
    name = app_name()
    app = FastAPI(
        lifespan=pool_lifespan(
            postgres_dsn, min_size=2, max_size=4, server_settings={"application_name": name}
        )
    )

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {
            "same": request.state.pool is request.app.state.pool is get_pool(request),
            "size": get_pool(request).stats().size,
        }

    async with client_for(app) as client:
        pool = pool_of(app)
        assert not pool.closed
        response = await client.get("/state")
        assert response.json() == {"same": True, "size": 2}
        assert len(await backends(postgres_dsn, name)) == 2
    assert pool.closed
    assert pool.stats().size == 0

    async def gone() -> bool:
        return not await backends(postgres_dsn, name)

    await eventually(gone, "the pool's backends have exited after shutdown")


async def test_startup_fails_clearly_when_database_unreachable(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        proxy.refuse()
        app = FastAPI(lifespan=pool_lifespan(proxy.dsn, min_size=1, connect_timeout=2))
        with pytest.raises(asyncpool.DatabaseUnavailable) as info:
            async with LifespanManager(app):
                pytest.fail("the application must not start")
        assert "could not open its first connection at start-up" in str(info.value)
        assert "degraded_ok=True" in str(info.value)
        assert info.value.last_error is info.value.__cause__ is not None


async def test_degraded_startup_serves_503_then_recovers(postgres_dsn: str):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        proxy.refuse()
        app = FastAPI(
            lifespan=pool_lifespan(
                proxy.dsn,
                degraded_ok=True,
                min_size=2,
                max_size=3,
                reconnect_initial_delay=0.01,
                reconnect_max_delay=0.05,
            )
        )
        app.include_router(health_router(timeout=0.5))

        @app.get("/one")
        async def one(conn: ConnectionDep) -> int:
            return int(await conn.fetchval("SELECT 1"))

        async with client_for(app) as client:
            assert (await client.get("/livez")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "unavailable"
            busy = await client.get("/one")
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"

            proxy.resume()

            async def is_ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(is_ready, "readiness after the database came back")
            assert (await client.get("/one")).json() == 1
            pool = pool_of(app)

            async def refilled() -> bool:
                return pool.stats().idle == 2

            await eventually(refilled, "min_size connections opened in the background")
            assert pool.stats().min_size == 2


# ----------------------------------------------------------------------------- dependencies


async def test_one_connection_per_request_returned_after(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=4))
    seen: dict[str, Any] = {}

    async def audit(conn: ConnectionDep) -> int:
        return conn.get_server_pid()

    @app.get("/pid")
    async def pid(conn: ConnectionDep, audit_pid: Annotated[int, Depends(audit)]) -> int:
        seen["in_use"] = get_pool_stats(app).in_use
        seen["conn"] = conn
        assert audit_pid == conn.get_server_pid()  # one connection for the whole request
        return int(await conn.fetchval("SELECT pg_backend_pid()"))

    async with client_for(app) as client:
        before = get_pool_stats(app)
        first = (await client.get("/pid")).json()
        assert seen["in_use"] == 1
        assert seen["conn"].is_released
        second = (await client.get("/pid")).json()
        after = get_pool_stats(app)
    assert first == second  # the same server session was reused
    assert after.in_use == 0
    assert after.acquired_total - before.acquired_total == 2
    assert after.released_total - before.released_total == 2


def get_pool_stats(app: FastAPI) -> asyncpool.PoolStats:
    return pool_of(app).stats()


async def test_connection_returned_when_handler_raises(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.get("/boom")
    async def boom(conn: ConnectionDep) -> None:
        await conn.execute("SELECT 1")
        raise RuntimeError("handler failed")

    @app.get("/missing")
    async def missing(conn: ConnectionDep) -> None:
        await conn.execute("SELECT 1")
        raise HTTPException(status_code=404, detail="nope")

    async with client_for(app, raise_app_exceptions=False) as client:
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/missing")).status_code == 404
        stats = get_pool_stats(app)
    assert stats.in_use == 0
    assert stats.released_total == stats.acquired_total == 2
    assert stats.connections_opened_total == 1  # nothing was lost or replaced


async def test_connection_returned_when_request_cancelled(postgres_dsn: str):
    name = app_name()
    app = FastAPI(
        lifespan=pool_lifespan(
            postgres_dsn, min_size=1, max_size=2, server_settings={"application_name": name}
        )
    )
    started = asyncio.Event()

    @app.get("/slow")
    async def slow(conn: ConnectionDep) -> None:
        # Prepare the statement first, so that the cancellation lands in the query
        # itself (see SLEEP in the module docstring).
        await conn.fetchval(SLEEP, 0)
        started.set()
        await conn.fetchval(SLEEP, 30)

    async with client_for(app) as client:
        request = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(started.wait(), 5)
        await sleeping(postgres_dsn, name)
        assert get_pool_stats(app).in_use == 1
        request.cancel()  # ASGITransport runs the app in this task: the handler is cancelled
        with pytest.raises(asyncio.CancelledError):
            await request
        assert get_pool_stats(app).in_use == 0
        pool = pool_of(app)

        async def settled() -> bool:
            s = pool.stats()
            return s.idle == s.size == 1

        await eventually(settled, "the cancelled query's connection is reset and idle")
        rows = await backends(postgres_dsn, name)
        assert [r["state"] for r in rows] == ["idle"]  # pg_sleep was cancelled server-side
        assert pool.stats().connections_opened_total == 1


async def test_transaction_commits_or_rolls_back(postgres_dsn: str, table: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.post("/items/{item_id}")
    async def create(item_id: int, tx: TransactionDep, conn: ConnectionDep) -> bool:
        assert tx is conn  # the transaction is on the request's connection
        await tx.execute(f"INSERT INTO {table} (id) VALUES ($1)", item_id)
        if item_id < 0:
            raise HTTPException(status_code=409, detail="rejected after the insert")
        return bool(conn.is_in_transaction())

    async with client_for(app) as client:
        ok = await client.post("/items/1")
        assert ok.status_code == 200
        assert ok.json() is True
        rejected = await client.post("/items/-1")
        assert rejected.status_code == 409
        stats = get_pool_stats(app)
    assert stats.in_use == 0
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetch(f"SELECT id FROM {table} ORDER BY id") == [(1,)]
    finally:
        await conn.close()


async def test_commit_failure_is_an_error_response(postgres_dsn: str, table: str):
    """The commit runs before the response is sent: a failed commit is never a 200."""
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.post("/pair/{tag}")
    async def pair(tag: str, tx: TransactionDep) -> str:
        # The unique constraint is deferred: both inserts succeed, COMMIT fails.
        await tx.execute(f"INSERT INTO {table} (id, tag) VALUES (1, $1), (2, $1)", tag)
        return "inserted"

    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.post("/pair/x")
        stats = get_pool_stats(app)
    assert response.status_code == 500
    assert stats.in_use == 0
    assert await count_rows(postgres_dsn, table) == 0


async def test_failed_commit_is_never_a_success_status(postgres_dsn: str, table: str):
    """A 201 handler through TransactionDep whose deferred constraint fails at COMMIT.

    This is what FastAPI 0.118-0.120 answered with 201 (the dependency's exit, and so
    the COMMIT, ran after the response was sent); nox -s tests_fastapi_floor runs it on
    the lowest FastAPI the extra allows.
    """
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.post("/pair/{tag}", status_code=201)
    async def pair(tag: str, tx: TransactionDep) -> dict[str, str]:
        await tx.execute(f"INSERT INTO {table} (id, tag) VALUES (1, $1), (2, $1)", tag)
        return {"created": tag}

    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.post("/pair/x")
        stats = get_pool_stats(app)
    assert not 200 <= response.status_code < 300, response.status_code
    assert response.status_code == 500
    assert stats.in_use == 0
    assert await count_rows(postgres_dsn, table) == 0


async def test_a_transaction_ended_after_the_response_would_report_success(
    postgres_dsn: str, table: str
):
    """Why TransactionDep ends before the response: the same transaction dependency
    with FastAPI's default (request) scope commits only after the 201 is sent, so the
    client is told "created" and the row is not saved. (The test above would fail so.)
    """

    async def late_transaction(request: Request) -> AsyncIterator[asyncpool.PooledConnection]:
        async with get_pool(request).acquire() as conn, conn.transaction():
            yield conn

    late = Annotated[asyncpool.PooledConnection, Depends(late_transaction)]
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.post("/pair/{tag}", status_code=201)
    async def pair(tag: str, tx: late) -> dict[str, str]:
        await tx.execute(f"INSERT INTO {table} (id, tag) VALUES (1, $1), (2, $1)", tag)
        return {"created": tag}

    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.post("/pair/x")
    assert response.status_code == 201
    assert await count_rows(postgres_dsn, table) == 0


async def test_pool_dep_gives_the_pool_and_publishes_no_parameter(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))

    @app.get("/size")
    async def size(pool: PoolDep) -> int:
        return pool.stats().size

    @app.get("/old")
    async def old(pool: Annotated[asyncpool.Pool, Depends(get_pool)]) -> int:
        return pool.stats().size

    async with client_for(app) as client:
        assert (await client.get("/size")).json() == 1
        schema = (await client.get("/openapi.json")).json()
    assert "parameters" not in schema["paths"]["/size"]["get"]
    # What PoolDep replaces: get_pool's state_key shows up as a query parameter.
    old_params = schema["paths"]["/old"]["get"]["parameters"]
    assert [p["name"] for p in old_params] == ["state_key"]


async def test_lifespan_state_is_a_pool_state(postgres_dsn: str):
    lifespan = pool_lifespan(postgres_dsn, min_size=0, max_size=1)
    app = FastAPI()
    async with lifespan(app) as state:
        assert set(state) == set(PoolState.__annotations__) == {"pool"}
        assert isinstance(state["pool"], asyncpool.Pool)


async def test_overload_refusals_are_logged_in_aggregate(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """150 refused requests in a burst make one WARNING line, not 150; the next line
    (after the interval) counts the ones not logged.
    """
    refusals = fastapi_contrib._RefusalLog(interval=60.0)
    monkeypatch.setattr(fastapi_contrib, "_refusals", refusals)
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=1, max_waiting=0))

    @app.get("/one")
    async def one(conn: ConnectionDep) -> int:
        return int(await conn.fetchval("SELECT 1"))

    caplog.set_level(logging.WARNING, logger="asyncpool")
    async with client_for(app) as client:
        async with pool_of(app).acquire():
            statuses = [(await client.get("/one")).status_code for _ in range(150)]
            assert statuses == [503] * 150
            lines = [r for r in caplog.records if r.name == "asyncpool.contrib.fastapi"]
            assert len(lines) == 1
            assert "TooManyWaiters" in lines[0].getMessage()
            refusals._next_at = 0.0  # the interval has passed
            assert (await client.get("/one")).status_code == 503
        assert (await client.get("/one")).json() == 1
    lines = [r for r in caplog.records if r.name == "asyncpool.contrib.fastapi"]
    assert len(lines) == 2
    assert "149 more 503s in the last 60 s were not logged" in lines[1].getMessage()


async def test_borrow_failure_is_503(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=1))
    quick = connection_dependency(timeout=0.05)

    @app.get("/one")
    async def one(conn: Annotated[asyncpool.PooledConnection, Depends(quick)]) -> int:
        return int(await conn.fetchval("SELECT 1"))

    async with client_for(app) as client:
        pool = pool_of(app)
        async with pool.acquire():
            refused = await client.get("/one")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "busy or unavailable" in refused.json()["detail"]
        assert (await client.get("/one")).json() == 1
        assert pool.stats().timeouts_total == 1


async def test_request_scope_keeps_the_connection_while_streaming(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))
    StreamConn = Annotated[asyncpool.PooledConnection, Depends(get_connection, scope="request")]
    seen: list[int] = []

    @app.get("/count")
    async def count(conn: StreamConn) -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            for i in range(3):  # runs after the handler returned, while the response is sent
                seen.append(get_pool_stats(app).in_use)
                yield f"{await conn.fetchval('SELECT $1::int', i)}\n".encode()

        return StreamingResponse(rows())

    async with client_for(app) as client:
        assert (await client.get("/count")).text == "0\n1\n2\n"
        assert get_pool_stats(app).in_use == 0
    assert seen == [1, 1, 1]


# ----------------------------------------------------------------------------- health


async def test_health_endpoints_report_pool_state(postgres_dsn: str):
    app = FastAPI(lifespan=pool_lifespan(postgres_dsn, min_size=1, max_size=2))
    app.include_router(health_router(timeout=0.2))
    app.include_router(
        health_router(
            ready_path="/readyz-strict",
            live_path="/livez-strict",
            timeout=0.2,
            saturated_is_ready=False,
        )
    )

    async with client_for(app) as client:
        live = await client.get("/livez")
        assert live.status_code == 200
        assert live.json()["status"] == "alive"
        assert live.json()["pool"]["max_size"] == 2
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert (body["status"], body["ready"]) == ("ready", True)
        assert body["pool"]["in_use"] == 0
        assert body["pool"]["size"] >= 1
        assert set(body["pool"]["wait_time"]) == {"count", "mean", "max"}
        assert ready.headers["cache-control"] == "no-store"

        pool = pool_of(app)
        async with pool.acquire(), pool.acquire():  # every connection lent out
            saturated = await client.get("/readyz")
            strict = await client.get("/readyz-strict")
            still_alive = await client.get("/livez")
        assert saturated.status_code == 200
        assert saturated.json()["status"] == "saturated"
        assert saturated.json()["pool"]["in_use"] == 2
        assert strict.status_code == 503
        assert strict.json()["status"] == "saturated"
        assert still_alive.status_code == 200
    closed = await check_readiness(pool)
    assert (closed.ready, closed.status) == (False, "closed")
    assert (await check_readiness(None)).status == "no_pool"


# ----------------------------------------------------------------------------- uvicorn


@asynccontextmanager
async def uvicorn_on_loopback(app: Any) -> AsyncIterator[int]:
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


async def test_client_disconnect_mid_transaction_under_uvicorn(postgres_dsn: str, table: str):
    name = app_name()
    app = FastAPI(
        lifespan=pool_lifespan(
            postgres_dsn, min_size=1, max_size=2, server_settings={"application_name": name}
        )
    )
    app.add_middleware(CancelOnDisconnect)
    started, finished = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    @app.post("/slow")
    async def slow(tx: TransactionDep) -> str:
        try:
            await tx.execute(f"INSERT INTO {table} (id) VALUES (7)")
            await tx.fetchval(SLEEP, 0)
            started.set()
            await tx.fetchval(SLEEP, 30)
            outcome.append("completed")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            finished.set()
        return "done"

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    request_done = asyncio.Event()

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            if scope.get("path") == "/slow":
                request_done.set()  # the app returned: every dependency has exited

    async with uvicorn_on_loopback(asgi) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ping")).json() == "pong"  # started up
        pool = pool_of(app)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        await sleeping(postgres_dsn, name)
        assert pool.stats().in_use == 1
        writer.close()  # the client hangs up mid-request
        await writer.wait_closed()
        await asyncio.wait_for(request_done.wait(), 5)
        assert finished.is_set()
        assert outcome == ["cancelled"]
        assert pool.stats().in_use == 0

        async def settled() -> bool:
            s = pool.stats()
            return s.idle == s.size

        await eventually(settled, "the connection is back and idle")
        rows = await backends(postgres_dsn, name)
        assert len(rows) == pool.stats().size  # no connection leaked or left behind
        assert {r["state"] for r in rows} == {"idle"}  # no pg_sleep, no open transaction
        assert pool.stats().connections_opened_total == pool.stats().size
    assert await count_rows(postgres_dsn, table) == 0  # the insert was rolled back
