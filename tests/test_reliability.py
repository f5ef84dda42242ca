"""Bad input is refused where it is given, with the parameter's name (fake server)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

import asyncpool
from tests.conftest import settle
from tests.fakes import FakeServer, check_invariants

BAD_TIMEOUTS = [
    (float("nan"), ValueError, "NaN"),
    (-1, ValueError, ">= 0"),
    (-0.001, ValueError, ">= 0"),
    (True, TypeError, "bool"),
    ("1", TypeError, "str"),
    ([1], TypeError, "list"),
]


@pytest.mark.parametrize(("timeout", "error", "words"), BAD_TIMEOUTS)
@pytest.mark.parametrize("idle", [True, False], ids=["idle", "queued"])
async def test_acquire_timeout_is_validated_on_every_path(
    make_fake_pool: Any, timeout: Any, error: type[Exception], words: str, idle: bool
) -> None:
    pool = make_fake_pool(min_size=1, max_size=1)
    await pool.open()
    held = None if idle else await pool.acquire()
    with pytest.raises(error, match="timeout") as info:
        async with pool.acquire(timeout=timeout):
            pass
    assert words in str(info.value)
    with pytest.raises(error, match="timeout"):
        await pool.acquire(timeout=timeout)
    assert pool.stats().waiting == 0
    if held is not None:
        await pool.release(held)
    check_invariants(pool)


async def test_infinite_timeout_means_no_deadline(make_fake_pool: Any) -> None:
    pool = make_fake_pool(min_size=1, max_size=1, acquire_timeout=0.05)
    await pool.open()
    async with pool.acquire(timeout=math.inf):  # idle: lent at once
        pass
    held = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=float("inf")))
    await asyncio.sleep(0.15)  # three times the pool's acquire_timeout
    assert not waiter.done()
    assert pool.stats().waiting == 1
    await pool.release(held)
    conn = await asyncio.wait_for(waiter, 1)
    await pool.release(conn)
    assert pool.stats().timeouts_total == 0
    check_invariants(pool)


async def test_a_waiter_without_deadline_never_delays_another_deadline(
    make_fake_pool: Any,
) -> None:
    """The first waiter has no deadline; those behind it with short ones still time
    out on time, in the deque (pool default) and in the heap (own timeouts).
    """
    pool = make_fake_pool(min_size=1, max_size=1, acquire_timeout=0.1)
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    forever = asyncio.ensure_future(pool.acquire(timeout=math.inf))
    await settle()

    async def timed(timeout: float | None) -> float:
        started = loop.time()
        with pytest.raises(asyncpool.PoolTimeout):
            await pool.acquire(timeout=timeout)
        return loop.time() - started

    waited = await asyncio.gather(timed(None), timed(0.05), timed(0.15))
    assert waited[0] == pytest.approx(0.1, abs=0.05)
    assert waited[1] == pytest.approx(0.05, abs=0.05)
    assert waited[2] == pytest.approx(0.15, abs=0.05)
    assert not forever.done()
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)
    await pool.release(held)
    check_invariants(pool)


DURATIONS = [
    "acquire_timeout",
    "reset_timeout",
    "ping_timeout",
    "connect_timeout",
    "close_timeout",
    "reconnect_initial_delay",
    "reconnect_max_delay",
    "maintenance_interval",
    "max_lifetime",
    "max_idle",
    "ping_after_idle",
    "keepalive_interval",
    "leak_timeout",
    "max_inactive_connection_lifetime",
]
FINITE_ONLY = {
    "reset_timeout",
    "ping_timeout",
    "connect_timeout",
    "reconnect_initial_delay",
    "reconnect_max_delay",
    "maintenance_interval",
}


@pytest.mark.parametrize("name", DURATIONS)
def test_every_duration_setting_refuses_nan_and_wrong_types(name: str) -> None:
    named = "max_idle" if name == "max_inactive_connection_lifetime" else name
    with pytest.raises(ValueError, match=named):
        asyncpool.Pool("postgresql://h/db", **{name: float("nan")})
    with pytest.raises(TypeError, match=named):
        asyncpool.Pool("postgresql://h/db", **{name: "5"})
    with pytest.raises(TypeError):
        asyncpool.Pool("postgresql://h/db", **{name: True})
    if name in FINITE_ONLY:
        with pytest.raises(ValueError, match="finite"):
            asyncpool.Pool("postgresql://h/db", **{name: float("inf")})
    else:
        asyncpool.Pool("postgresql://h/db", **{name: float("inf")})  # inf: no limit


async def test_nan_settings_never_reach_the_event_loop(make_fake_pool: Any) -> None:
    """Before the fix, maintenance_interval=nan put a NaN timer into the loop's heap and
    the application's own sleeps stopped firing."""
    with pytest.raises(ValueError, match="maintenance_interval"):
        make_fake_pool(maintenance_interval=float("nan"))
    pool = make_fake_pool(min_size=1)
    await pool.open()
    with pytest.raises(ValueError, match="timeout"):
        await pool.close(timeout=float("nan"))
    held = await pool.acquire()
    with pytest.raises(ValueError, match="timeout"):
        await pool.release(held, timeout=float("nan"))
    await pool.release(held)
    await asyncio.wait_for(asyncio.sleep(0.01), 1)  # the loop's timers still fire
    await pool.close()


