"""Shared helpers for the cancellation fuzzer, the pool model and the fork/loop tests.

A :class:`Borrower` follows a *plan* (plain queries, a transaction, a SET that makes
release reset the session, a slow query, a connection that breaks while borrowed),
marks every await point it reaches with :meth:`Borrower.at`, and is cancelled by one
*mechanism*:

* ``task``: ``Task.cancel()`` from outside;
* ``timeout``: ``asyncio.timeout`` expiring;
* ``wait_for``: ``asyncio.wait_for`` around the acquire expiring;
* ``taskgroup``: a sibling failing in an ``asyncio.TaskGroup``;
* ``anyio_scope``: ``anyio.CancelScope.cancel()`` (level-triggered, as Starlette uses it);
* ``anyio_move_on`` / ``anyio_fail_after``: anyio deadlines expiring;
* ``anyio_tg``: a sibling failing in an anyio task group.

It strikes either when the borrower reaches a chosen await point (then after 0-4
further loop iterations, so it also lands *inside* the await: while queued, after a
hand-off but before the task resumed, mid-query ...) or at a random time. Every
``CancelledError`` a borrower observes is tallied by mechanism, by the borrower's step
and by the innermost frame it struck in (``pool.__aenter__``, ``pool._probe``,
``fake.execute``, ``asyncpg...``). :class:`Fuzzer` runs waves of borrowers over pools of
random configuration and after each wave proves that nothing leaked.
"""

from __future__ import annotations

import asyncio
import math
import random
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import asyncpool
from asyncpool import _pg
from tests.fakes import FakeServer, check_invariants

# ------------------------------------------------------------------------ vocabulary

MECHANISMS = (
    "none",
    "task",
    "timeout",
    "wait_for",
    "taskgroup",
    "anyio_scope",
    "anyio_move_on",
    "anyio_fail_after",
    "anyio_tg",
)
#: Mechanisms that can be aimed at a given await point.
PHASE_MECHANISMS = tuple(m for m in MECHANISMS if m not in ("none", "wait_for"))

PLANS: dict[str, tuple[str, ...]] = {
    "query": ("query",),
    "tx": ("begin", "tx-query", "commit"),
    "set": ("set", "query"),
    "slow": ("slow",),
    "break": ("query", "break"),
}


def plan_steps(plan: str) -> tuple[str, ...]:
    """Every await point a borrower following ``plan`` marks, in order."""
    return ("acquire", *PLANS[plan], "release", "after-release")


class Boom(Exception):
    """A task-group sibling failing on purpose (makes the group cancel the borrower)."""


#: The innermost pool frames of a borrower queued for a connection.
QUEUED_FRAMES = ("pool.__aenter__",)


def where(exc: BaseException) -> str:
    """Where an exception struck: the innermost method of the pool it went through
    ("pool.__aenter__", "pool._probe" ...), else the innermost fake, asyncpg or test frame."""
    pool_label = other = "?"
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        name = tb.tb_frame.f_code.co_name
        if "/asyncpool/" in filename and "/tests/" not in filename:
            if not filename.endswith("/_pg.py"):
                pool_label = f"pool.{name}"
        elif filename.endswith("tests/fakes.py"):
            other = f"fake.{name}"
        elif "/asyncpg/" in filename or filename.endswith(".pyx"):
            other = f"asyncpg.{name}"
        elif "/tests/" in filename:
            other = f"test.{name}"
        tb = tb.tb_next
    return pool_label if pool_label != "?" else other


def open_fakes(server: FakeServer) -> int:
    """Open fake connections, counted one by one (``FakeServer.open_count`` goes wrong
    when the pool gracefully closes a connection that was already terminated:
    ``FakeConnection.close()`` counts a second close, where asyncpg's is a no-op)."""
    return sum(1 for c in server.connections if not c.closed)


