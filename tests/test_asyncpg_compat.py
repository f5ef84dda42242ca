"""asyncpg compatibility: code written for ``asyncpg.create_pool`` keeps working when
the one line that creates the pool says ``asyncpool.create_pool``.

Most tests run twice, on asyncpg's own pool and on asyncpool (the ``impl`` fixture),
so each one states a behaviour asyncpg users rely on *and* proves it holds for
asyncpg itself. Where asyncpool deliberately differs, the test says so and checks
both sides; where asyncpool falls short, the asyncpool run is a strict xfail naming
the gap. Tests of asyncpool's ways to get asyncpg's behaviour back close the file.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import asyncpool
from tests.conftest import settle
from tests.fakes import check_invariants

CREATE_POOL: dict[str, Callable[..., Any]] = {
    "asyncpg": asyncpg.create_pool,
    "asyncpool": asyncpool.create_pool,
}

MakePool = Callable[..., Awaitable[Any]]


class Error(Exception):
    pass


class MyRecord(asyncpg.Record):  # type: ignore[misc]
    pass


class MyConnection(asyncpg.Connection):  # type: ignore[misc]
    async def answer(self) -> int:
        return 42


class SlottedConnection(asyncpg.Connection):  # type: ignore[misc]
    __slots__ = ()

    async def answer(self) -> int:
        return 43

    @property
    def flavour(self) -> str:
        return "slotted"


@pytest.fixture(params=["asyncpg", "asyncpool"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_pool(postgres_dsn: str, impl: str) -> AsyncIterator[MakePool]:
    """``await make_pool(**kwargs)`` is ``await <impl>.create_pool(dsn, **kwargs)``;
    every pool is closed (terminated if that hangs) after the test."""
    pools: list[Any] = []

    async def make(**kwargs: Any) -> Any:
        pool = await CREATE_POOL[impl](postgres_dsn, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if isinstance(pool, asyncpool.Pool) and not pool.closed:
            check_invariants(pool)
        try:
            async with asyncio.timeout(5):
                await pool.close()
        except TimeoutError:
            pool.terminate()


def raw(con: Any) -> Any:
    """The asyncpg Connection under a pooled connection, for either pool."""
    if isinstance(con, asyncpool.PooledConnection):
        return con.raw_connection
    return con._con


def released_error(impl: str) -> type[Exception]:
    return asyncpg.InterfaceError if impl == "asyncpg" else asyncpool.ConnectionReleasedError


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for the pool's background work to reach a state."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def active_backend(dsn: str, query_prefix: str) -> int:
    """Wait until a backend runs a query starting with ``query_prefix``; return its pid."""
    admin = await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                query_prefix + "%",
            )
            if pid is not None:
                return int(pid)
            assert loop.time() < end, "query never started"
            await asyncio.sleep(0.01)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- the API


ASYNCPG_POOL_API = sorted(n for n in dir(asyncpg.pool.Pool) if not n.startswith("_"))


@pytest.mark.parametrize("name", ASYNCPG_POOL_API)
def test_every_asyncpg_pool_method_exists_with_its_signature(name: str) -> None:
    """Each public asyncpg.Pool method exists on asyncpool.Pool, async where asyncpg's
    is, with asyncpg's parameters (asyncpool may add optional ones after them)."""
    theirs = getattr(asyncpg.pool.Pool, name)
    ours = getattr(asyncpool.Pool, name)
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)
    want = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
    have = list(inspect.signature(ours).parameters.values())
    assert [(p.name, p.kind, p.default) for p in have[: len(want)]] == want
    assert all(p.default is not p.empty for p in have[len(want) :])
    assert ours.__doc__


