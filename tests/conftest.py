from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import asyncpool
from tests.fakes import FakeServer, check_invariants


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