def leaves(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


# ---------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """What a fuzz run did: deliveries by mechanism and await point, and outcomes."""

    delivered: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    task_cancel_true: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    borrows: int = 0
    borrowers: int = 0
    waves: int = 0
    pools: int = 0
    closes_under_load: int = 0
    unexpected: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Cancellations that actually interrupted a borrower."""
        return sum(self.delivered.values())

    def by(self, index: int) -> Counter[str]:
        """Deliveries grouped by mechanism (0), step (1) or frame (2)."""
        out: Counter[str] = Counter()
        for key, n in self.delivered.items():
            out[key[index]] += n
        return out

    def report(self, title: str) -> str:
        """A human-readable summary (printed by the tests)."""
        lines = [
            f"== {title}: {self.total} cancellations delivered to {self.borrowers} borrowers "
            f"({self.borrows} borrows) in {self.waves} waves over {self.pools} pools "
            f"({self.closes_under_load} closed under load)",
            f"   fired: {dict(sorted(self.fired.items()))}; Task.cancel() returned True "
            f"{self.task_cancel_true} times",
            f"   by mechanism: {dict(sorted(self.by(0).items()))}",
            f"   by step:      {dict(sorted(self.by(1).items()))}",
            f"   by frame:     {dict(sorted(self.by(2).items()))}",
            f"   outcomes:     {dict(sorted(self.outcomes.items()))}",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------- backends


class FakeBackend:
    """Borrower actions and server-side checks over ``tests.fakes.FakeServer``."""

    kind = "fake"
    broken_errors: tuple[type[BaseException], ...] = (ConnectionResetError,)

    def __init__(self) -> None:
        self.server = FakeServer()

    def random_config(self, rng: random.Random) -> dict[str, Any]:
        self.server = FakeServer()
        self.server.connect_delay = rng.choice([0.0, 0.0, 1e-4, 1e-3])
        delays = rng.choice([(0.0,), (1e-5,), (0.0, 1e-5, 2e-4)])
        server = self.server

        async def connect(*args: Any, **kwargs: Any) -> Any:
            conn = await server.connect(*args, **kwargs)
            conn.query_delay = rng.choice(delays)
            return conn

        max_size = rng.randint(1, 6)
        return {
            "connect": connect,
            "max_size": max_size,
            "min_size": rng.randint(0, max_size),
            "reset": rng.choice(["auto", "auto", "full", "rollback"]),
            "ping_after_idle": rng.choice([None, None, 0.0, 0.001]),
            "connect_concurrency": rng.randint(1, 3),
            "setup": rng.choice([None, None, None, _setup_hook]),
            "max_uses": rng.choice([None, None, 3]),
            "max_waiting": rng.choice([None, None, None, 25]),
            "max_lifetime": rng.choice([None, None, 0.05]),
            "keepalive_interval": rng.choice([None, None, 0.004]),
            "maintenance_interval": 0.005,
            "acquire_timeout": 10.0,
            "reconnect_initial_delay": 0.001,
            "reconnect_max_delay": 0.004,
            "close_timeout": 1.0,
            "budget_check": "off",  # the fake server cannot answer the budget queries
        }

    def max_delay(self) -> float:
        return 0.003

    def acquire_timeouts(self) -> list[float | None]:
        return [None, None, None, 0.0, 0.0005, 0.002, 0.01]

    def start_outage(self, rng: random.Random) -> float:
        self.server.fail_with = ConnectionRefusedError("fuzz: connection refused")
        return rng.uniform(0.0005, 0.004)

    def end_outage(self) -> None:
        self.server.fail_with = None

    async def query(self, conn: Any) -> None:
        await conn.execute("SELECT 1")

    async def tx(self, conn: Any, b: Borrower) -> None:
        b.at("begin")
        await conn.execute("BEGIN")
        b.at("tx-query")
        await conn.execute("SELECT 1")
        b.at("commit")
        await conn.execute("COMMIT")

    async def set(self, conn: Any) -> None:
        await conn.execute("SET work_mem = '64MB'")

    async def slow(self, conn: Any, rng: random.Random) -> None:
        await conn.execute("SELECT pg_sleep(0.001)")
        await asyncio.sleep(rng.uniform(0, 0.002))

    async def breaks(self, conn: Any, rng: random.Random) -> None:
        conn.terminate()  # the connection dies while borrowed
        await asyncio.sleep(0)  # ... and the borrower carries on for a moment
        if rng.random() < 0.5:
            await conn.execute("SELECT 1")  # ConnectionResetError

    def check_lent(self, raw: Any, pool: asyncpool.Pool) -> None:
        """A connection the pool lends is open, outside a transaction, and (when the
        pool resets sessions) carries no SET from an earlier borrower."""
        assert not raw.closed, f"lent a closed connection {raw!r}"
        assert not raw.in_transaction, f"lent {raw!r} inside a transaction"
        if pool.config.reset in ("auto", "full"):
            for query in reversed(raw.queries):
                if query == _pg.FULL_RESET_SQL:
                    break
                assert not query.startswith("SET"), f"lent {raw!r} with {query!r} not reset"
        raw.queries.clear()
        self.server.queries.clear()

    async def verify(self, conn: Any) -> None:
        assert await conn.fetchval("SELECT 1") == 1

    async def check_server(self, pool: asyncpool.Pool) -> None:
        """The fake server's open connections are exactly the pool's."""
        open_conns = {id(c) for c in self.server.connections if not c.closed}
        owned = {id(s.conn) for s in pool._slots if s.conn is not None}
        assert open_conns == owned, (len(open_conns), len(owned), pool)
        assert open_fakes(self.server) == pool.stats().size, (open_fakes(self.server), pool)
        # Forget closed connections (keeps long runs small).
        self.server.connections = [c for c in self.server.connections if not c.closed]

    async def check_all_closed(self, pool: asyncpool.Pool) -> None:
        assert open_fakes(self.server) == 0, (open_fakes(self.server), pool)


class RealBackend:
    """Borrower actions and server-side checks on a real PostgreSQL (pg_stat_activity)."""

    kind = "real"

    def __init__(self, dsn: str, admin: Any, default_work_mem: str) -> None:
        import asyncpg

        self.dsn = dsn
        self.admin = admin
        self.default_work_mem = default_work_mem
        self.app = ""
        self.broken_errors = (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.AdminShutdownError,
            ConnectionError,
        )

    def random_config(self, rng: random.Random) -> dict[str, Any]:
        self.app = f"fuzz-{uuid.uuid4().hex[:12]}"
        max_size = rng.randint(2, 6)
        return {
            "dsn": self.dsn,
            "server_settings": {"application_name": self.app},
            "max_size": max_size,
            "min_size": rng.randint(0, max_size),
            "reset": rng.choice(["auto", "auto", "full"]),
            "ping_after_idle": rng.choice([None, None, 0.0]),
            "connect_concurrency": rng.randint(1, 3),
            "setup": rng.choice([None, None, None, _setup_hook]),
            "max_uses": rng.choice([None, None, 5]),
            "keepalive_interval": None,
            "max_lifetime": None,
            "acquire_timeout": 10.0,
            "close_timeout": 2.0,
        }

    def max_delay(self) -> float:
        return 0.01

    def acquire_timeouts(self) -> list[float | None]:
        return [None, None, None, 0.0, 0.001, 0.005, 0.05]

    def start_outage(self, rng: random.Random) -> float:  # pragma: no cover - not used
        raise NotImplementedError

    def end_outage(self) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    async def query(self, conn: Any) -> None:
        assert await conn.fetchval("SELECT 1") == 1

    async def tx(self, conn: Any, b: Borrower) -> None:
        b.at("begin")
        async with conn.transaction():
            b.at("tx-query")
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS fuzz_t (x int) ON COMMIT DROP")
            await conn.fetchval("SELECT pg_sleep(0.0005)")
            b.at("commit")

    async def set(self, conn: Any) -> None:
        await conn.execute("SET work_mem = '64MB'")

    async def slow(self, conn: Any, rng: random.Random) -> None:
        await conn.fetchval("SELECT pg_sleep($1)", rng.uniform(0.0005, 0.006))

    async def breaks(self, conn: Any, rng: random.Random) -> None:
        if rng.random() < 0.5:
            conn.terminate()  # the client aborts the connection
            await asyncio.sleep(0)
        else:  # the server kills it: the query fails with AdminShutdownError
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    def check_lent(self, raw: Any, pool: asyncpool.Pool) -> None:
        assert not raw.is_closed(), f"lent a closed connection {raw!r}"
        assert not raw.is_in_transaction(), f"lent {raw!r} inside a transaction"
        assert not _pg.needs_rollback(raw), f"lent {raw!r} with a pending cancel/transaction"

    async def verify(self, conn: Any) -> None:
        row = await conn.fetchrow("SELECT current_setting('work_mem') AS wm, 1 AS one")
        assert row["one"] == 1
        assert row["wm"] == self.default_work_mem, f"session state leaked: work_mem={row['wm']}"
        assert not conn.is_in_transaction()

    async def server_count(self) -> int:
        return int(
            await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", self.app
            )
        )

    async def check_server(self, pool: asyncpool.Pool) -> None:
        """pg_stat_activity shows exactly the pool's connections (backends of aborted
        connections exit asynchronously: poll, bounded)."""
        n = -1
        for _ in range(500):
            n = await self.server_count()
            if n == pool.stats().size:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"server has {n} connections for {self.app}, pool has {pool!r}")

    async def check_all_closed(self, pool: asyncpool.Pool) -> None:
        n = -1
        for _ in range(500):
            n = await self.server_count()
            if n == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} server connections left open by closed pool {pool!r}")


async def _setup_hook(conn: Any) -> None:
    await conn.execute("SELECT 'setup'")


Backend = FakeBackend | RealBackend


# ------------------------------------------------------------------------- borrower


@dataclass
class Spec:
    """What one borrower does and how it is cancelled."""

    plan: str = "query"
    style: str = "with"  # "with": async with pool.acquire(); "explicit": acquire + release
    timeout: float | None = None
    mech: str = "none"
    mode: str = "phase"  # "phase": at an await point; "random": after `delay` seconds
    target: str = "acquire"
    hops: int = 0
    delay: float = 0.0

    @classmethod
    def random(cls, rng: random.Random, backend: Backend) -> Spec:
        plan = rng.choice(list(PLANS))
        mech = rng.choices(MECHANISMS, weights=(2, 3, 2, 1, 2, 2, 2, 1, 1))[0]
        style = "explicit" if mech == "wait_for" else rng.choice(("with", "explicit"))
        mode = "random" if mech == "wait_for" else rng.choice(("phase", "phase", "random"))
        return cls(
            plan=plan,
            style=style,
            timeout=rng.choice(backend.acquire_timeouts()),
            mech=mech,
            mode=mode,
            target=rng.choice(plan_steps(plan)),
            hops=rng.randrange(5),
            delay=rng.uniform(0, backend.max_delay()),
        )


class Borrower:
    """One borrower task: borrows once following its :class:`Spec`."""

    def __init__(self, fz: Fuzzer, spec: Spec, rng: random.Random) -> None:
        self.fz = fz
        self.spec = spec
        self.rng = rng
        self.step = "start"
        self.fire: Callable[[], Any] | None = None
        self.fired = False
        self.done = False
        self.raw: Any = None
        self.outcome: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()

    # -- the strike ---------------------------------------------------------------

    def at(self, step: str) -> None:
        """Mark an await point; strike here if this is the target."""
        self.step = step
        if self.spec.mode == "phase" and step == self.spec.target and not self.fired:
            self.fired = True
            self._hop(self.spec.hops)

    def _hop(self, n: int) -> None:
        if n == 0:
            self._strike()
        else:
            self.loop.call_soon(self._hop, n - 1)

    def _strike(self) -> None:
        if self.done or self.fire is None:
            return
        self.fz.tally.fired[self.spec.mech] += 1
        result = self.fire()
        if self.spec.mech == "task" and result:
            self.fz.tally.task_cancel_true += 1

    def _arm(self, fire: Callable[[], Any] | None) -> None:
        self.fire = fire
        if fire is not None and self.spec.mode == "random":
            self.fired = True
            self.loop.call_later(self.spec.delay, self._strike)

    # -- the borrow ---------------------------------------------------------------

    def took(self, conn: Any) -> None:
        raw = conn.raw_connection
        lent = self.fz.lent
        self.fz.tally.borrows += 1
        assert id(raw) not in lent, f"{raw!r} lent to two borrowers at once"
        lent[id(raw)] = raw
        self.raw = raw
        if not self.fz.closing:  # close() may terminate a connection handed to a waiter
            self.fz.backend.check_lent(raw, self.fz.pool)

    def giving_back(self) -> None:
        raw = self.raw
        if raw is None:
            return
        self.fz.lent.pop(id(raw), None)
        self.raw = None

    async def use(self, conn: Any) -> None:
        backend = self.fz.backend
        plan = self.spec.plan
        if plan == "query":
            self.at("query")
            await backend.query(conn)
        elif plan == "tx":
            await backend.tx(conn, self)
        elif plan == "set":
            self.at("set")
            await backend.set(conn)
            self.at("query")
            await backend.query(conn)
        elif plan == "slow":
            self.at("slow")
            await backend.slow(conn, self.rng)
        else:
            self.at("query")
            await backend.query(conn)
            self.at("break")
            await backend.breaks(conn, self.rng)

    async def body(self) -> None:
        pool = self.fz.pool
        spec = self.spec
        self.at("acquire")
        if spec.style == "with":
            async with pool.acquire(timeout=spec.timeout) as conn:
                try:
                    self.took(conn)
                    await self.use(conn)
                    self.at("release")
                finally:
                    self.giving_back()
        else:
            if spec.mech == "wait_for":
                conn = await asyncio.wait_for(pool.acquire(timeout=spec.timeout), spec.delay)
            else:
                conn = await pool.acquire(timeout=spec.timeout)
            try:
                self.took(conn)
                await self.use(conn)
                self.at("release")
            finally:
                self.giving_back()
                await pool.release(conn)
        self.at("after-release")
        await asyncio.sleep(0)

    async def guarded_body(self) -> None:
        try:
            await self.body()
        except asyncio.CancelledError as exc:
            self.fz.tally.delivered[(self.spec.mech, self.step, where(exc))] += 1
            raise
        except TimeoutError as exc:
            if self.spec.mech == "wait_for" and type(exc) is TimeoutError:
                self.fz.tally.delivered[("wait_for", self.step, "wait_for")] += 1
            raise
        finally:
            self.done = True

    async def run_mechanism(self) -> None:
        mech = self.spec.mech
        loop = self.loop
        if mech in ("none", "wait_for"):
            await self.guarded_body()
        elif mech == "task":
            task = asyncio.current_task()
            assert task is not None
            self._arm(task.cancel)
            await self.guarded_body()
        elif mech == "timeout":
            async with asyncio.timeout(None) as cm:
                self._arm(lambda: cm.reschedule(loop.time()))
                await self.guarded_body()
        elif mech == "taskgroup":
            trigger = asyncio.Event()

            async def failer() -> None:
                await trigger.wait()
                raise Boom

            async with asyncio.TaskGroup() as tg:
                sibling = tg.create_task(failer())
                self._arm(trigger.set)
                body = tg.create_task(self.guarded_body())
                body.add_done_callback(lambda _: sibling.cancel())
        elif mech == "anyio_scope":
            with anyio.CancelScope() as scope:
                self._arm(scope.cancel)
                await self.guarded_body()
        elif mech in ("anyio_move_on", "anyio_fail_after"):
            make = anyio.move_on_after if mech == "anyio_move_on" else anyio.fail_after
            if self.spec.mode == "random":
                with make(self.spec.delay):
                    self._arm(None)
                    await self.guarded_body()
            else:
                with make(math.inf) as scope:
                    self._arm(lambda: setattr(scope, "deadline", loop.time()))
                    await self.guarded_body()
        elif mech == "anyio_tg":
            event = anyio.Event()

            async def failer() -> None:
                await event.wait()
                raise Boom

            async def body_then_stop(tg: Any) -> None:
                try:
                    await self.guarded_body()
                finally:
                    tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(failer)
                self._arm(event.set)
                tg.start_soon(body_then_stop, tg)
        else:  # pragma: no cover
            raise AssertionError(mech)

    async def run(self) -> str:
        """Run and classify the outcome; unexpected ones are recorded, not raised."""
        self.task = asyncio.current_task()
        try:
            await self.run_mechanism()
        except BaseException as exc:  # every outcome is classified below
            labels = [self.classify(leaf) for leaf in leaves(exc)]
            label = "+".join(sorted(set(labels)))
        else:
            label = "ok"
        self.fz.tally.outcomes[label] += 1
        self.outcome = label
        return label

    def classify(self, exc: BaseException) -> str:
        spec = self.spec
        fz = self.fz
        if isinstance(exc, asyncio.CancelledError):
            if spec.mech == "task":
                return "cancelled"
        elif isinstance(exc, Boom):
            if spec.mech in ("taskgroup", "anyio_tg"):
                return "group-failed"
        elif isinstance(exc, asyncpool.PoolTimeout):
            if spec.timeout is not None:
                return "pool-timeout"
        elif type(exc) is TimeoutError:
            if spec.mech in ("timeout", "wait_for", "anyio_fail_after"):
                return "timeout"
        elif isinstance(exc, asyncpool.PoolClosed):
            if fz.closing:
                return "closed"
        elif isinstance(exc, asyncpool.DatabaseUnavailable):
            if fz.outage:
                return "unavailable"
        elif isinstance(exc, asyncpool.TooManyWaiters):
            if fz.pool.config.max_waiting is not None:
                return "too-many-waiters"
        elif isinstance(exc, fz.backend.broken_errors) and (spec.plan == "break" or fz.closing):
            return "broken"
        elif (
            isinstance(exc, AttributeError)
            and fz.closing
            and "'NoneType'" in str(exc)
            and where(exc).startswith("asyncpg.")
        ):
            # close() terminated the borrowed connection mid-query: asyncpg's terminate()
            # sets Connection._protocol to None under a running _do_execute().
            return "broken-by-close(asyncpg AttributeError)"
        text = "".join(traceback.format_exception(exc))
        fz.tally.unexpected.append(
            f"{spec} step={self.step} closing={fz.closing} outage={fz.outage} "
            f"pool={fz.pool!r}:\n{text}"
        )
        return f"UNEXPECTED:{type(exc).__name__}"


# --------------------------------------------------------------------------- fuzzer


class Fuzzer:
    """Waves of borrowers over pools of random configuration, checked after each wave."""

    def __init__(self, backend: Backend, seed: int, tally: Tally | None = None) -> None:
        self.backend = backend
        self.rng = random.Random(seed)
        self.seed = seed
        self.tally = tally or Tally()
        self.pool: asyncpool.Pool = None  # type: ignore[assignment]
        self.lent: dict[int, Any] = {}
        self.closing = False
        self.outage = False
        self.borrows_at_open = 0
        self.frames_at_open: Counter[str] = Counter()

    async def run(
        self,
        target: int,
        *,
        waves: tuple[int, int] = (2, 6),
        borrowers: tuple[int, int] = (20, 120),
    ) -> Tally:
        """Run pools until at least ``target`` cancellations were delivered."""
        while self.tally.total < target:
            await self.one_pool(waves, borrowers)
        return self.tally

    async def one_pool(self, waves: tuple[int, int], borrowers: tuple[int, int]) -> None:
        """Open a pool of random configuration, run waves over it, close it (sometimes
        under load) and check that the server has no connection left."""
        rng = self.rng
        pool = await self.open_pool()
        try:
            n_waves = rng.randint(*waves)
            close_under_load = rng.random() < 0.3
            for i in range(n_waves):
                last = i == n_waves - 1
                batch = [Spec.random(rng, self.backend) for _ in range(rng.randint(*borrowers))]
                await self.wave(batch, close=last and close_under_load)
                if not (last and close_under_load):
                    await self.check_settled()
            await self.finish_pool(closed=close_under_load)
        finally:
            pool.terminate()

    async def open_pool(self, **overrides: Any) -> asyncpool.Pool:
        config = self.backend.random_config(self.rng)
        config.update(overrides)
        self.pool = pool = asyncpool.Pool(**config)
        self.closing = False
        self.tally.pools += 1
        self.borrows_at_open = self.tally.borrows
        self.frames_at_open = self.tally.by(2)
        await pool.open()
        return pool

    async def finish_pool(self, *, closed: bool = False) -> None:
        pool = self.pool
        if not closed:
            await asyncio.wait_for(pool.close(), 10)
        assert pool.stats().size == 0, pool
        await self.backend.check_all_closed(pool)

    async def wave(self, specs: list[Spec], *, close: bool = False) -> None:
        rng = self.rng
        pool = self.pool
        loop = asyncio.get_running_loop()
        self.tally.waves += 1
        tasks = []
        borrowers = []
        for spec in specs:
            b = Borrower(self, spec, random.Random(rng.random()))
            borrowers.append(b)
            tasks.append(loop.create_task(b.run(), name=f"borrower {spec}"))
            self.tally.borrowers += 1
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        outage = isinstance(self.backend, FakeBackend) and not close and rng.random() < 0.15
        if outage:
            self.outage = True
            await asyncio.sleep(rng.uniform(0, 0.002))
            await asyncio.sleep(self.backend.start_outage(rng))
            self.backend.end_outage()
        if close:
            self.closing = True
            self.tally.closes_under_load += 1
            await asyncio.sleep(rng.uniform(0, 0.004))
            closer = loop.create_task(pool.close(timeout=rng.choice([0.0, 0.002, 0.05, 1.0])))
            if rng.random() < 0.25:
                await asyncio.sleep(rng.uniform(0, 0.002))
                closer.cancel()
            await asyncio.wait([closer], timeout=20)
            assert closer.done(), f"close() hangs: {pool!r}"
            if not closer.cancelled():
                closer.result()
        done, pending = await asyncio.wait(tasks, timeout=30)
        if pending:
            stacks = []
            for t in list(pending)[:5]:
                stacks.append(
                    f"{t.get_name()}:\n"
                    + "".join(traceback.format_stack(t.get_stack()[-1] if t.get_stack() else None))
                )
                t.cancel()
            raise AssertionError(
                f"{len(pending)} borrowers hang on {pool!r} (seed "
                f"{self.seed}):\n" + "\n".join(stacks)
            )
        # A task can end cancelled only if its own Task.cancel() was still pending when its
        # coroutine returned (nothing suspended after it); any other way is a stray cancel.
        escaped = [
            b.spec
            for t, b in zip(tasks, borrowers, strict=True)
            if t.cancelled() and (b.spec.mech != "task" or b.outcome is None)
        ]
        assert not escaped, f"CancelledError escaped a borrower: {escaped[:3]}"
        for t in done:
            if not t.cancelled():
                t.result()
        if self.tally.unexpected:
            raise AssertionError(
                f"{len(self.tally.unexpected)} unexpected outcomes (seed {self.seed}); first:\n"
                + self.tally.unexpected[0]
            )
        assert not self.lent, f"borrowers still hold {len(self.lent)} connections"
        if outage:  # let the pool find the database again before the checks
            for _ in range(5000):
                if not pool._down:
                    break
                await asyncio.sleep(0.001)
            assert not pool._down, pool
        if not close:
            # All borrowers are done: nothing may be lent or waited for, right now.
            stats = pool.stats()
            assert stats.in_use == 0 and stats.waiting == 0, pool
        self.outage = False

    async def check_settled(self) -> None:
        """Everything is accounted for and the pool still serves max_size borrowers."""
        pool = self.pool
        stats = await settle_pool(pool)
        check_invariants(pool)
        assert stats.size <= stats.max_size, pool
        assert stats.acquired_total == stats.released_total, stats
        assert stats.leaks_total == 0, stats
        borrows = self.tally.borrows - self.borrows_at_open
        if pool.config.setup is None:
            assert stats.acquired_total == borrows, (stats.acquired_total, borrows)
        else:  # a borrow cancelled in its setup hook was lent and released internally
            assert stats.acquired_total >= borrows, (stats.acquired_total, borrows)
        # Every cancellation that struck a queued borrower was counted by the pool (and
        # only those, plus asyncio.wait_for's inner tasks, which the borrower cannot see).
        frames = self.tally.by(2)
        # A queued borrower waits in _AcquireContext.__aenter__ (the only place that awaits
        # the waiter queue's future).
        in_wait = sum(frames[f] - self.frames_at_open[f] for f in QUEUED_FRAMES)
        wait_for = frames["wait_for"] - self.frames_at_open["wait_for"]
        assert in_wait <= stats.cancelled_total <= in_wait + wait_for, (
            stats.cancelled_total,
            in_wait,
            wait_for,
        )
        await self.backend.check_server(pool)
        await serve_max_size(pool, self.backend.verify, self.tally)
        stats = await settle_pool(pool)
        check_invariants(pool)
        await self.backend.check_server(pool)


async def settle_pool(pool: asyncpool.Pool, timeout: float = 10.0) -> asyncpool.PoolStats:
    """Wait (bounded) until background resets, closes, connects and pings are over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    i = 0
    while True:
        stats = pool.stats()
        if not (
            stats.returning
            or stats.closing
            or stats.connecting
            or stats.checking
            or stats.waiting
            or stats.in_use
        ):
            return stats
        if loop.time() > deadline:
            raise AssertionError(f"pool did not settle within {timeout}s: {pool!r}")
        await asyncio.sleep(0 if i < 100 else 0.001)
        i += 1


async def serve_max_size(
    pool: asyncpool.Pool,
    verify: Callable[[Any], Awaitable[None]],
    tally: Tally | None = None,
    timeout: float = 10.0,
) -> None:
    """Acquire max_size connections at once, use each, and release them all."""
    n = pool.config.max_size
    results = await asyncio.gather(
        *(pool.acquire(timeout=timeout) for _ in range(n)), return_exceptions=True
    )
    conns = [r for r in results if isinstance(r, asyncpool.PooledConnection)]
    try:
        errors = [r for r in results if not isinstance(r, asyncpool.PooledConnection)]
        assert not errors, f"could not borrow {n} connections at once: {errors!r} {pool!r}"
        assert len({id(c.raw_connection) for c in conns}) == n
        for conn in conns:
            await verify(conn)
    finally:
        for conn in conns:
            await pool.release(conn)
        if tally is not None:
            tally.borrows += len(conns)