# ------------------------------------------------------------ mistyped settings


def test_a_mistyped_setting_is_refused_with_the_closest_name() -> None:
    with pytest.raises(TypeError, match=r"'max_sise'.*did you mean 'max_size'\?"):
        asyncpool.Pool("postgresql://h/db", max_sise=3)
    with pytest.raises(TypeError, match=r"'pasword'.*did you mean 'password'\?"):
        asyncpool.create_pool("postgresql://h/db", pasword="x")
    with pytest.raises(TypeError, match=r"'acquire_timout'.*'acquire_timeout'"):
        asyncpool.Pool(acquire_timout=1)
    with pytest.raises(TypeError, match="'zzzz'") as info:
        asyncpool.Pool(zzzz=1)
    assert "did you mean" not in str(info.value)


def test_asyncpg_connect_parameters_pass() -> None:
    pool = asyncpool.Pool(
        "postgresql://h/db",
        user="u",
        password="p",
        statement_cache_size=0,
        server_settings={"application_name": "x"},
        command_timeout=5,
        ssl=False,
    )
    assert pool.config.connect_kwargs["statement_cache_size"] == 0


def test_custom_connect_is_checked_against_its_own_signature(fake_server: FakeServer) -> None:
    # The fake's connect takes **kwargs: anything goes to it.
    asyncpool.Pool(connect=fake_server.connect, anything=1)

    async def connect(dsn: str | None = None, *, region: str) -> Any:
        raise NotImplementedError

    asyncpool.Pool(connect=connect, region="eu")
    with pytest.raises(TypeError, match=r"'regoin'.*did you mean 'region'\?.*connect= function"):
        asyncpool.Pool(connect=connect, regoin="eu")


@pytest.mark.parametrize("dsn", [12345, b"postgresql://h/db", ["postgresql://h/db"]])
def test_a_dsn_that_is_not_a_string_is_refused(dsn: Any) -> None:
    with pytest.raises(TypeError, match="dsn"):
        asyncpool.create_pool(dsn)


# ------------------------------------------------------------ names and secrets


def test_default_names_are_unique_and_name_the_server() -> None:
    a = asyncpool.Pool("postgresql://u:secret@db.internal:6432/app")
    b = asyncpool.Pool("postgresql://u:secret@db.internal:6432/app")
    assert a.name.startswith("db.internal:6432/app")
    assert b.name != a.name and b.name.startswith("db.internal:6432/app")
    assert asyncpool.Pool(name="mine").name == "mine"
    assert "secret" not in a.name + b.name


SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("dsn", "kwargs"),
    [
        (f"postgresql://app:{SECRET}@db:5432/app", {}),
        (f"postgresql://app@db/app?password={SECRET}&sslmode=disable", {}),
        (f"host=db user=app password={SECRET} dbname=app", {}),
        (f"host=db user=app password='{SECRET}' dbname=app", {}),
        ("postgresql://app@db/app", {"password": SECRET}),
    ],
)
def test_passwords_never_show_in_reprs(dsn: str, kwargs: dict[str, Any]) -> None:
    pool = asyncpool.Pool(dsn, **kwargs)
    for text in (repr(pool.config), str(pool.config), repr(pool), str(pool.stats())):
        assert SECRET not in text
    assert "***" in repr(pool.config)
    pool.set_connect_kwargs(dsn, **kwargs)
    assert SECRET not in repr(pool.config)


