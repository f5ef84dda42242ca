"""A property-based model test of the pool's state machine (Hypothesis stateful testing).

Rules start borrowers (with or without a deadline), release them (clean, after a SET,
inside a transaction, with a broken connection), cancel waiters (also in the same tick
as a hand-off), advance a virtual clock, complete or fail the fake server's held
connects, break idle connections, resize, expire, close and terminate, in any order.
Each rule runs on one event loop per example and then lets it settle (``sleep(0)``
rounds only: nothing depends on wall-clock time on the virtual-clock loop).

After every rule the pool is compared with a reference model:

* every slot is counted exactly once (``check_invariants`` less its size bound, which a
  shrinking resize legitimately exceeds while borrowed connections are out);
* the borrowers holding a connection are exactly ``stats().in_use`` and hold distinct
  raw connections, none closed, in a transaction or with an unreset SET when lent;
* FIFO: no borrower is served while an older one still waits; a released connection
  goes to the oldest waiter, a new connection to the oldest waiter;
* no waiter waits while a connection is idle, and a waiter below ``max_size`` always has
  a connect in progress or scheduled;
* deadlines: a borrower times out exactly when the virtual clock passes its deadline;
* outcomes have causes: CancelledError only when cancelled, PoolClosed only after close,
  DatabaseUnavailable only after a failed connect with no connection open;
* after close or terminate, the fake server has no open connection.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,  # noqa: F401 - kept for readers extending the machine
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import asyncpool
from asyncpool import _pg
from tests.conftest import settle
from tests.fakes import FakeServer, check_invariants, check_slots
from tests.fuzzing import open_fakes

LOOP_KIND = os.environ.get("ASYNCPOOL_TEST_LOOP", "asyncio")
VIRTUAL_TIME = LOOP_KIND in ("asyncio", "debug")

SETTLE_ROUNDS = 25
STEP_LIMIT = 10.0  # real seconds a step may take before the watchdog aborts it


class StepWatchdog:
    """Fails a step that blocks (instead of hanging the suite): after ``STEP_LIMIT`` real
    seconds it wakes the loop, records every task's stack and cancels the step."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: tuple[float, asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self.report = ""
        threading.Thread(target=self._watch, daemon=True, name="model-watchdog").start()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                current = self.current
            if current is not None and time.monotonic() - current[0] > STEP_LIMIT:
                _started, loop, task = current
                try:
                    loop.call_soon_threadsafe(self._abort, loop, task)
                except RuntimeError:
                    pass
                with self.lock:
                    if self.current is current:
                        self.current = None

    def _abort(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        out = io.StringIO()
        print(f"step blocked; ready={list(getattr(loop, '_ready', []))}", file=out)
        for t in asyncio.all_tasks(loop):
            print(f"--- {t!r}", file=out)
            t.print_stack(limit=10, file=out)
        self.report = out.getvalue()
        task.cancel()

    def start(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        with self.lock:
            self.current = (time.monotonic(), loop, task)

    def stop(self) -> None:
        with self.lock:
            self.current = None


WATCHDOG = StepWatchdog()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test advances it.

    The machine only ever runs ``sleep(0)`` rounds, so the loop never blocks waiting
    for a timer: timers (deadlines, backoff, close timeout) fire exactly when
    :meth:`advance` passes them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def new_loop() -> asyncio.AbstractEventLoop:
    if LOOP_KIND == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    loop = VirtualClockLoop()
    loop.set_debug(LOOP_KIND == "debug")
    return loop


@dataclass
class Borrower:
    n: int  # arrival order
    timeout: float | None
    deadline: float | None
    task: asyncio.Task[None] | None = None
    conn: asyncpool.PooledConnection | None = None
    raw: Any = None
    outcome: str = "waiting"  # holding, released, cancelled, timeout, closed, ...
    served: bool = False
    cancelled_by_us: bool = False

    def __repr__(self) -> str:
        return f"B{self.n}:{self.outcome}"


class PoolMachine(RuleBasedStateMachine):
    """The pool over a FakeServer whose connects the rules complete or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = new_loop()
        self.server = FakeServer()
        self.server.hold_connects = True
        self.pool: asyncpool.Pool = None  # type: ignore[assignment]
        self.borrowers: list[Borrower] = []
        self.close_task: asyncio.Task[None] | None = None
        self.terminated = False
        self.expired = False
        self.connect_failed = False
        self.max_waiting: int | None = None
        self.steps = 0

    # ------------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, Any] | None = None) -> Any:
        self.steps += 1

        async def step() -> Any:
            result = None if coro is None else await coro
            await settle(SETTLE_ROUNDS)
            return result

        task = self.loop.create_task(step())
        WATCHDOG.start(self.loop, task)
        try:
            return self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise AssertionError(f"a step blocked the event loop:\n{WATCHDOG.report}") from None
        finally:
            WATCHDOG.stop()

    def teardown(self) -> None:
        loop = self.loop
        try:
            if self.pool is not None:
                self.pool.terminate()
            tasks = [b.task for b in self.borrowers if b.task is not None and not b.task.done()]
            if self.close_task is not None:
                tasks.append(self.close_task)
            for t in tasks:
                t.cancel()
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in leftovers:
                t.cancel()
            if leftovers or tasks:
                loop.run_until_complete(asyncio.wait(leftovers + tasks))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _borrow(self, b: Borrower) -> None:
        try:
            conn = await self.pool.acquire(timeout=b.timeout)
        except asyncio.CancelledError:
            b.outcome = "cancelled"
            raise
        except asyncpool.PoolTimeout:
            b.outcome = "timeout"
            return
        except asyncpool.PoolClosed:
            b.outcome = "closed"
            return
        except asyncpool.DatabaseUnavailable:
            b.outcome = "unavailable"
            return
        except asyncpool.TooManyWaiters:
            b.outcome = "too-many-waiters"
            return
        b.conn = conn
        b.raw = conn.raw_connection
        b.outcome = "holding"
        b.served = True
        self.check_lent(b)

    def check_lent(self, b: Borrower) -> None:
        raw = b.raw
        assert not raw.closed or self.is_down_closed(), f"{b} was lent closed {raw!r}"
        assert not raw.in_transaction, f"{b} was lent {raw!r} inside a transaction"
        for query in reversed(raw.queries):
            if query == _pg.FULL_RESET_SQL:
                break
            assert not query.startswith("SET"), f"{b} was lent {raw!r} with {query!r}"

    def is_down_closed(self) -> bool:
        return self.terminated or self.pool.closed

    # -------------------------------------------------------------------- views

    def waiting(self) -> list[Borrower]:
        return [b for b in self.borrowers if b.outcome == "waiting"]

    def holding(self) -> list[Borrower]:
        return [b for b in self.borrowers if b.outcome == "holding"]

    def live_gates(self) -> list[asyncio.Future[None]]:
        pending = self.server.pending
        while pending and pending[0].done():  # a cancelled connect left its gate behind
            pending.popleft()
        return [g for g in pending if not g.done()]

    def healthy_idle(self) -> int:
        return sum(1 for s in self.pool._idle if not s.conn.closed)

    def is_open(self) -> bool:
        return not self.pool.closed and not self.terminated

    # -------------------------------------------------------------------- rules

    @initialize(
        max_size=st.integers(1, 4),
        concurrency=st.integers(1, 3),
        max_waiting=st.none() | st.integers(0, 3),
    )
    def open_pool(self, max_size: int, concurrency: int, max_waiting: int | None) -> None:
        self.max_waiting = max_waiting
        self.pool = asyncpool.Pool(
            connect=self.server.connect,
            min_size=0,
            max_size=max_size,
            connect_concurrency=concurrency,
            max_waiting=max_waiting,
            acquire_timeout=10_000.0,
            ping_after_idle=None,
            keepalive_interval=None,
            max_idle=None,
            max_lifetime=None,
            maintenance_interval=1e7,
            connect_timeout=1e7,
            # On a real-time loop (uvloop) a retry timer would fire at an unpredictable
            # step and make examples irreproducible: keep it out of reach there.
            reconnect_initial_delay=0.5 if VIRTUAL_TIME else 1e6,
            reconnect_max_delay=2.0 if VIRTUAL_TIME else 1e6,
            close_timeout=10.0,
            budget_check="off",
            # The model is first come, first served; the adaptive discipline under
            # overload has its own deterministic tests (tests/test_overload.py).
            overload="fifo",
        )
        self.run(self.pool.open())

    @rule(timeout=st.sampled_from([None, 0.0, 1.0, 3.0] if VIRTUAL_TIME else [None, 0.0]))
    def acquire(self, timeout: float | None) -> None:
        pool = self.pool
        before = pool.stats()
        fast = self.is_open() and self.healthy_idle() > 0 and before.waiting == 0
        refused = (
            self.is_open()
            and self.max_waiting is not None
            and not fast
            and (before.waiting >= self.max_waiting)
        )
        deadline = None if timeout is None else self.loop.time() + timeout
        b = Borrower(len(self.borrowers), timeout, deadline)
        self.borrowers.append(b)
        b.task = self.loop.create_task(self._borrow(b))
        self.run()
        if not self.is_open():
            assert b.outcome == "closed", b
        elif fast:
            assert b.outcome == "holding", (b, before)
        elif refused and not pool._down:
            assert b.outcome == "too-many-waiters", (b, before)

    @precondition(lambda self: any(b.outcome == "holding" for b in self.borrowers))
    @rule(data=st.data(), how=st.sampled_from(["clean", "set", "tx", "broken"]))
    def release(self, data: st.DataObject, how: str) -> None:
        b = data.draw(st.sampled_from(self.holding()))
        conn, raw = b.conn, b.raw
        assert conn is not None
        if how == "set" and not raw.closed:
            self.run(conn.execute("SET work_mem = '1GB'"))
        elif how == "tx" and not raw.closed:
            self.run(conn.execute("BEGIN"))
        elif how == "broken":
            raw.terminate()
        waiting = self.waiting()
        predictable = (
            self.is_open()
            and not raw.closed
            and not self.expired
            and self.pool.stats().size - self.pool.stats().closing <= self.pool.config.max_size
        )
        b.outcome = "released"
        b.conn = None
        self.run(self.pool.release(conn))
        if predictable and waiting:
            oldest = waiting[0]
            assert oldest.outcome == "holding" and oldest.raw is raw, (oldest, waiting, raw)
        elif predictable:
            assert raw in [s.conn for s in self.pool._idle], "a clean release goes idle"

    @precondition(lambda self: any(b.outcome == "waiting" for b in self.borrowers))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        b = data.draw(st.sampled_from(self.waiting()))
        others = {x.n: x.outcome for x in self.borrowers if x is not b}
        assert b.task is not None
        b.cancelled_by_us = True
        b.task.cancel()
        self.run()
        assert b.outcome == "cancelled", b
        assert {x.n: x.outcome for x in self.borrowers if x is not b} == others

    @precondition(
        lambda self: (
            any(b.outcome == "holding" for b in self.borrowers)
            and any(b.outcome == "waiting" for b in self.borrowers)
        )
    )
    @rule(data=st.data())
    def release_and_cancel_oldest_in_same_tick(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.holding()))
        waiting = self.waiting()
        first = waiting[0]
        conn, raw = holder.conn, holder.raw
        assert conn is not None and first.task is not None
        predictable = (
            self.is_open()
            and not raw.closed
            and not self.expired
            and (self.pool.stats().size - self.pool.stats().closing <= self.pool.config.max_size)
        )
        holder.outcome = "released"
        holder.conn = None

        async def race() -> None:
            await self.pool.release(conn)  # hands the connection to `first`...
            first.cancelled_by_us = True
            first.task.cancel()  # ...which is cancelled before it could run

        self.run(race())
        assert first.outcome == "cancelled", first
        if predictable and len(waiting) > 1:
            assert waiting[1].outcome == "holding" and waiting[1].raw is raw, waiting
        elif predictable:
            assert raw in [s.conn for s in self.pool._idle], "passed on to idle"

    @precondition(lambda self: VIRTUAL_TIME)
    @rule(dt=st.sampled_from([0.25, 1.0, 2.5, 20.0]))
    def advance(self, dt: float) -> None:
        loop = self.loop
        assert isinstance(loop, VirtualClockLoop)
        waiting = self.waiting()
        loop.now += dt
        self.run()
        for b in waiting:
            if b.outcome == "waiting":
                assert b.deadline is None or b.deadline > loop.now, b

    def keeps_new_connection(self) -> bool:
        """A completing connect goes to the oldest waiter, or idle, unless max_size shrank
        below the connections already open or opening (then it is retired at once)."""
        stats = self.pool.stats()
        return stats.size - stats.closing <= stats.max_size

    @precondition(lambda self: bool(self.live_gates()))
    @rule()
    def complete_connect(self) -> None:
        waiting = self.waiting()
        keeps = self.is_open() and not self.expired and self.keeps_new_connection()
        opened = self.server.opened
        self.server.release_connect()
        self.run()
        new = self.server.connections[opened] if self.server.opened > opened else None
        assert new is not None
        if keeps and waiting:
            assert waiting[0].outcome == "holding" and waiting[0].raw is new, waiting
        elif keeps:
            assert new in [s.conn for s in self.pool._idle]
        elif self.is_open() and not self.expired:
            # Above a shrunk max_size the new connection closes, even while borrowers
            # wait: they are served within the limit.
            assert new.closed, f"{new!r} kept above max_size"
            assert all(b.outcome != "holding" or b.raw is not new for b in waiting)

    @precondition(lambda self: len(self.live_gates()) > 1)
    @rule()
    def complete_all_connects(self) -> None:
        waiting = self.waiting()
        gates = self.live_gates()
        opened = self.server.opened
        for _ in gates:
            self.server.release_connect()
        self.run()
        new = self.server.connections[opened:]
        assert len(new) == len(gates)
        if self.is_open():  # served waiters are the oldest ones, with connections in order
            served = [b for b in waiting if b.outcome == "holding"]
            assert served == waiting[: len(served)], (served, waiting)
            order = [new.index(b.raw) for b in served]
            assert order == sorted(order), (served, new)

    @precondition(lambda self: bool(self.live_gates()))
    @rule()
    def fail_connect(self) -> None:
        pool = self.pool
        open_before = pool._table.open_count()
        waiting = self.waiting()
        self.connect_failed = True
        self.server.release_connect(ConnectionRefusedError("model: refused"))
        self.run()
        if self.is_open() and open_before == 0:
            for b in waiting:
                assert b.outcome == "unavailable", b
        elif self.is_open():
            for b in waiting:
                assert b.outcome in ("waiting", "holding"), b

    @precondition(lambda self: any(b.outcome == "holding" for b in self.borrowers))
    @rule(data=st.data())
    def break_held_connection(self, data: st.DataObject) -> None:
        b = data.draw(st.sampled_from(self.holding()))
        b.raw.terminate()  # lost while borrowed (server restart, network)
        self.run()

    @precondition(lambda self: self.pool is not None and self.pool.stats().idle > 0)
    @rule(data=st.data())
    def break_idle_connection(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(list(self.pool._idle)))
        slot.conn.terminate()
        self.run()

    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        max_size = data.draw(st.integers(1, 4))
        min_size = data.draw(st.integers(0, max_size))
        self.pool.resize(min_size=min_size, max_size=max_size)
        self.run()

    @precondition(lambda self: self.steps >= 10)
    @rule()
    def expire(self) -> None:
        self.expired = True
        self.pool.expire()
        self.run()

    @precondition(
        lambda self: (
            self.close_task is None
            and not self.terminated
            and self.steps >= 12
            and len(self.borrowers) >= 4
        )
    )
    @rule(timeout=st.sampled_from([0.0, 1.0, 50.0] if VIRTUAL_TIME else [0.0, 1000.0]))
    def close(self, timeout: float) -> None:
        waiting = self.waiting()
        self.close_task = self.loop.create_task(self.pool.close(timeout=timeout))
        self.run()
        for b in waiting:
            assert b.outcome == "closed", b

    @precondition(
        lambda self: not self.terminated and self.steps >= 20 and len(self.borrowers) >= 4
    )
    @rule()
    def terminate(self) -> None:
        waiting = self.waiting()
        self.terminated = True
        self.pool.terminate()
        self.run()
        for b in waiting:
            assert b.outcome == "closed", b
        assert open_fakes(self.server) == 0

    # --------------------------------------------------------------- invariants

    @invariant()
    def bookkeeping(self) -> None:
        if self.pool is None:
            return
        pool = self.pool
        check_slots(pool)
        stats = pool.stats()
        active = stats.size - stats.closing
        if active > stats.max_size:
            # Above a shrunk max_size only connections that are borrowed, or were already
            # connecting when it shrank, may remain; none may sit idle.
            assert stats.idle == 0, pool
        if not pool.closed and not self.terminated:
            check_invariants_if_within_max(pool)

    @invariant()
    def borrowed_connections_match(self) -> None:
        if self.pool is None:
            return
        holders = self.holding()
        raws = [id(b.raw) for b in holders]
        assert len(set(raws)) == len(raws), "a connection is lent to two borrowers"
        if not self.terminated and not (self.close_task and self.close_task.done()):
            assert self.pool.stats().in_use == len(holders), (self.pool, holders)

    @invariant()
    def fifo(self) -> None:
        for w in self.waiting():
            younger_served = [b for b in self.borrowers if b.n > w.n and b.served]
            assert not younger_served, (w, younger_served)

    @invariant()
    def progress(self) -> None:
        if self.pool is None or not self.is_open():
            return
        pool = self.pool
        stats = pool.stats()
        if stats.waiting:
            assert stats.idle == 0 or self.healthy_idle() == 0, f"stranded waiter: {pool!r}"
            active = stats.size - stats.closing
            assert (
                stats.connecting
                or stats.returning
                or active >= stats.max_size
                or pool._retry_handle is not None
            ), f"nobody connects for waiters: {pool!r}"

    @invariant()
    def outcomes_have_causes(self) -> None:
        now = self.loop.time()
        for b in self.borrowers:
            assert b.task is not None
            if b.task.done() and not b.task.cancelled() and b.task.exception() is not None:
                raise b.task.exception()  # type: ignore[misc]
            if b.outcome == "cancelled":
                assert b.cancelled_by_us, b
            elif b.outcome == "closed":
                assert self.pool.closed or self.terminated, b
            elif b.outcome == "unavailable":
                assert self.connect_failed, b
            elif b.outcome == "too-many-waiters":
                assert self.max_waiting is not None, b
            elif b.outcome == "timeout" and VIRTUAL_TIME:
                assert b.deadline is not None and b.deadline <= now, b
            elif b.outcome == "waiting" and VIRTUAL_TIME and b.deadline is not None:
                assert b.deadline > now, b

    @invariant()
    def closed_means_nothing_open(self) -> None:
        if self.terminated or (self.close_task is not None and self.close_task.done()):
            assert self.pool.stats().size == 0, self.pool
            assert open_fakes(self.server) == 0, self.server.connections


def check_invariants_if_within_max(pool: asyncpool.Pool) -> None:
    stats = pool.stats()
    if stats.size <= stats.max_size + stats.closing:
        check_invariants(pool)


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.fixture
def no_stall_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model holds connects for as long as it likes while borrowers wait (and moves a
    virtual clock): it does not model the pool giving up a stalled connect to try afresh
    (tests/test_reliability_pg.py tests that on a real half-open network)."""
    import asyncpool._workers

    monkeypatch.setattr(asyncpool._workers, "stall_limit", lambda estimate: float("inf"))


@pytest.mark.usefixtures("no_stall_cuts")
def test_pool_matches_model() -> None:
    examples = 120 if LOOP_KIND == "debug" else 300  # debug mode runs ~3x slower
    run_state_machine_as_test(PoolMachine, settings=_settings(examples, 40))


@pytest.mark.long
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("no_stall_cuts")
def test_pool_matches_model_long() -> None:
    run_state_machine_as_test(PoolMachine, settings=_settings(5000, 80))


# ------------------------------------------------------------------ regression tests

# Defect 2 (fixed in ebd3d2c): connects and resets that completed after resize() shrank
# max_size went through _hand_over(), which made them idle without checking max_size, so
# the pool stayed above max_size until max_idle or max_lifetime retired the extra ones.


async def test_resize_down_while_connects_in_flight_keeps_max_size(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = make_fake_pool(min_size=0, max_size=3, connect_concurrency=3)
    await pool.open()
    fake_server.hold_connects = True
    waiters = [asyncio.ensure_future(pool.acquire()) for _ in range(3)]
    await fake_server.wait_pending(3)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    pool.resize(max_size=1)
    for _ in range(3):
        fake_server.release_connect()
    await settle(10)
    stats = pool.stats()
    assert stats.size - stats.closing <= 1, pool
    check_invariants(pool)


async def test_resize_down_while_resets_in_flight_keeps_max_size(make_fake_pool: Any) -> None:
    pool = make_fake_pool(min_size=0, max_size=3)
    await pool.open()
    conns = [await pool.acquire() for _ in range(3)]
    for conn in conns:
        await conn.execute("SET work_mem = '1GB'")  # release will reset in the background
    for conn in conns:
        await pool.release(conn)
    assert pool.stats().returning == 3
    pool.resize(max_size=1)
    await settle(10)
    stats = pool.stats()
    assert stats.size - stats.closing <= 1, pool
    check_invariants(pool)
