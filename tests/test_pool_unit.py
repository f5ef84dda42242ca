"""Deterministic tests of the pool's state machine over fake connections.

Every race is forced on purpose (same-tick release and cancel, cancel while
connecting, timeout at hand-off) and the bookkeeping is checked after each.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from bisect import bisect_left
from typing import Any

import pytest

import asyncpool
from asyncpool import HISTOGRAM_BOUNDS, _pg
from tests.conftest import settle
from tests.fakes import FakeServer, check_invariants


async def open_pool(make: Any, **kwargs: Any) -> asyncpool.Pool:
    pool = make(**kwargs)
    await pool.open()
    return pool


# --------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"acquire_timeout": -1}, "acquire_timeout"),
        ({"max_idle": -5}, "max_idle"),
        ({"reset": "sometimes"}, "reset"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"connect_concurrency": 0}, "connect_concurrency"),
        ({"pooler": "pgpool"}, "pooler"),
        ({"max_queries": 0}, "max_queries"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        asyncpool.Pool("postgresql://x", **kwargs)


def test_defaults_are_finite_and_sensible() -> None:
    cfg = asyncpool.Pool().config
    assert cfg.acquire_timeout == 30.0
    assert cfg.min_size <= cfg.max_size == 10
    assert cfg.reset == "auto"
    assert cfg.max_lifetime is not None and cfg.max_idle is not None


# -------------------------------------------------------------- basic lending


async def test_acquire_release_reuses_idle_connection(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        assert pool.stats().in_use == 1
    conn2 = await pool.acquire()
    assert conn2.raw_connection is fake_server.connections[0]
    await pool.release(conn2)
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.acquired_total, stats.released_total) == (1, 0, 2, 2)
    assert fake_server.opened == 1
    check_invariants(pool)


async def test_released_connection_refuses_use(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1)
    async with pool.acquire() as conn:
        pass
    with pytest.raises(asyncpool.ConnectionReleasedError, match="released back"):
        await conn.fetchval("SELECT 1")
    with pytest.raises(asyncpool.ConnectionReleasedError):
        conn.is_in_transaction()
    await pool.release(conn)  # a second release is a no-op, as in asyncpg
    assert pool.stats().released_total == 1
    assert conn.is_released


async def test_hot_path_creates_no_task_timer_or_query(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    timers: list[Any] = []
    original_factory = loop.get_task_factory()

    def factory(loop_: Any, coro: Any, **kw: Any) -> Any:
        created.append(coro)
        return asyncio.Task(coro, loop=loop_, **kw)

    real_call_at, real_call_later = loop.call_at, loop.call_later
    loop.set_task_factory(factory)
    loop.call_at = lambda *a, **k: timers.append(a) or real_call_at(*a, **k)  # type: ignore
    loop.call_later = lambda *a, **k: timers.append(a) or real_call_later(*a, **k)  # type: ignore
    try:
        before = len(fake_server.queries)
        for _ in range(200):
            async with pool.acquire() as conn:
                assert conn.raw_connection is fake_server.connections[0]
            conn = await pool.acquire()
            await pool.release(conn)
    finally:
        loop.set_task_factory(original_factory)
        del loop.call_at, loop.call_later
    assert created == []
    assert timers == []
    assert len(fake_server.queries) == before
    assert pool.stats().resets_skipped_total == 400


def test_noted_durations_are_filed_as_add_files_them() -> None:
    """The waiting path notes its waits and files them in batches (_Recorder.file_noted):
    the same buckets, max and sum as one add() per duration, bounds and ties included."""
    from asyncpool._stats import _Recorder

    durations = [b * f for b in HISTOGRAM_BOUNDS for f in (0.5, 1.0, 1.000001)]
    durations += [0.0, 100.0, 0.0001, 0.003, 0.0001]
    one_by_one, noted = _Recorder(), _Recorder()
    for d in durations:
        one_by_one.add(d)
    noted.noted.extend(durations[:7])
    noted.file_noted()
    noted.noted.extend(durations[7:])
    assert noted.count == len(durations)  # (filed or not)
    expected, got = one_by_one.snapshot(3), noted.snapshot(3)
    assert not noted.noted
    assert (got.count, got.max, got.buckets) == (expected.count, expected.max, expected.buckets)
    assert got.sum == pytest.approx(expected.sum)


async def test_counters_the_hot_path_leaves_to_stats(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    """acquired_total, released_total, resets_skipped_total and the immediate lends in
    wait_time are derived in stats() (the hot path counts nothing for them): they stay
    exact across waits, resets, retired and replaced connections and pop_stats()."""
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    first = await pool.acquire()  # immediate
    waiter = asyncio.ensure_future(pool.acquire(timeout=5))
    await settle()
    await pool.release(first)
    second = await waiter  # after a wait
    await pool.release(second)
    stats = pool.pop_stats()
    assert (stats.acquired_total, stats.released_total, stats.resets_skipped_total) == (2, 2, 2)
    assert stats.wait_time.count == 2 and stats.wait_time.buckets[0] >= 1
    stats = pool.stats()
    assert (stats.acquired_total, stats.released_total, stats.resets_skipped_total) == (0, 0, 0)
    assert stats.wait_time.count == 0

    async with pool.acquire() as conn:
        await conn.execute("SET work_mem = '8MB'")  # needs a full reset
    await settle(10)
    async with pool.acquire():
        pool.expire()  # retired on release: its slot leaves the pool
    await settle(10)
    stats = pool.stats()
    assert (stats.acquired_total, stats.released_total) == (2, 2)
    assert (stats.resets_total, stats.resets_skipped_total) == (1, 0)
    assert stats.connections_closed_total == 1
    check_invariants(pool)

    pool.resize(max_size=2)
    a, b = await pool.acquire(), await pool.acquire()
    pool.resize(min_size=1, max_size=1)
    assert pool.stats().size == 2  # both lent: they close as they come back
    await pool.release(a)
    await settle(10)
    assert pool.stats().size == 1
    await pool.release(b)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.acquired_total, stats.released_total) == (1, 1, 4, 4)
    assert stats.resets_skipped_total == 2  # neither needed a reset (a then closed: resize)
    check_invariants(pool)


async def test_time_histograms_file_durations_by_the_bounds(
    make_fake_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path files wait and use times with unrolled comparisons for the first
    buckets: each duration at and around every bound lands where HISTOGRAM_BOUNDS says."""
    now = [0.0]
    monkeypatch.setattr(asyncpool._core, "_now", lambda: now[0])  # type: ignore[attr-defined]
    # (A deadline far beyond the loop's real clock: this test's clock starts at 0.)
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, acquire_timeout=1e9)
    pool._clock = lambda: now[0]  # (uvloop's pools read the loop's clock)
    durations = [
        0.0,
        0.00005,
        0.0001,
        0.00010001,
        0.0004,
        0.0005,
        0.00050001,
        0.0009,
        0.001,
        0.0010001,
        0.004,
        0.3,
        10.0,
        31.0,
    ]
    for d in durations:
        now[0] = 0.0
        holder = await pool.acquire()  # immediate: a zero wait
        waiter = asyncio.ensure_future(pool.acquire())
        await settle()
        now[0] = d
        await pool.release(holder)  # held d; the waiter waited d
        await pool.release(await waiter)  # held 0
    expected = [0] * (len(HISTOGRAM_BOUNDS) + 1)
    for d in durations:
        expected[bisect_left(HISTOGRAM_BOUNDS, d)] += 1
    stats = pool.stats()
    expected[0] += len(durations)  # the zeros: immediate lends, and the waiters' holds
    assert stats.use_time.buckets == tuple(expected)
    assert stats.wait_time.buckets == tuple(expected)
    assert stats.use_time.max == stats.wait_time.max == 31.0
    assert stats.use_time.sum == pytest.approx(sum(durations))
    check_invariants(pool)