def test_create_pool_accepts_asyncpgs_arguments() -> None:
    """Every argument of asyncpg.create_pool is a parameter of asyncpool's Pool (except
    those that go to asyncpg.connect: connection_class, record_class), and the defaults
    of pure asyncpg arguments do not clash."""
    from asyncpool._settings_types import PoolSettings

    theirs = inspect.signature(asyncpg.create_pool).parameters
    ours = set(PoolSettings.__optional_keys__)  # the keywords Pool() takes, typed
    missing = set(theirs) - ours - {"dsn", "connection_class", "record_class", "connect_kwargs"}
    assert not missing, missing
    # (asyncpg's connect_kwargs is a **kwargs: any asyncpg.connect keyword passes on.)


async def test_init_size_is_accepted(
    make_pool: MakePool, impl: str, request: pytest.FixtureRequest
) -> None:
    pool = await make_pool(init_size=2, min_size=1, max_size=3)
    assert pool.get_size() == 2
    assert pool.get_init_size() == 2  # (asyncpool gave min_size before)
    pool = await make_pool(init_size=3, min_size=1, max_size=3)
    assert (pool.get_init_size(), pool.get_size()) == (3, 3)


# ------------------------------------------------------------ acquire and release


async def test_acquire_release_pairing_under_contention(make_pool: MakePool) -> None:
    """``await acquire()`` + ``release()`` and ``async with acquire()`` both work with
    many more borrowers than connections, and every connection comes back."""
    pool = await make_pool(min_size=2, max_size=4)

    async def worker(i: int) -> int:
        if i % 2:
            con = await pool.acquire(timeout=10)
            try:
                return int(await con.fetchval("SELECT $1::int", i))
            finally:
                await pool.release(con)
        async with pool.acquire() as con:
            return int(await con.fetchval("SELECT $1::int", i))

    assert await asyncio.gather(*(worker(i) for i in range(50))) == list(range(50))
    assert pool.get_idle_size() == pool.get_size() <= 4