def test_logs_of_a_failing_pool_hold_no_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncpool")
    pool = asyncpool.Pool(f"postgresql://app:{SECRET}@127.0.0.1:1/app", connect_timeout=1)
    with pytest.raises(OSError) as info:
        asyncio.run(pool.open())
    assert SECRET not in str(info.value)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def test_a_down_verdict_is_fresh_for_reconnect_initial_delay_only(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    """Refused a moment ago: fail fast, no new attempt. Later (a quick restart?): the
    borrower waits for one fresh attempt instead of being failed on old news."""
    pool = make_fake_pool(min_size=0, max_size=2, reconnect_initial_delay=0.2)
    await pool.open()
    fake_server.fail_with = ConnectionRefusedError(111, "refused")
    with pytest.raises(asyncpool.DatabaseUnavailable):
        await pool.acquire(timeout=5)
    attempts = fake_server.attempts
    with pytest.raises(asyncpool.DatabaseUnavailable):
        await pool.acquire(timeout=5)
    assert fake_server.attempts == attempts  # fresh verdict: no connect storm
    # The server comes back; connects are held so the interleaving is the test's.
    fake_server.fail_with = None
    fake_server.hold_connects = True
    await asyncio.sleep(0.3)  # the verdict is old news now
    borrower = asyncio.ensure_future(pool.acquire(timeout=5))
    await fake_server.wait_pending()  # a background retry, or one the borrower started
    await settle()
    assert not borrower.done()  # waiting for that attempt, not failed on old news
    while fake_server.pending:
        fake_server.release_connect()
    conn = await asyncio.wait_for(borrower, 1)
    await pool.release(conn)
    check_invariants(pool)


async def test_min_size_is_restored_at_once_after_losses(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    """Four connections lost together: four connects start together (asyncpg restores
    the floor at once), though connect_concurrency=2 paces borrower-driven growth."""
    pool = make_fake_pool(min_size=4, max_size=8, connect_concurrency=2)
    await pool.open()
    await settle()
    assert pool.stats().idle == 4
    fake_server.hold_connects = True
    for slot in list(pool._idle):  # the server ends all four sessions
        slot.conn.terminate()
        pool._on_closed(slot, slot.conn)  # (what asyncpg's termination listener calls)
    await fake_server.wait_pending(4)
    assert pool.stats().connecting == 4
    while fake_server.pending:
        fake_server.release_connect()
    await settle()
    assert pool.stats().idle == 4
    check_invariants(pool)


async def test_an_init_that_closes_the_connection_is_a_failed_init(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    closed_once: list[bool] = []

    async def init(conn: Any) -> None:
        if not closed_once:
            closed_once.append(True)
            await conn.close()

    pool = make_fake_pool(min_size=0, max_size=1, init=init, reconnect_initial_delay=0.01)
    await pool.open()
    async with pool.acquire(timeout=2) as conn:  # the second connect serves
        assert not conn.is_closed()
    assert pool.stats().connect_errors_total == 1
    assert pool.get_size() == 1
    check_invariants(pool)


async def test_open_without_waiting_connects_in_the_background(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    """open(wait=False): open at once (an application starting while its database is
    not up yet); borrowers wait for the first connections."""
    fake_server.hold_connects = True
    pool = make_fake_pool(min_size=2, max_size=3)
    await asyncio.wait_for(pool.open(wait=False), 0.5)
    assert pool.stats().connecting == 2
    borrower = asyncio.ensure_future(pool.acquire(timeout=5))
    await settle()
    assert not borrower.done()
    while fake_server.pending:
        fake_server.release_connect()
    conn = await asyncio.wait_for(borrower, 1)
    await pool.release(conn)
    await settle()
    assert pool.stats().size == 2
    check_invariants(pool)