# ---------------------------------------------------------------- FIFO and waits


async def test_waiters_are_served_in_fifo_order(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    order: list[int] = []

    async def borrower(i: int) -> None:
        async with pool.acquire():
            order.append(i)

    tasks = [asyncio.create_task(borrower(i)) for i in range(5)]
    await settle()
    assert pool.stats().waiting == 5
    await pool.release(holder)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    check_invariants(pool)


async def test_newcomer_does_not_overtake_waiters(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    first = asyncio.ensure_future(pool.acquire())
    await settle()
    await pool.release(holder)  # handed straight to `first`
    with pytest.raises(asyncpool.PoolTimeout):
        await pool.acquire(timeout=0)
    conn = await first
    await pool.release(conn)
    check_invariants(pool)


async def test_expire_during_a_reset_replaces_that_connection(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    """A connection whose reset is still running when expire() is called is not lent
    again afterwards (it used to come back idle from its reset, with the old settings)."""
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        old = conn.raw_connection
        await conn.execute("SET work_mem = '8MB'")  # the release needs a full reset
    assert pool.stats().returning == 1  # the reset runs in the background
    pool.expire()
    await settle(20)
    async with pool.acquire(timeout=5) as conn:
        assert conn.raw_connection is not old
    assert old.is_closed()
    check_invariants(pool)


async def test_deadlines_out_of_arrival_order(make_fake_pool: Any) -> None:
    """A waiter with a shorter timeout than those queued before it times out on time,
    and the longer ones keep their place in the queue."""
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[float, float] = {}

    async def waiter(timeout: float) -> str:
        try:
            conn = await pool.acquire(timeout=timeout)
        except asyncpool.PoolTimeout:
            ended[timeout] = loop.time() - started
            return "timeout"
        await pool.release(conn)
        return "served"

    tasks = []
    for timeout in (5.0, 0.1, 5.0, 0.3, 5.0):
        tasks.append(asyncio.create_task(waiter(timeout)))
        await settle()
    await asyncio.sleep(0.5)
    assert set(ended) == {0.1, 0.3}
    assert 0.1 - 1e-6 <= ended[0.1] < ended[0.3] < 0.5  # (float rounding: uvloop's clock)
    assert pool.stats().waiting == 3
    await pool.release(holder)
    assert await asyncio.gather(*tasks) == ["served", "timeout", "served", "timeout", "served"]
    assert pool.stats().timeouts_total == 2
    check_invariants(pool)


async def test_default_deadlines_behind_a_longer_timeout(make_fake_pool: Any) -> None:
    """Waiters on the pool's acquire_timeout time out on time even when a waiter with a
    longer timeout of its own queued before them (and one with a shorter one after)."""
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, acquire_timeout=0.2)
    holder = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[str, float] = {}

    async def waiter(name: str, timeout: float | None) -> str:
        try:
            conn = await pool.acquire(timeout=timeout)
        except asyncpool.PoolTimeout:
            ended[name] = loop.time() - started
            return "timeout"
        await pool.release(conn)
        return "served"

    tasks = []
    for name, timeout in (("long", 5.0), ("default1", None), ("short", 0.05), ("default2", None)):
        tasks.append(asyncio.create_task(waiter(name, timeout)))
        await settle()
    await asyncio.sleep(0.1)
    assert set(ended) == {"short"}
    await asyncio.sleep(0.25)
    assert set(ended) == {"short", "default1", "default2"}
    assert 0.2 - 1e-6 <= ended["default1"] <= ended["default2"] < 0.35
    assert pool.stats().waiting == 1
    await pool.release(holder)
    assert await asyncio.gather(*tasks) == ["served", "timeout", "timeout", "timeout"]
    assert pool.stats().timeouts_total == 3
    check_invariants(pool)


async def test_timeout_message_diagnoses(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    async with pool.acquire():
        with pytest.raises(asyncpool.PoolTimeout) as info:
            await pool.acquire(timeout=0.02)
    message = str(info.value)
    assert "waiting 0.0" in message and "size=1/1" in message and "in_use=1" in message
    assert "max_size=1" in message and "oldest borrower" in message
    assert isinstance(info.value, TimeoutError)
    assert pool.stats().timeouts_total == 1
    check_invariants(pool)


async def test_max_waiting_refuses_extra_waiters(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, max_waiting=1)
    holder = await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await settle()
    with pytest.raises(asyncpool.TooManyWaiters, match="max_waiting=1"):
        await pool.acquire()
    await pool.release(holder)
    await pool.release(await waiting)
    assert pool.stats().too_many_waiters_total == 1
    check_invariants(pool)


# ------------------------------------------------------------- forced races


async def test_release_then_cancel_in_same_tick_loses_nothing(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire())
    second = asyncio.ensure_future(pool.acquire())
    await settle()
    await pool.release(holder)  # the future of `waiter` now holds the connection...
    waiter.cancel()  # ...and it is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    conn = await asyncio.wait_for(second, 1)  # passed on to the next waiter
    check_invariants(pool)
    await pool.release(conn)
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.waiting, stats.cancelled_total) == (1, 0, 0, 1)


async def test_release_then_cancel_with_no_other_waiter_goes_idle(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire())
    await settle()
    await pool.release(holder)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats().idle == 1
    check_invariants(pool)


async def test_cancel_while_connecting_keeps_the_new_connection(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=0, max_size=1)
    fake_server.hold_connects = True
    waiter = asyncio.ensure_future(pool.acquire())
    await fake_server.wait_pending()
    assert pool.stats().connecting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    check_invariants(pool)
    fake_server.release_connect()
    await settle()
    stats = pool.stats()
    assert (stats.idle, stats.connecting, stats.size) == (1, 0, 1)
    check_invariants(pool)


async def test_timeout_exactly_at_hand_off(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=0))
    await asyncio.sleep(0)  # waiter queued; its deadline timer is due now
    await pool.release(holder)  # hand-off in the same tick as the deadline
    conn = await waiter  # the hand-off won: the timer found the future done
    await pool.release(conn)
    check_invariants(pool)
    # And the other order: the deadline fires first, then the release goes idle.
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=0))
    await settle()
    await pool.release(holder)
    with pytest.raises(asyncpool.PoolTimeout):
        await waiter
    assert pool.stats().idle == 1
    check_invariants(pool)


