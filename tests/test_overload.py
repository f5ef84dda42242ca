"""Overload control: adaptive LIFO while the waiter queue stands, shedding and admission.

The unit tests drive the pool over fake connections with a controlled clock, so every
order of events is forced; the last test offers a real server twice its capacity.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

import asyncpool
from tests.conftest import settle
from tests.fakes import check_invariants


async def clocked_pool(make: Callable[..., Any], **kwargs: Any) -> tuple[Any, list[float]]:
    """A pool of one connection, with a clock the test moves (near the loop's own time,
    so that deadline timers do not fire while the test runs)."""
    pool = make(min_size=1, max_size=1, **kwargs)
    await pool.open()
    base = asyncio.get_running_loop().time()
    offset = [0.0]

    def clock() -> float:
        return base + offset[0]

    pool._clock = clock
    pool._waiters._clock = clock
    return pool, offset


async def queue(pool: Any, timeout: float) -> asyncio.Future[Any]:
    waiter = asyncio.ensure_future(pool.acquire(timeout=timeout))
    await settle()
    return waiter


async def test_a_moving_queue_is_first_come_first_served(make_fake_pool: Any) -> None:
    pool, clock = await clocked_pool(make_fake_pool)
    held = await pool.acquire()
    waiters = []
    for i in range(3):
        clock[0] = i * 0.01
        waiters.append(await queue(pool, timeout=10))
    clock[0] = 0.1  # the oldest has used 1 % of its time
    for waiter in waiters:
        await pool.release(held)
        held = await asyncio.wait_for(waiter, 1)
        assert all(w.done() == (waiters.index(w) <= waiters.index(waiter)) for w in waiters)
    await pool.release(held)
    assert pool.stats().served_newest_total == 0
    check_invariants(pool)


async def test_a_standing_queue_serves_the_newest_first_then_moves_again(
    make_fake_pool: Any,
) -> None:
    pool, clock = await clocked_pool(make_fake_pool)
    held = await pool.acquire()
    oldest = await queue(pool, timeout=1.0)  # at 0.0
    clock[0] = 0.3
    middle = await queue(pool, timeout=1.0)
    clock[0] = 0.6
    newest = await queue(pool, timeout=1.0)
    pool._waiters._look()  # the watch timer, at its moment: the oldest is past half its time
    assert pool._waiters.standing
    # The oldest has used 60 % of its time: the queue stands, the newest goes first.
    await pool.release(held)
    conn = await asyncio.wait_for(newest, 1)
    assert not oldest.done() and not middle.done()
    assert pool.stats().served_newest_total == 1
    # Still standing at 0.61: next the newest still waiting (middle), then the oldest.
    clock[0] = 0.61
    await pool.release(conn)
    conn = await asyncio.wait_for(middle, 1)
    assert not oldest.done()
    await pool.release(conn)
    conn = await asyncio.wait_for(oldest, 1)
    await pool.release(conn)
    assert not pool._waiters.standing  # the queue drained: overload over
    # A new short queue is first come, first served again.
    clock[0] = 2.0
    held = await pool.acquire()
    first = await queue(pool, timeout=10)
    second = await queue(pool, timeout=10)
    await pool.release(held)
    held = await asyncio.wait_for(first, 1)
    assert not second.done()
    await pool.release(held)
    await pool.release(await asyncio.wait_for(second, 1))
    assert pool.stats().served_newest_total == 3  # newest, middle, oldest: all standing
    check_invariants(pool)


async def test_a_standing_queue_tells_waiters_without_time_for_a_lease_at_once(
    make_fake_pool: Any,
) -> None:
    pool, clock = await clocked_pool(make_fake_pool)
    pool._mean_hold = pool._waiters.min_useful = 0.2  # the usual lease (measured upkeep)
    held = await pool.acquire()
    doomed = [await queue(pool, timeout=1.0) for _ in range(2)]  # at 0.0
    clock[0] = 0.5
    hopeful = await queue(pool, timeout=1.0)
    clock[0] = 0.9  # the first two have 0.1 s left: less than a usual lease
    pool._waiters._look()  # the watch timer
    await pool.release(held)
    for waiter in doomed:
        with pytest.raises(asyncpool.PoolOverloaded, match="overload='fifo'"):
            await asyncio.wait_for(waiter, 1)
    await pool.release(await asyncio.wait_for(hopeful, 1))
    stats = pool.stats()
    assert stats.overload_shed_total == 2
    assert stats.waiting == 0
    check_invariants(pool)


async def test_admission_refuses_at_once_whom_the_queue_cannot_serve_in_time(
    make_fake_pool: Any,
) -> None:
    pool, _ = await clocked_pool(make_fake_pool)
    pool._mean_hold = 0.1
    held = await pool.acquire()
    ahead = [await queue(pool, timeout=10) for _ in range(4)]
    # Fifth in line for one connection held 0.1 s on average: about 0.5 s away.
    with pytest.raises(asyncpool.PoolOverloaded, match="4 borrowers wait ahead"):
        await pool.acquire(timeout=0.3)
    assert pool.stats().overload_refused_total == 1
    late = await queue(pool, timeout=0.6)  # time enough: it queues
    assert not late.done()
    for waiter in [*ahead, late]:
        await pool.release(held)
        held = await asyncio.wait_for(waiter, 1)
    await pool.release(held)
    check_invariants(pool)


async def test_overload_fifo_turns_it_all_off(make_fake_pool: Any) -> None:
    pool, clock = await clocked_pool(make_fake_pool, overload="fifo")
    pool._mean_hold = pool._waiters.min_useful = 0.2
    held = await pool.acquire()
    oldest = await queue(pool, timeout=1.0)
    clock[0] = 0.9
    newest = await queue(pool, timeout=0.05)  # admission would refuse it
    await pool.release(held)
    conn = await asyncio.wait_for(oldest, 1)  # first come, first served, 0.1 s left
    assert not newest.done()
    await pool.release(conn)
    await pool.release(await asyncio.wait_for(newest, 1))
    stats = pool.stats()
    assert stats.served_newest_total == stats.overload_shed_total == 0
    assert stats.overload_refused_total == 0
    with pytest.raises(ValueError, match="overload"):
        asyncpool.Pool(overload="lifo")  # type: ignore[arg-type]


async def test_twice_the_capacity_keeps_serving_in_time(postgres_dsn: str) -> None:
    """A real server offered twice what a pool of 2 can do (10 ms queries, 100 ms
    deadlines, open-loop arrivals): with the default adaptive discipline most of the
    capacity still finishes in time; plain first come, first served collapses."""
    goodput: dict[str, float] = {}
    for mode in ("adaptive", "fifo"):
        async with asyncpool.create_pool(
            postgres_dsn, min_size=2, max_size=2, overload=mode
        ) as pool:
            loop = asyncio.get_running_loop()
            good = 0
            rng = random.Random(7)

            async def request() -> None:
                nonlocal good
                try:
                    async with asyncio.timeout(0.1):
                        async with pool.acquire(timeout=0.1) as conn:
                            await conn.execute("SELECT pg_sleep(0.01)")
                    good += 1
                except TimeoutError:  # PoolTimeout and PoolOverloaded are TimeoutErrors
                    pass

            tasks = []
            end = loop.time() + 2.0
            while loop.time() < end:  # ~400 arrivals/s, capacity ~190/s
                tasks.append(asyncio.ensure_future(request()))
                await asyncio.sleep(rng.expovariate(400))
            await asyncio.gather(*tasks)
            goodput[mode] = good / 2.0
            check_invariants(pool)
    print("goodput per second:", goodput)
    assert goodput["adaptive"] >= 100  # capacity is ~190/s here
    assert goodput["adaptive"] > 2 * goodput["fifo"]