async def test_acquire_timeout_raises_asyncio_timeout_error(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire():
        with pytest.raises(asyncio.TimeoutError):
            await pool.acquire(timeout=0.05)
    async with pool.acquire(timeout=1) as con:
        assert await con.fetchval("SELECT 1") == 1


async def test_sizes(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=2, max_size=3)
    assert (pool.get_min_size(), pool.get_max_size()) == (2, 3)
    assert pool.get_size() == pool.get_idle_size() == 2
    async with pool.acquire():
        assert pool.get_idle_size() == 1
        async with pool.acquire():
            assert pool.get_idle_size() == 0
            async with pool.acquire():
                assert pool.get_size() == 3
                assert pool.get_idle_size() == 0
    assert pool.get_idle_size() == 3


async def test_is_closing(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    assert not pool.is_closing()
    await pool.close()
    assert pool.is_closing()
    pool = await make_pool(min_size=1, max_size=1)
    pool.terminate()
    assert pool.is_closing()


async def test_release_inside_transaction_rolls_back(make_pool: MakePool) -> None:
    """A connection released mid-transaction (started without ``async with``) is rolled
    back; the next borrower's ``transaction()`` is a real transaction, not a savepoint."""
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        tr = con.transaction()
        await tr.start()
        await con.execute("CREATE TABLE compat_never_committed (a int)")
        xid = await con.fetchval("SELECT txid_current()")
    async with pool.acquire() as con:
        assert not con.is_in_transaction()
        assert await con.fetchval("SELECT to_regclass('compat_never_committed')") is None
        async with con.transaction():
            assert await con.fetchval("SELECT txid_current()") != xid
            await con.execute("SELECT 1")
        assert not con.is_in_transaction()


async def test_release_resets_session_state(make_pool: MakePool) -> None:
    """Settings, LISTEN and advisory locks do not leak to the next borrower."""
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        pid = con.get_server_pid()
        await con.execute("SET search_path = pg_catalog")
        await con.execute("LISTEN compat_channel")
        await con.fetchval("SELECT pg_advisory_lock(4242)")
    async with pool.acquire() as con:
        assert con.get_server_pid() == pid
        assert await con.fetchval("SHOW search_path") == '"$user", public'
        assert await con.fetch("SELECT pg_listening_channels()") == []
        assert (
            await con.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()"
            )
            == 0
        )


async def test_released_connection_refuses_use(make_pool: MakePool, impl: str) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        pass
    with pytest.raises(released_error(impl), match="released"):
        con.execute("SELECT 1")
    with pytest.raises(released_error(impl)):
        await con.fetchval("SELECT 1")


async def test_prepared_statement_refuses_use_after_release(
    make_pool: MakePool, impl: str, request: pytest.FixtureRequest
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        stmt = await con.prepare("SELECT 1")
    with pytest.raises((asyncpg.InterfaceError, asyncpool.PoolError), match="released"):
        await stmt.fetchval()


async def test_release_twice_is_harmless(
    make_pool: MakePool, impl: str, request: pytest.FixtureRequest
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    con = await pool.acquire()
    await pool.release(con)
    await pool.release(con)


async def test_release_of_a_foreign_connection_is_refused(
    make_pool: MakePool, impl: str, request: pytest.FixtureRequest
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    other = await make_pool(min_size=1, max_size=1)
    async with other.acquire() as con:
        with pytest.raises(asyncpg.InterfaceError) as info:
            await pool.release(con)
        if impl == "asyncpool":
            assert isinstance(info.value, asyncpool.PoolUsageError)
            assert repr(pool.name) in str(info.value) and repr(other.name) in str(info.value)
            assert pool.name != other.name  # default names are unique
    async with pool.acquire() as con:
        with pytest.raises(asyncpg.InterfaceError):
            await pool.release(raw(con))


async def test_pooled_connection_is_an_asyncpg_connection(
    make_pool: MakePool, impl: str, request: pytest.FixtureRequest
) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        assert isinstance(con, asyncpg.Connection)


async def test_cancelled_waiter_loses_nothing(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    held = await pool.acquire()

    async def waiter() -> None:
        async with pool.acquire(timeout=100):
            pass

    task = asyncio.create_task(waiter())
    await settle()
    task.cancel()
    await pool.release(held)
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: pool.get_idle_size() == 1)
    async with pool.acquire(timeout=1) as con:
        assert await con.fetchval("SELECT 1") == 1


async def test_cancelled_query_returns_a_usable_connection(
    make_pool: MakePool, postgres_dsn: str
) -> None:
    """A borrower cancelled mid-query: the query is cancelled on the server and the
    connection comes back usable, without waiting for the query to finish."""
    pool = await make_pool(min_size=1, max_size=1)

    async def worker() -> None:
        async with pool.acquire() as con:
            await con.execute("SELECT pg_sleep(30) /* compat-cancel */")

    task = asyncio.create_task(worker())
    await active_backend(postgres_dsn, "SELECT pg_sleep(30) /* compat-cancel */")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        assert await pool.fetchval("SELECT 1") == 1


async def test_terminated_connection_is_replaced(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    con = await pool.acquire()
    pid = con.get_server_pid()
    con.terminate()  # aborted while borrowed
    await pool.release(con)
    con = await pool.acquire(timeout=5)
    assert con.get_server_pid() != pid
    pid = con.get_server_pid()
    underlying = raw(con)
    await pool.release(con)
    underlying.terminate()  # aborted while idle
    async with pool.acquire(timeout=5) as con:
        assert con.get_server_pid() != pid
        assert await con.fetchval("SELECT 1") == 1


# ------------------------------------------------------------ hooks


async def test_connect_init_setup_reset_hooks(make_pool: MakePool) -> None:
    """init runs once per new (raw) connection before any use, setup on every acquire
    with the very object acquire returns, reset on every release (raw connection),
    connect replaces asyncpg.connect."""
    connected: list[Any] = []
    inited: list[Any] = []
    setups: list[Any] = []
    resets: list[Any] = []

    async def connect(*args: Any, **kwargs: Any) -> Any:
        con = await asyncpg.connect(*args, **kwargs)
        connected.append(con)
        return con

    async def init(con: Any) -> None:
        assert con not in inited
        inited.append(con)

    async def setup(con: Any) -> None:
        assert raw(con) in inited
        setups.append(con)

    async def reset(con: Any) -> None:
        assert con in inited
        resets.append(con)

    pool = await make_pool(
        min_size=2, max_size=5, connect=connect, init=init, setup=setup, reset=reset
    )

    async def user() -> Any:
        async with pool.acquire() as con:
            assert raw(con) in inited
            await asyncio.sleep(0.01)
            return con

    borrowed = await asyncio.gather(*(user() for _ in range(10)))
    assert sorted(map(id, borrowed)) == sorted(map(id, setups))
    await eventually(lambda: len(resets) == 10)  # asyncpool resets after release returns
    assert connected == inited
    assert 2 <= len(inited) <= 5
    assert set(resets) <= set(inited)


async def test_failing_setup_raises_to_borrower_and_keeps_the_pool(
    make_pool: MakePool, impl: str
) -> None:
    """The borrower gets setup's error; the connection is not leaked. asyncpg closes it;
    asyncpool returns it (reset as needed) and lends it again."""
    failed_pid: list[int] = []

    async def setup(con: Any) -> None:
        if not failed_pid:
            failed_pid.append(con.get_server_pid())
            raise Error

    pool = await make_pool(min_size=1, max_size=1, setup=setup)
    with pytest.raises(Error):
        await pool.acquire()
    async with pool.acquire(timeout=5) as con:
        assert await con.fetchval("SELECT 1") == 1
        if impl == "asyncpg":
            assert con.get_server_pid() != failed_pid[0]
        else:
            assert con.get_server_pid() == failed_pid[0]


async def test_failing_init_does_not_break_the_pool(make_pool: MakePool, impl: str) -> None:
    """asyncpg raises init's error to the borrower who triggered the connect; asyncpool
    retries the connect in the background and the borrower never sees it."""
    calls = 0

    async def init(con: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Error

    pool = await make_pool(min_size=0, max_size=1, init=init)
    if impl == "asyncpg":
        with pytest.raises(Error):
            await pool.acquire()
    async with pool.acquire(timeout=5) as con:
        assert await con.fetchval("SELECT 1") == 1
    assert calls == 2


async def test_init_failing_at_creation_fails_create_pool(make_pool: MakePool) -> None:
    async def init(con: Any) -> None:
        raise Error

    with pytest.raises(Error):
        await make_pool(min_size=1, max_size=1, init=init)


# ------------------------------------------------------------ close


async def test_close_waits_for_release(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    acquired = asyncio.Event()
    proceed = asyncio.Event()

    async def worker() -> None:
        async with pool.acquire() as con, con.transaction():
            acquired.set()
            await proceed.wait()
            await con.execute("SELECT 1")

    task = asyncio.create_task(worker())
    await acquired.wait()
    closing = asyncio.create_task(pool.close())
    await settle()
    assert not closing.done()
    assert pool.is_closing()
    proceed.set()
    await closing
    assert task.done()
    task.result()


async def test_close_cut_short_by_wait_for_terminates(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1)
    con = await pool.acquire()
    underlying = raw(con)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pool.close(), timeout=0.1)
    assert pool.is_closing()
    assert underlying.is_closed()
    await pool.release(con)


# ------------------------------------------------------------ expiry and connect args


async def test_expire_connections(make_pool: MakePool) -> None:
    """Busy connections are replaced when released, idle ones before they are lent."""
    pool = await make_pool(min_size=2, max_size=2)
    busy = await pool.acquire()
    async with pool.acquire() as con:
        old = {busy.get_server_pid(), con.get_server_pid()}
    await pool.expire_connections()
    await pool.release(busy)
    async with pool.acquire() as a, pool.acquire() as b:
        assert {a.get_server_pid(), b.get_server_pid()}.isdisjoint(old)


async def test_set_connect_args(make_pool: MakePool, postgres_dsn: str) -> None:
    """New arguments apply to new connections, replacing the old connect arguments but
    keeping record_class; expire_connections makes them apply at once."""
    pool = await make_pool(
        min_size=1,
        max_size=1,
        record_class=MyRecord,
        server_settings={"application_name": "compat-before"},
    )
    con = await pool.acquire()
    pool.set_connect_args(postgres_dsn, server_settings={"application_name": "compat-1"})
    await pool.expire_connections()
    await pool.release(con)
    async with pool.acquire() as con:
        assert con.get_settings().application_name == "compat-1"
        assert type(await con.fetchrow("SELECT 1")) is MyRecord
    pool.set_connect_args(postgres_dsn)
    await pool.expire_connections()
    async with pool.acquire() as con:
        assert con.get_settings().application_name != "compat-1"


# ------------------------------------------------------------ the shortcuts


async def test_query_shortcuts(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=2, max_size=4)
    table = f"compat_{uuid.uuid4().hex[:8]}"
    try:
        assert await pool.execute(f"CREATE TABLE {table} (a text, b int)") == "CREATE TABLE"
        assert await pool.execute("SELECT generate_series(0, $1)", 3) == "SELECT 4"
        await asyncio.gather(
            *(
                pool.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [("x", i), ("y", i)])
                for i in range(10)
            )
        )
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 20
        assert await pool.fetchval("SELECT 1, 2", column=1) == 2
        assert await pool.fetch("SELECT $1::int AS n", 7) == [(7,)]
        row = await pool.fetchrow("SELECT 1 AS a", record_class=MyRecord)
        assert type(row) is MyRecord
        assert row["a"] == 1
        assert await pool.fetchrow("SELECT 1 WHERE false") is None
        rows = await pool.fetchmany("SELECT $1::int * 2", [(1,), (2,)])
        assert [r[0] for r in rows] == [2, 4]
        with pytest.raises(asyncio.TimeoutError):
            await pool.fetchval("SELECT pg_sleep(10)", timeout=0.1)
        assert await asyncio.gather(
            *(pool.fetchval("SELECT $1::int", i) for i in range(20))
        ) == list(range(20))
        # asyncpool resets the timed-out query's connection after release returns
        await eventually(lambda: pool.get_idle_size() == pool.get_size())
    finally:
        await pool.execute(f"DROP TABLE IF EXISTS {table}")


async def test_copy_shortcuts(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=2)
    table = f"compat_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {table} (a int, b text)")
    try:
        status = await pool.copy_records_to_table(table, records=[(1, "x"), (2, "y")])
        assert status == "COPY 2"
        status = await pool.copy_to_table(table, source=io.BytesIO(b"3,z\n"), format="csv")
        assert status == "COPY 1"
        out = io.BytesIO()
        assert await pool.copy_from_table(table, output=out, format="csv") == "COPY 3"
        assert sorted(out.getvalue().splitlines()) == [b"1,x", b"2,y", b"3,z"]
        out = io.BytesIO()
        status = await pool.copy_from_query(
            f"SELECT a FROM {table} WHERE a > $1", 1, output=out, format="csv"
        )
        assert status == "COPY 2"
        assert sorted(out.getvalue().splitlines()) == [b"2", b"3"]
    finally:
        await pool.execute(f"DROP TABLE {table}")


# ------------------------------------------------------------ connect arguments


async def test_record_class(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1, record_class=MyRecord)
    assert type(await pool.fetchrow("SELECT 1 AS a")) is MyRecord
    async with pool.acquire() as con:
        assert all(type(r) is MyRecord for r in await con.fetch("SELECT 1 UNION SELECT 2"))
        assert type(await con.fetchrow("SELECT 1", record_class=asyncpg.Record)) is asyncpg.Record


async def test_connection_class_and_connect_kwargs(make_pool: MakePool) -> None:
    pool = await make_pool(
        min_size=1,
        max_size=1,
        connection_class=MyConnection,
        statement_cache_size=3,
        command_timeout=7,
    )
    async with pool.acquire() as con:
        assert type(raw(con)) is MyConnection
        assert await con.answer() == 42  # a method only the subclass has
        assert raw(con)._config.statement_cache_size == 3
        assert raw(con)._config.command_timeout == 7


async def test_connection_class_names_are_forwarded(make_pool: MakePool, impl: str) -> None:
    """Methods and properties a connection_class adds, and attributes its instances
    carry, are reachable through the pooled connection (as asyncpg's pool forwards
    them); after release asyncpool refuses them like every other method."""

    async def init(con: Any) -> None:
        con.tenant = "acme"  # MyConnection instances have a __dict__

    pool = await make_pool(min_size=1, max_size=1, connection_class=MyConnection, init=init)
    async with pool.acquire() as con:
        assert await con.answer() == 42 and con.tenant == "acme"
    # (asyncpg's pool raises AttributeError here: its proxy drops the connection)
    with pytest.raises(AttributeError if impl == "asyncpg" else released_error(impl)):
        con.answer()
    slotted = await make_pool(min_size=1, max_size=1, connection_class=SlottedConnection)
    async with slotted.acquire() as con:
        assert await con.answer() == 43 and con.flavour == "slotted"
        if impl == "asyncpool":
            # Forwarded by properties: no __getattr__, so attribute access stays fast.
            assert not hasattr(type(con), "__getattr__")
            assert isinstance(con, asyncpool.PooledConnection)
    with pytest.raises(AttributeError if impl == "asyncpg" else released_error(impl)):
        con.answer()


async def test_plain_connections_keep_fast_attribute_access(postgres_dsn: str) -> None:
    """The wrapper of a plain asyncpg connection has no __getattr__, and the pool keeps
    its attributes in slots: otherwise CPython looks up their attributes the slow way
    (measured: ~3k CPU instructions more per borrow)."""
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as con:
            assert type(con) is asyncpool.PooledConnection
            assert not hasattr(type(con), "__getattr__")
            assert type(con).__getattribute__ is object.__getattribute__
        assert not hasattr(pool, "__dict__")


async def test_connection_class_overrides_get_the_callers_arguments(
    make_pool: MakePool,
) -> None:
    class PlusOne(asyncpg.Connection):  # type: ignore[misc]
        async def fetchval(self, query: str) -> Any:  # a narrower signature
            return await super().fetchval(query) + 1

    pool = await make_pool(min_size=1, max_size=1, connection_class=PlusOne)
    async with pool.acquire() as con:
        assert await con.fetchval("SELECT 1") == 2
        # Keywords the caller gives are passed on (and refused by the narrower method).
        with pytest.raises(TypeError):
            await con.fetchval("SELECT 1", timeout=5)


async def test_max_queries(make_pool: MakePool) -> None:
    """A connection is replaced once it has run max_queries statements."""
    pool = await make_pool(min_size=1, max_size=1, max_queries=3)
    pids = [await pool.fetchval("SELECT pg_backend_pid()") for _ in range(7)]
    assert len(set(pids)) >= 3
    assert all(pids.count(pid) <= 3 for pid in pids)


async def test_max_inactive_connection_lifetime(make_pool: MakePool) -> None:
    """Idle connections above min_size are closed after the lifetime (asyncpg >= 0.32
    keeps min_size too); a long query is not cut; 0 turns the limit off."""
    pool = await make_pool(min_size=1, max_size=3, max_inactive_connection_lifetime=0.2)
    async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
        pids = {a.get_server_pid(), b.get_server_pid(), c.get_server_pid()}
        await a.execute("SELECT pg_sleep(0.3)")
    assert pool.get_size() == 3
    await eventually(lambda: pool.get_size() == 1)
    async with pool.acquire() as con:
        assert con.get_server_pid() in pids
    pool = await make_pool(min_size=0, max_size=1, max_inactive_connection_lifetime=0)
    if isinstance(pool, asyncpool.Pool):
        assert pool.config.max_idle is None
    async with pool.acquire() as con:
        pid = con.get_server_pid()
    await asyncio.sleep(0.05)
    async with pool.acquire() as con:
        assert con.get_server_pid() == pid


async def test_loop_argument_is_the_running_loop(make_pool: MakePool) -> None:
    pool = await make_pool(min_size=1, max_size=1, loop=asyncio.get_running_loop())
    assert await pool.fetchval("SELECT 1") == 1


async def test_loop_argument_of_another_loop_is_refused(postgres_dsn: str) -> None:
    other = asyncio.new_event_loop()
    try:
        with pytest.raises(asyncpool.PoolUsageError, match="loop"):
            await asyncpool.create_pool(postgres_dsn, loop=other)
    finally:
        other.close()


async def test_a_connect_callback_that_returns_no_connection_fails_create_pool(
    make_pool: MakePool,
) -> None:
    async def connect(*args: Any, **kwargs: Any) -> Any:
        return 42

    with pytest.raises(asyncpg.InterfaceError, match="int"):
        await make_pool(min_size=1, max_size=1, connect=connect)


async def test_release_inside_a_begun_transaction_is_reported_to_the_loop(
    make_pool: MakePool, impl: str
) -> None:
    """asyncpg tells the event loop's exception handler (users find such bugs by it);
    a transaction that `async with con.transaction()` manages is not reported."""
    reported: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        pool = await make_pool(min_size=1, max_size=1)
        con = await pool.acquire()
        await con.execute("BEGIN")
        await pool.release(con)
        async with pool.acquire() as con:
            assert not con.is_in_transaction()  # rolled back
            async with con.transaction():
                await con.execute("SELECT 1")
        await settle()
    finally:
        loop.set_exception_handler(previous)
    assert len(reported) == 1, reported
    assert "Resetting connection with an active transaction" in reported[0]


async def test_a_connection_the_server_closed_leaves_get_size_at_once(
    make_pool: MakePool, postgres_dsn: str
) -> None:
    pool = await make_pool(min_size=0, max_size=2)
    async with pool.acquire() as a, pool.acquire() as b:
        victim = a.get_server_pid()
        other = b.get_server_pid()
    assert pool.get_size() == 2
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", victim)
    finally:
        await admin.close()
    await eventually(lambda: pool.get_size() == 1, timeout=0.5)  # not a maintenance pass
    async with pool.acquire() as con:
        assert con.get_server_pid() == other


async def test_idle_connections_expire_on_time(make_pool: MakePool) -> None:
    """max_inactive_connection_lifetime=0.1: closed within 10 % or 50 ms of it, not at
    the next once-a-second maintenance pass."""
    pool = await make_pool(min_size=0, max_size=2, max_inactive_connection_lifetime=0.1)
    loop = asyncio.get_running_loop()
    async with pool.acquire():
        pass
    released = loop.time()
    assert pool.get_size() == 1
    await eventually(lambda: pool.get_size() == 0, timeout=2)
    assert loop.time() - released == pytest.approx(0.1, abs=0.05)


async def test_termination_listeners_added_through_a_lease(make_pool: MakePool, impl: str) -> None:
    """A documented difference: asyncpg keeps a borrower's termination listener on the
    connection, so it fires later for whoever holds the connection then; asyncpool
    removes it when the lease ends (the listener belongs to the borrower's work)."""
    fired: list[str] = []
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as con:
        con.add_termination_listener(lambda _con: fired.append("closed"))
    async with pool.acquire() as con:
        raw(con).terminate()  # the server connection ends under the next borrower
    await settle()
    assert fired == (["closed"] if impl == "asyncpg" else [])


# ------------------------------------------------------------ asyncpool's differences


async def test_asyncpool_errors_are_what_asyncpg_code_catches(postgres_dsn: str) -> None:
    """``except asyncio.TimeoutError`` still catches an acquire timeout."""
    assert issubclass(asyncpool.PoolTimeout, asyncio.TimeoutError)
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire():
            with pytest.raises(asyncpool.PoolTimeout, match="max_size=1"):
                await pool.acquire(timeout=0.01)
    with pytest.raises(asyncpool.PoolClosed):
        await pool.acquire()


async def test_acquire_timeout_inf_waits_like_asyncpg(postgres_dsn: str) -> None:
    """asyncpg waits forever by default; ``acquire_timeout=math.inf`` does too (the
    default deadline is 30 s, and ``acquire(timeout=None)`` means that default)."""
    async with asyncpool.create_pool(
        postgres_dsn, min_size=1, max_size=1, acquire_timeout=math.inf
    ) as pool:
        held = await pool.acquire()
        waiter = asyncio.create_task(pool.fetchval("SELECT 2"))
        await settle()
        assert not waiter.done()
        assert pool.stats().waiting == 1
        await pool.release(held)
        assert await waiter == 2


async def test_close_timeout_inf_waits_like_asyncpg(postgres_dsn: str) -> None:
    pool = await asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1, close_timeout=math.inf)
    con = await pool.acquire()
    closing = asyncio.create_task(pool.close())
    await settle()
    assert not closing.done()
    assert not con.is_closed()
    await pool.release(con)
    await closing


async def test_reset_full_resets_even_untracked_state(postgres_dsn: str) -> None:
    """ "auto" sees only what goes through the pooled connection; ``reset="full"``
    resets on every release like asyncpg (and also drops temp tables)."""
    for mode, reset_seen in (("auto", False), ("full", True)):
        async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1, reset=mode) as pool:
            async with pool.acquire() as con:
                await con.raw_connection.execute("SET application_name = 'compat-raw'")
            async with pool.acquire() as con:
                name = await con.fetchval("SHOW application_name")
                assert (name != "compat-raw") is reset_seen, mode
                await con.execute("CREATE TEMP TABLE compat_tmp (a int)")
            async with pool.acquire() as con:
                assert await con.fetchval("SELECT to_regclass('pg_temp.compat_tmp')") is None


async def test_setup_that_closes_on_failure_gets_asyncpgs_behaviour(postgres_dsn: str) -> None:
    """asyncpool reuses a connection whose setup failed; close it in setup to drop it."""
    failed: list[int] = []

    async def setup(con: asyncpool.PooledConnection) -> None:
        if not failed:
            failed.append(con.get_server_pid())
            await con.close()
            raise Error

    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1, setup=setup) as pool:
        with pytest.raises(Error):
            await pool.acquire()
        async with pool.acquire(timeout=5) as con:
            assert con.get_server_pid() != failed[0]


async def test_persistent_init_failure_is_named_in_the_timeout(postgres_dsn: str) -> None:
    """asyncpg raises init's error to each borrower; asyncpool's borrower gets a
    PoolTimeout whose message names it."""

    async def init(con: Any) -> None:
        raise Error("init says no")

    async with asyncpool.create_pool(postgres_dsn, min_size=0, max_size=1, init=init) as pool:
        with pytest.raises(asyncpool.PoolTimeout, match="init says no"):
            await pool.acquire(timeout=0.3)


async def test_release_returns_before_the_reset(postgres_dsn: str) -> None:
    """asyncpg's release awaits the reset query; asyncpool's returns at once and resets
    in the background (the connection is lent again only after its reset)."""
    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        con = await pool.acquire()
        await con.execute("SET application_name = 'compat-dirty'")
        await pool.release(con)
        assert pool.stats().returning == 1
        async with pool.acquire(timeout=5) as con:
            assert await con.fetchval("SHOW application_name") != "compat-dirty"


async def test_callable_reset_drops_listener_callbacks(postgres_dsn: str) -> None:
    async def reset(con: Any) -> None:
        await con.execute("UNLISTEN *")

    async with asyncpool.create_pool(postgres_dsn, min_size=1, max_size=1, reset=reset) as pool:
        async with pool.acquire() as con:
            await con.add_listener("compat_channel", lambda *args: None)
        async with pool.acquire(timeout=5) as con:
            assert not con.raw_connection._listeners
