from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import asyncpool
from asyncpool.testing import PostgresInstance, PostgresServer
from tests.fakes import FakeServer, check_invariants

# The plugin is opt-in (installing asyncpool loads nothing into other projects' runs).
pytest_plugins = ("asyncpool.testing.pytest_plugin",)


# The suite's own short names for the plugin's session server.
@pytest.fixture(scope="session")
def postgres_server(asyncpool_postgres: PostgresInstance) -> PostgresInstance:
    return asyncpool_postgres


@pytest.fixture(scope="session")
def postgres_dsn(asyncpool_postgres_dsn: str) -> str:
    return asyncpool_postgres_dsn


@pytest.fixture
def controllable_postgres(asyncpool_controllable_postgres: PostgresServer) -> PostgresServer:
    return asyncpool_controllable_postgres


@pytest.fixture
def fake_server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def make_fake_pool(fake_server: FakeServer) -> Callable[..., Any]:
    """Build (not open) a pool over the fake server; closed after the test."""
    pools: list[asyncpool.Pool] = []

    def make(**kwargs: Any) -> asyncpool.Pool:
        kwargs.setdefault("min_size", 0)
        kwargs.setdefault("max_size", 2)
        kwargs.setdefault("connect", fake_server.connect)
        kwargs.setdefault("budget_check", "off")  # (a fake server has no budget to check)
        pool = asyncpool.Pool(**kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()


@pytest.fixture
async def pg_pool(postgres_dsn: str) -> AsyncIterator[asyncpool.Pool]:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        yield pool
        check_invariants(pool)


async def settle(rounds: int = 5) -> None:
    """Let callbacks and woken tasks run (a few loop iterations, no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def pytest_configure(config: Any) -> None:
    if os.environ.get("ASYNCPOOL_TEST_LOOP") == "debug":
        config.option.asyncio_debug = True  # pytest-asyncio's --asyncio-debug


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    return loop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Run the suite on the loop named by ASYNCPOOL_TEST_LOOP (asyncio, uvloop, debug, eager)."""
    kind = os.environ.get("ASYNCPOOL_TEST_LOOP", "asyncio")
    if kind == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    if kind == "debug":
        return {"debug": asyncio.new_event_loop}  # debug mode: see pytest_configure
    if kind == "eager":
        if not hasattr(asyncio, "eager_task_factory"):
            raise pytest.UsageError("ASYNCPOOL_TEST_LOOP=eager needs Python 3.12+")
        return {"eager": _eager_loop}
    if kind != "asyncio":
        raise pytest.UsageError(f"unknown ASYNCPOOL_TEST_LOOP={kind!r}")
    return {"asyncio": asyncio.new_event_loop}
