"""SQLAlchemy's asyncio ORM on connections lent by asyncpool (asyncpool.contrib.sqlalchemy).

Checks that the ORM works, that every connection SQLAlchemy uses comes from and goes back
to the pool (the pool's statistics), that transactions roll back on errors, and that an
invalidated connection is replaced by the pool.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import ForeignKey, String, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.pool import NullPool

import asyncpool

sqlalchemy_orm: Any = importlib.import_module("asyncpool.contrib.sqlalchemy")


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "sa_interop_teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    members: Mapped[list[Member]] = relationship(back_populates="team", lazy="selectin")


class Member(Base):
    __tablename__ = "sa_interop_members"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    profile: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    team_id: Mapped[int] = mapped_column(ForeignKey("sa_interop_teams.id"))
    team: Mapped[Team] = relationship(back_populates="members")


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpool.Pool]:
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        yield pool


@pytest.fixture
async def engine(pool: asyncpool.Pool) -> AsyncIterator[AsyncEngine]:
    engine = sqlalchemy_orm.engine_for(pool)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await engine.dispose()


async def test_orm_runs_on_pooled_connections(pool: asyncpool.Pool, engine: AsyncEngine):
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        session.add(
            Team(
                name="core",
                members=[
                    Member(name="ada", profile={"langs": ["python", "sql"]}),
                    Member(name="bob", profile={"langs": []}),
                ],
            )
        )
    async with sessions() as session:
        team = (await session.execute(select(Team).where(Team.name == "core"))).scalar_one()
        assert sorted(m.name for m in team.members) == ["ada", "bob"]
        ada = next(m for m in team.members if m.name == "ada")
        assert ada.profile == {"langs": ["python", "sql"]}  # jsonb through SQLAlchemy's codec
        assert await session.scalar(select(func.count(Member.id))) == 2
        assert pool.stats().in_use == 1  # the session holds one pooled connection
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.acquired_total == stats.released_total >= 3
    # SQLAlchemy opened no connection of its own: every one came from the pool.
    assert stats.connections_opened_total == stats.size <= 2


async def test_errors_roll_back_and_connections_come_back(
    pool: asyncpool.Pool, engine: AsyncEngine
):
    sessions = async_sessionmaker(engine)
    async with sessions() as session, session.begin():
        session.add(Team(id=1, name="a"))

    async def insert_then_fail() -> None:
        async with sessions() as session, session.begin():
            session.add(Team(id=2, name="b"))
            await session.flush()  # the INSERT ran inside the transaction
            raise RuntimeError("handler failed")

    async def violate_unique() -> None:
        async with sessions() as session, session.begin():
            session.add(Team(id=3, name="a"))  # unique violation at flush

    with pytest.raises(RuntimeError, match="handler failed"):
        await insert_then_fail()
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await violate_unique()

    assert pool.stats().in_use == 0
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()  # nothing left open on the pooled connection
        assert await conn.fetch("SELECT id FROM sa_interop_teams ORDER BY id") == [(1,)]


async def test_concurrent_sessions_share_the_pool_limit(pool: asyncpool.Pool, engine: AsyncEngine):
    sessions = async_sessionmaker(engine)
    peak = 0

    async def work(i: int) -> int:
        nonlocal peak
        async with sessions() as session:
            query = text("SELECT CAST(:i AS int) FROM pg_sleep(0.05)")
            value = await session.scalar(query, {"i": i})
            peak = max(peak, pool.stats().in_use)
            return int(value)

    assert await asyncio.gather(*(work(i) for i in range(6))) == list(range(6))
    stats = pool.stats()
    assert peak == 2  # max_size bounds SQLAlchemy too; the other sessions waited
    assert stats.wait_time.max > 0
    assert stats.in_use == 0
    assert stats.connections_opened_total <= 2


async def test_codecs_installed_once_per_server_connection(
    pool: asyncpool.Pool, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    installed: list[str] = []
    original = asyncpool.PooledConnection.set_type_codec

    def spy(self: asyncpool.PooledConnection, typename: str, **kwargs: Any) -> Any:
        installed.append(typename)
        return original(self, typename, **kwargs)

    monkeypatch.setattr(asyncpool.PooledConnection, "set_type_codec", spy)
    pool.resize(max_size=1)
    pool.expire()  # start from a new server connection
    every_time = create_async_engine(
        "postgresql+asyncpg://",
        poolclass=NullPool,
        async_creator=sqlalchemy_orm.AsyncpoolCreator(pool, install_codecs_once=False),
    )
    for eng in (engine, engine, engine, every_time, every_time):
        async with async_sessionmaker(eng)() as session:
            assert await session.scalar(text("SELECT '{\"a\": 1}'::jsonb")) == {"a": 1}
    await every_time.dispose()
    assert pool.stats().size == 1
    # Once for the three sessions of the engine, then at every checkout without the memo.
    assert installed == ["json", "jsonb"] * 3


async def terminate_backend(dsn: str, pid: int) -> None:
    """Kill a server session and wait until it is gone."""
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            assert loop.time() < deadline, "the backend did not exit"
            await asyncio.sleep(0.02)
    finally:
        await admin.close()


async def test_dead_idle_connection_never_reaches_sqlalchemy(
    postgres_dsn: str, pool: asyncpool.Pool, engine: AsyncEngine
):
    sessions = async_sessionmaker(engine)
    closed = asyncio.Event()
    async with sessions() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        fairy = await (await session.connection()).get_raw_connection()
        asyncpg_conn = fairy.driver_connection.raw_connection  # adapter -> pooled -> asyncpg
        asyncpg_conn.add_termination_listener(lambda _conn: closed.set())
    await terminate_backend(postgres_dsn, pid)
    await asyncio.wait_for(closed.wait(), 5)  # the client has seen the server hang up
    async with sessions() as session:  # the pool sees the closed connection, lends another
        assert await session.scalar(text("SELECT pg_backend_pid()")) != pid
    assert pool.stats().connections_lost_total == 1


async def test_connection_lost_in_session_is_invalidated_and_replaced(
    postgres_dsn: str, pool: asyncpool.Pool, engine: AsyncEngine
):
    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        await terminate_backend(postgres_dsn, pid)
        with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
            await session.scalar(text("SELECT 1"))
        assert info.value.connection_invalidated
    assert pool.stats().in_use == 0  # SQLAlchemy's close/terminate gave the slot back
    async with sessions() as session:
        assert await session.scalar(text("SELECT pg_backend_pid()")) != pid
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.connections_lost_total == 1
    assert stats.acquired_total == stats.released_total