async def test_connect_arriving_for_a_waiter_that_timed_out_goes_idle(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=0, max_size=1)
    fake_server.hold_connects = True
    with pytest.raises(asyncpool.PoolTimeout, match="opened too slowly"):
        await pool.acquire(timeout=0.01)
    fake_server.release_connect()
    await settle()
    assert pool.stats().idle == 1
    check_invariants(pool)


async def test_returned_and_new_connection_whichever_first(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=2)
    holder = await pool.acquire()
    fake_server.hold_connects = True
    waiter = asyncio.ensure_future(pool.acquire())
    await fake_server.wait_pending()
    await pool.release(holder)  # the returned connection serves the waiter first
    conn = await waiter
    assert conn.raw_connection is fake_server.connections[0]
    fake_server.release_connect()  # the new one arrives later and goes idle
    await settle()
    assert pool.stats().idle == 1 and pool.stats().in_use == 1
    await pool.release(conn)
    check_invariants(pool)


# ------------------------------------------------------------------ resets


async def test_reset_modes(make_fake_pool: Any, fake_server: FakeServer) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
    await settle()
    assert fake_server.queries[-1] == (1, "ROLLBACK")
    async with pool.acquire() as conn:
        await conn.execute("SET work_mem = '1GB'")
    await settle()
    assert fake_server.queries[-1] == (1, _pg.FULL_RESET_SQL)
    n = len(fake_server.queries)
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    await settle()
    assert len(fake_server.queries) == n + 1  # the SELECT only: no reset
    stats = pool.stats()
    assert (stats.resets_total, stats.resets_skipped_total) == (2, 1)
    check_invariants(pool)


