"""``autosize=True``: the pool's side of the adaptive limit (asyncpool._sizer and its use).

Tables for :class:`asyncpool._sizer.Sizer` (windows from the pool's counters, the
budget); the limit applied to a pool of fake connections whose "server" has two cores
(hold times grow with the leases in flight past two) or none to saturate (hold times
flat); a pool above its limit shrinking while borrowers wait; and on a real server: an
I/O-bound load grows the limit, and pools sharing a server with ``max_connections=20``
stay within their budget with no "too many clients".
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

import pytest

import asyncpool
from asyncpool import EventKind, PoolEvent
from asyncpool._budget import ServerFacts
from asyncpool._sizer import Sizer
from asyncpool.testing import PostgresServer, find_pg_bin


def facts(max_connections: int, reserved: int, clients: int) -> ServerFacts:
    return ServerFacts(
        max_connections=max_connections,
        superuser_reserved_connections=reserved,
        reserved_connections=0,
        client_connections=clients,
        server_version_num=150000,
    )


# ------------------------------------------------------------------ Sizer (pure)


def test_sizer_window_by_littles_law() -> None:
    sizer = Sizer(1, 40, 1)
    first = sizer.step(10.0, 0, 0.0, 0, True)
    assert first.reason == "hold: few samples"  # the first step only sets the mark
    # 1 s later: 200 leases held 4 s in all -> 20 ms each, 4 in flight on average.
    sizer.step(11.0, 200, 4.0, 0, True)
    s = sizer.stats()
    assert s.window_rtt == pytest.approx(0.02)
    assert s.window_inflight == pytest.approx(4.0)
    assert s.samples_total == 200


@pytest.mark.parametrize(
    ("slow_after", "expected_reason"),
    [
        # Nobody had to wait: the borrowers used about 1 of 4 connections; no growth.
        (0, "hold: demand below limit"),
        # Some borrowers found no idle connection: all of the limit was in use; the
        # latency is the baseline's, so it grows.
        (30, "grow: latency flat"),
    ],
)
def test_sizer_demand_from_slow_acquires(slow_after: int, expected_reason: str) -> None:
    sizer = Sizer(4, 40, 1)
    assert sizer.limit == 4
    sizer.step(0.0, 0, 0.0, 0, True)
    # A first window sets the baseline (20 ms at one in flight) ...
    sizer.algorithm._baseline = 0.02  # (as a finished probe would)
    sizer.algorithm._baseline_at = 0.0
    decision = sizer.step(1.0, 50, 1.0, slow_after, True)
    assert decision.reason == expected_reason


@pytest.mark.parametrize(
    ("busy_before", "busy_after", "judged"),
    [
        (True, True, True),
        # A burst began inside the window (nothing lent at its start) ...
        (False, True, False),
        # ... or ended inside it (nothing lent at its end): its idle part would dilute
        # the in-flight count, so the window is dropped.
        (True, False, False),
        (False, False, False),
    ],
)
def test_sizer_drops_windows_with_an_idle_edge(
    busy_before: bool, busy_after: bool, judged: bool
) -> None:
    sizer = Sizer(1, 40, 1)
    sizer.step(0.0, 0, 0.0, 0, busy_before)
    # 4 leases in flight throughout would be 1 s x 4 = 4 s held; a burst of 0.25 s
    # holds 1 s and reads as 1 in flight.
    decision = sizer.step(1.0, 50, 1.0, 30, busy_after)
    assert (decision.reason != "hold: few samples") is judged
    assert sizer.stats().samples_total == (50 if judged else 0)
    # The next window starts at the end of this one, and counts when that edge was busy.
    sizer.step(2.0, 150, 3.0, 60, True)
    assert sizer.stats().samples_total == (150 if judged else 100 if busy_after else 0)


def test_sizer_restarted_counters_make_no_window() -> None:
    sizer = Sizer(1, 10, 1)
    sizer.step(0.0, 500, 5.0, 10, True)
    # pop_stats() restarted the counters: fewer leases than at the mark.
    decision = sizer.step(1.0, 20, 0.2, 0, True)
    assert decision.reason == "hold: few samples"
    assert sizer.stats().samples_total == 0
    # The next window counts from the new mark.
    sizer.step(2.0, 120, 1.2, 0, True)
    assert sizer.stats().samples_total == 100


@pytest.mark.parametrize(
    ("max_connections", "reserved", "clients", "own_open", "instances", "budget"),
    [
        # 50 - 3 reserved = 47, less a headroom of 5 (10 %): 42, a quarter each: 10;
        # others hold 15 of 42, which leaves more than that.
        (50, 3, 20, 5, 4, 10),
        # Others hold 40 of 42: only 2 are left, below the share of 10.
        (50, 3, 45, 5, 4, 2),
        # Alone on a server of 100: 97 less a headroom of 10.
        (100, 3, 1, 1, 1, 87),
        # The server is full of others: nothing.
        (20, 3, 30, 0, 1, 0),
    ],
)
def test_sizer_budget_from_server_facts(
    max_connections: int, reserved: int, clients: int, own_open: int, instances: int, budget: int
) -> None:
    sizer = Sizer(1, 40, instances)
    assert sizer.take_facts(7.0, facts(max_connections, reserved, clients), own_open) == budget
    assert sizer.budget == budget
    assert sizer.facts_at == 7.0
    assert sizer.stats().budget == budget


def test_sizer_budget_caps_the_limit_over_min_size() -> None:
    sizer = Sizer(4, 40, 10)
    sizer.take_facts(0.0, facts(20, 3, 0), 0)  # 17 less a headroom of 3, a tenth each: 1
    decision = sizer.step(0.0, 0, 0.0, 0, True)
    assert (decision.limit, decision.reason) == (1, "cap: budget")


def test_sizer_server_full_holds_at_what_the_pool_has() -> None:
    sizer = Sizer(1, 40, 1)
    sizer.server_full(6)
    assert sizer.budget == 6
    sizer.server_full(9)  # never raises a known budget
    assert sizer.budget == 6
    sizer.server_full(0)
    assert sizer.budget == 1


def test_sizer_bounds_follow_resize() -> None:
    sizer = Sizer(2, 10, 1)
    sizer.bound(5, 10)
    assert sizer.limit == 5
    sizer.bound(1, 3)
    assert sizer.limit == 3
    with pytest.raises(ValueError):
        sizer.bound(4, 3)


def test_autosize_setting_is_validated() -> None:
    with pytest.raises(TypeError, match="autosize must be True or False"):
        asyncpool.Pool("postgresql://unused", autosize="yes")  # type: ignore[arg-type]
    pool = asyncpool.Pool("postgresql://unused", min_size=2, max_size=8, autosize=True)
    s = pool.stats()
    assert (s.min_size, s.max_size, s.limit) == (2, 8, 2)  # it starts at min_size
    assert s.autosize is not None and s.autosize.limit == 2
    fixed = asyncpool.Pool("postgresql://unused", max_size=8).stats()
    assert (fixed.limit, fixed.autosize) == (8, None)


# ------------------------------------------------------------ fake connections


class Load:
    """Borrowers in a closed loop on ``pool`` while in the ``async with``; each lease
    lasts ``self.hold(leases in flight)`` (a test may swap ``hold`` midway).
    """

    def __init__(self, pool: asyncpool.Pool, hold: Callable[[int], float], borrowers: int):
        self.pool = pool
        self.hold = hold
        self.borrowers = borrowers
        self.inflight = 0
        self.stop = False
        self.tasks: list[asyncio.Task[None]] = []

    async def borrower(self) -> None:
        while not self.stop:
            async with self.pool.acquire():
                self.inflight += 1
                try:
                    await asyncio.sleep(self.hold(self.inflight))
                finally:
                    self.inflight -= 1

    async def __aenter__(self) -> Load:
        self.tasks = [asyncio.create_task(self.borrower()) for _ in range(self.borrowers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop = True
        await asyncio.gather(*self.tasks)


async def run_simulated(
    make_fake_pool: Callable[..., asyncpool.Pool],
    hold: Callable[[int], float],
    *,
    borrowers: int,
    seconds: float,
    max_size: int = 20,
) -> tuple[asyncpool.Pool, list[int], list[str]]:
    """Borrowers in a closed loop on an autosize pool of fake connections; each lease
    lasts ``hold(leases in flight)``. The limit sampled every 50 ms in the second half.
    """
    pool = make_fake_pool(min_size=1, max_size=max_size, autosize=True, maintenance_interval=0.1)
    moves: list[str] = []

    def hook(event: PoolEvent) -> None:
        if event.kind is EventKind.LIMIT:
            assert event.reason is not None
            moves.append(event.reason)

    pool.add_event_hook(hook)
    await pool.open()
    limits: list[int] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    async with Load(pool, hold, borrowers):
        while loop.time() < end:
            await asyncio.sleep(0.05)
            if loop.time() > end - seconds / 2:
                limits.append(pool.stats().limit)
                assert pool.stats().size <= max_size
    return pool, limits, moves


async def test_autosize_finds_a_two_core_servers_knee(
    make_fake_pool: Callable[..., asyncpool.Pool],
) -> None:
    # A server with two cores: past two leases in flight each one takes longer.
    pool, limits, moves = await run_simulated(
        make_fake_pool, lambda n: 0.004 * max(1.0, n / 2), borrowers=30, seconds=6.0
    )
    assert any(m.startswith("grow") for m in moves), moves
    # Far below max_size=20: near the knee, plus Vegas's band and the explore steps.
    assert 2 <= statistics.mean(limits) <= 8, (limits, moves)
    s = pool.stats()
    assert s.autosize is not None and s.autosize.baseline_rtt is not None
    assert s.autosize.baseline_rtt == pytest.approx(0.004, rel=0.6)
    pool._table.check()


async def test_autosize_follows_a_change_of_workload_within_seconds(
    make_fake_pool: Callable[..., asyncpool.Pool],
) -> None:
    # First nothing saturates (the limit climbs), then the "server" turns CPU-bound
    # with two cores: the limit comes down within a few seconds, and once settled
    # holds steady (no swings of more than a few connections).
    def cpu_bound(n: int) -> float:
        return 0.004 * max(1.0, n / 2)

    pool = make_fake_pool(min_size=1, max_size=20, autosize=True, maintenance_interval=0.1)
    await pool.open()
    loop = asyncio.get_running_loop()
    async with Load(pool, lambda n: 0.004, 30) as load:
        deadline = loop.time() + 5.0
        while pool.stats().limit < 12 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert pool.stats().limit >= 12
        load.hold = cpu_bound
        changed = loop.time()
        while pool.stats().limit > 8 and loop.time() < changed + 5.0:
            await asyncio.sleep(0.05)
        reacted = loop.time() - changed
        assert reacted < 3.0, (reacted, pool.stats())
        await asyncio.sleep(3.0)  # (the first shrinks are checked against the old workload)
        limits = []
        end = loop.time() + 2.0
        while loop.time() < end:
            await asyncio.sleep(0.05)
            limits.append(pool.stats().limit)
        assert max(limits) <= 10 and max(limits) - min(limits) <= 4, limits


async def test_autosize_grows_while_latency_stays_flat(
    make_fake_pool: Callable[..., asyncpool.Pool],
) -> None:
    # Nothing to saturate (an I/O-bound workload): more connections, more throughput.
    pool, limits, moves = await run_simulated(
        make_fake_pool, lambda n: 0.004, borrowers=30, seconds=5.0
    )
    assert max(limits) >= 15, (limits, moves)
    assert pool.stats().size >= 10


async def test_a_pool_above_its_limit_shrinks_while_borrowers_wait(
    make_fake_pool: Callable[..., asyncpool.Pool],
) -> None:
    # The limit drops (here by resize(); autosize uses the same path) while every
    # connection is lent and borrowers queue: the returned ones close instead of going
    # to the waiters, down to the limit; the waiters are served by the rest.
    pool = make_fake_pool(min_size=4, max_size=4)
    await pool.open()
    held = [await pool.acquire() for _ in range(4)]

    async def borrow() -> asyncpool.PooledConnection:
        return await pool.acquire(timeout=5)

    waiters = [asyncio.create_task(borrow()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert pool.stats().waiting == 3
    pool.resize(min_size=2, max_size=2)
    await pool.release(held[0])
    await pool.release(held[1])
    await asyncio.sleep(0.01)
    s = pool.stats()
    assert (s.size - s.closing, s.waiting) == (2, 3)  # two closed, nobody served yet
    await pool.release(held[2])
    await pool.release(held[3])
    await asyncio.sleep(0.01)
    assert pool.stats().waiting == 1
    assert waiters[0].done() and waiters[1].done()  # first come, first served
    for task in waiters[:2]:
        await pool.release(task.result())
    lent = await waiters[2]
    await pool.release(lent)
    s = pool.stats()
    assert s.size - s.closing <= 2
    pool._table.check()


# ------------------------------------------------------------------ real server


async def test_autosize_on_a_real_server_grows_for_io_bound_load(postgres_dsn: str) -> None:
    moves: list[str] = []
    async with asyncpool.create_pool(
        postgres_dsn, min_size=1, max_size=16, autosize=True, maintenance_interval=0.2
    ) as pool:
        pool.add_event_hook(
            lambda e: moves.append(e.reason or "") if e.kind is EventKind.LIMIT else None
        )
        stop = False

        async def borrower() -> None:
            while not stop:
                async with pool.acquire() as conn:
                    await conn.execute("SELECT pg_sleep(0.01)")

        tasks = [asyncio.create_task(borrower()) for _ in range(32)]
        loop = asyncio.get_running_loop()
        end = loop.time() + 8.0
        while loop.time() < end and pool.stats().limit < 8:
            await asyncio.sleep(0.1)
        stop = True
        await asyncio.gather(*tasks)
        s = pool.stats()
        assert s.limit >= 8, moves
        assert s.autosize is not None and s.autosize.budget is not None  # read from the server
        assert s.autosize.budget > s.limit
        assert all("->" in m for m in moves) and any(m.startswith("grow") for m in moves)


async def test_autosize_knows_its_budget_at_open_and_does_not_warn(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # max_size * instances far above max_connections is no misconfiguration with
    # autosize: the pool keeps to its share, read when it opens.
    async with asyncpool.create_pool(
        postgres_dsn, max_size=400, instances=50, autosize=True
    ) as pool:
        s = pool.stats()
        assert s.autosize is not None and s.autosize.budget is not None
        assert 0 <= s.autosize.budget < 400 // 50
    assert not [r for r in caplog.records if r.name == "asyncpool.budget"]


@pytest.mark.skipif(find_pg_bin() is None, reason="needs local PostgreSQL server binaries")
async def test_autosize_pools_share_a_small_servers_budget() -> None:
    # max_connections=20, 3 reserved for superusers: 14 for the pools after a headroom
    # of 3, 7 each for two instances. Each pool wants all 20 (pg_sleep does not queue).
    with PostgresServer(settings={"max_connections": "20"}) as server:
        pools = [
            asyncpool.Pool(
                server.dsn,
                name=f"fleet-{i}",
                min_size=1,
                max_size=20,
                autosize=True,
                instances=2,
                maintenance_interval=0.2,
            )
            for i in range(2)
        ]
        errors: list[BaseException] = []
        for pool in pools:
            pool.add_event_hook(
                lambda e: (
                    errors.append(e.error)
                    if e.kind is EventKind.CONNECT_FAILED and e.error is not None
                    else None
                )
            )
            await pool.open()
        stop = False

        async def borrower(pool: asyncpool.Pool) -> None:
            while not stop:
                try:
                    async with pool.acquire(timeout=2) as conn:
                        await conn.execute("SELECT pg_sleep(0.01)")
                except asyncpool.PoolTimeout:
                    pass

        tasks = [asyncio.create_task(borrower(p)) for p in pools for _ in range(25)]
        sizes: list[int] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 7.0
        while loop.time() < end:
            await asyncio.sleep(0.05)
            sizes.append(sum(p.stats().size for p in pools))
        stop = True
        await asyncio.gather(*tasks)
        limits = [p.stats().limit for p in pools]
        budgets: list[Any] = [p.stats().autosize.budget for p in pools]  # type: ignore[union-attr]
        for pool in pools:
            await pool.close()
    assert errors == []  # no "too many clients"
    assert max(sizes) <= 14
    assert all(b is not None and b <= 7 for b in budgets), budgets
    assert min(limits) >= 0.8 * max(limits), limits  # shares within 20 % of each other
    assert max(limits) == 7, limits