async def test_reset_none_replaces_a_connection_left_in_transaction(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, reset="none")
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
    await settle()
    assert fake_server.connections[0].closed
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
    assert fake_server.opened == 2
    check_invariants(pool)


async def test_reset_callable_runs_after_rollback(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    seen: list[Any] = []

    async def my_reset(raw: Any) -> None:
        seen.append((raw, raw.is_in_transaction()))

    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, reset=my_reset)
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
    await settle()
    assert seen == [(fake_server.connections[0], False)]


async def test_failing_reset_discards_connection(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, reset_timeout=0.05)
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        conn.raw_connection.hang = True  # the ROLLBACK will never answer
    await asyncio.sleep(0.1)
    assert fake_server.connections[0].closed
    async with pool.acquire() as conn:
        assert conn.raw_connection is fake_server.connections[1]
    check_invariants(pool)


# ------------------------------------------------------------ broken connections


async def test_broken_connection_is_discarded_on_release(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        conn.raw_connection.closed = True
    stats = pool.stats()
    assert stats.connections_lost_total == 1
    await settle()
    async with pool.acquire() as conn:
        assert conn.raw_connection is fake_server.connections[1]
    check_invariants(pool)


async def test_garbage_collected_connection_is_recovered(
    make_fake_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    conn = await pool.acquire()
    del conn
    gc.collect()
    await settle()
    assert pool.stats().leaks_total == 1
    assert "garbage-collected without being released" in caplog.text
    async with pool.acquire(timeout=1):
        pass
    check_invariants(pool)


async def test_async_with_block_of_a_collected_coroutine_releases(
    make_fake_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An `async with` lease needs no finalizer on its wrapper: a coroutine suspended in
    the block and then garbage-collected is closed by Python, which runs __aexit__. The
    wrappers of `await pool.acquire()` keep theirs (the test above)."""
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def borrower() -> None:
        async with pool.acquire() as conn:
            assert not hasattr(type(conn), "__del__")
            await never

    coro = borrower()
    coro.send(None)  # into the block, suspended on `never`
    assert pool.stats().in_use == 1
    del coro
    gc.collect()
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.released_total, stats.leaks_total) == (0, 1, 1, 0)
    assert "garbage-collected" not in caplog.text
    conn = await pool.acquire()
    assert hasattr(type(conn), "__del__") and isinstance(conn, asyncpool.PooledConnection)
    await pool.release(conn)
    check_invariants(pool)


# ------------------------------------------------------------------- close


async def test_close_fails_waiters_and_waits_for_borrowers(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire())
    await settle()
    closing = asyncio.create_task(pool.close(timeout=5))
    with pytest.raises(asyncpool.PoolClosed):
        await waiter
    await settle()
    assert not closing.done()
    with pytest.raises(asyncpool.PoolClosed):
        await pool.acquire()
    await pool.release(holder)
    await asyncio.wait_for(closing, 1)
    assert pool.stats().size == 0


async def test_close_terminates_after_timeout_and_never_hangs(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=2, max_size=2, ping_timeout=0.05)
    holder = await pool.acquire()
    fake_server.hang_close = True  # graceful close of the idle one never answers
    await asyncio.wait_for(pool.close(timeout=0.1), 2)
    assert pool.stats().size == 0
    assert holder.raw_connection.closed
    assert fake_server.open_count == 0


async def test_close_is_idempotent_and_concurrent(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1)
    await asyncio.gather(pool.close(), pool.close())
    await pool.close()
    assert pool.closed


async def test_cancelled_close_still_terminates(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1)
    holder = await pool.acquire()
    closing = asyncio.create_task(pool.close(timeout=10))
    await settle()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert fake_server.open_count == 0
    assert holder.raw_connection.closed


# -------------------------------------------------------- connects and outages


async def test_database_down_fails_fast_and_recovers(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(
        make_fake_pool,
        min_size=0,
        max_size=2,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.02,
    )
    fake_server.fail_with = ConnectionRefusedError("refused")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncpool.DatabaseUnavailable) as info:
        await pool.acquire(timeout=10)
    assert loop.time() - started < 1  # not the whole 10 s deadline
    assert isinstance(info.value.last_error, ConnectionRefusedError)
    with pytest.raises(asyncpool.DatabaseUnavailable, match="refused"):
        await pool.acquire(timeout=10)  # known down: fails at once
    attempts = fake_server.attempts
    await asyncio.sleep(0.1)
    assert fake_server.attempts > attempts  # background retries go on
    fake_server.fail_with = None
    await asyncio.sleep(0.1)
    async with pool.acquire(timeout=1) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    stats = pool.stats()
    assert stats.connect_errors_total >= 2 and stats.unavailable_total >= 2
    check_invariants(pool)


async def test_open_raises_the_connect_error(make_fake_pool: Any, fake_server: FakeServer) -> None:
    fake_server.fail_with = ConnectionRefusedError("nobody home")
    pool = make_fake_pool(min_size=2)
    with pytest.raises(ConnectionRefusedError, match="nobody home"):
        await pool.open()
    assert pool.closed and pool.stats().size == 0


async def test_failing_init_discards_connection_not_pool(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    calls = 0

    async def init(conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("init broke")

    pool = await open_pool(
        make_fake_pool, min_size=1, max_size=2, init=init, reconnect_initial_delay=0.001
    )
    holder = await pool.acquire()
    async with pool.acquire(timeout=2) as conn:  # second connect's init fails, third works
        assert conn.raw_connection is fake_server.connections[2]
    assert fake_server.connections[1].closed
    assert pool.stats().connect_errors_total == 1
    await pool.release(holder)
    check_invariants(pool)


async def test_growth_only_while_borrowers_wait(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=5)
    assert fake_server.opened == 1
    conns = [await pool.acquire() for _ in range(3)]
    assert fake_server.opened == 3
    for c in conns:
        await pool.release(c)
    await settle()
    assert fake_server.opened == 3 and pool.stats().idle == 3


# ---------------------------------------------------------------- lifecycle


async def test_max_uses_retires_on_return(make_fake_pool: Any, fake_server: FakeServer) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=1, max_uses=2)
    for _ in range(2):
        async with pool.acquire():
            pass
    await settle()
    assert fake_server.connections[0].closed
    async with pool.acquire(timeout=1) as conn:
        assert conn.raw_connection is fake_server.connections[1]


async def test_expire_retires_idle_now_and_busy_on_return(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=2, max_size=2)
    busy = await pool.acquire()
    idle_conn = next(c for c in fake_server.connections if c is not busy.raw_connection)
    pool.expire()
    await settle()
    assert idle_conn.closed and not busy.raw_connection.closed
    raw = busy.raw_connection
    await pool.release(busy)
    await settle()
    assert raw.closed
    assert pool.stats().size == 2  # refilled to min_size
    check_invariants(pool)


async def test_resize(make_fake_pool: Any, fake_server: FakeServer) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=4)
    pool.resize(min_size=3)
    await settle(10)
    assert pool.stats().idle == 3
    pool.resize(min_size=1, max_size=1)
    await settle(10)
    assert pool.stats().size == 1
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(min_size=5)
    check_invariants(pool)


async def test_leak_timeout_warns_with_stack(
    make_fake_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await open_pool(
        make_fake_pool, min_size=1, max_size=1, leak_timeout=0.01, maintenance_interval=0.01
    )
    caplog.set_level(logging.WARNING, logger="asyncpool")
    async with pool.acquire():
        await asyncio.sleep(0.1)
    assert pool.stats().leaks_total == 1
    assert "has been held for" in caplog.text
    assert "test_leak_timeout_warns_with_stack" in caplog.text  # the acquiring stack


# ------------------------------------------------------------- misuse


async def test_pool_refuses_other_threads_loop(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1)
    errors: list[BaseException] = []

    def other_thread() -> None:
        async def use() -> None:
            async with pool.acquire():
                pass

        try:
            asyncio.run(use())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], asyncpool.PoolUsageError)
    assert "another loop or thread" in str(errors[0])
    check_invariants(pool)
    assert pool.stats().idle == 1


async def test_unopened_pool_says_so(make_fake_pool: Any) -> None:
    pool = make_fake_pool()
    with pytest.raises(asyncpool.PoolUsageError, match="not open"):
        await pool.acquire()


async def test_repr_shows_states(make_fake_pool: Any) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=3, name="orders")
    async with pool.acquire():
        assert repr(pool) == (
            "<Pool 'orders' open [size=1/3: idle=0 in_use=1 connecting=0 returning=0 "
            "checking=0 closing=0 | waiting=0]>"
        )


async def test_borrower_waits_for_a_resetting_connection_instead_of_growing(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = await open_pool(make_fake_pool, min_size=1, max_size=3)
    fake_server.connections[0].query_delay = 0.01  # the reset takes a round trip
    for _ in range(5):
        async with pool.acquire() as conn:
            await conn.execute("SET work_mem = '8MB'")
    await asyncio.sleep(0.05)
    assert fake_server.opened == 1
    assert pool.stats().resets_total == 5
    check_invariants(pool)
