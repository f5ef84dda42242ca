"""The pool refuses, clearly and without corrupting its state, to be used from another
event loop, another thread, or a child process after ``fork()``.

* Release from another thread (with or without an event loop) raises
  :class:`PoolUsageError`; the connection stays lent and the counters do not move.
* A pool whose loop has finished refuses a new loop in the same thread.
* A connection dropped in another thread is reclaimed on the pool's own loop.
* After a real ``os.fork()`` the child's acquire and release raise PoolUsageError (on the
  very loop object it inherited, and on a new loop); the parent's pool keeps working and
  its server connections (same backend pids) are not disturbed.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import pytest

import asyncpool
from tests.conftest import settle
from tests.fakes import FakeServer, check_invariants
from tests.fuzzing import open_fakes, serve_max_size

LOOP_KIND = os.environ.get("ASYNCPOOL_TEST_LOOP", "asyncio")


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the kind the suite runs on."""
    if LOOP_KIND == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    loop = asyncio.new_event_loop()
    loop.set_debug(LOOP_KIND == "debug")
    return loop


def in_thread(fn: Callable[[], Any]) -> list[BaseException]:
    """Run ``fn`` in another thread while the calling loop is blocked (deterministic:
    nothing on the pool's loop runs meanwhile); return what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return errors


def counters(pool: asyncpool.Pool) -> tuple[int, ...]:
    s = pool.stats()
    return (
        s.size,
        s.idle,
        s.in_use,
        s.waiting,
        s.acquired_total,
        s.released_total,
        s.leaks_total,
        s.connections_lost_total,
    )


# ------------------------------------------------------------------ threads and loops


async def test_release_from_another_thread_is_refused(make_fake_pool: Any) -> None:
    pool = make_fake_pool(min_size=1, max_size=2)
    await pool.open()
    conn = await pool.acquire()
    waiter_holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=5))  # someone waits, too
    await settle()
    before = counters(pool)

    def release_elsewhere() -> None:
        errors = []
        for attempt in (
            lambda: asyncio.run(pool.release(conn)),  # another loop and thread
            lambda: pool.release_nowait(conn),
        ):  # a thread without a loop
            try:
                attempt()
            except BaseException as exc:
                errors.append(exc)
        raise ExceptionGroup("refusals", errors)

    [group] = in_thread(release_elsewhere)
    assert isinstance(group, ExceptionGroup) and len(group.exceptions) == 2
    for exc in group.exceptions:
        assert isinstance(exc, asyncpool.PoolUsageError), exc
        assert "another loop or thread" in str(exc)
    # Nothing moved: the connection is still lent, the waiter still waits.
    assert counters(pool) == before
    assert not conn.is_released and not waiter.done()
    assert await conn.fetchval("SELECT 1") == 1
    check_invariants(pool)
    # Released on its own loop, it goes to the waiter.
    await pool.release(conn)
    served = await asyncio.wait_for(waiter, 5)
    assert served.raw_connection is not waiter_holder.raw_connection
    for c in (served, waiter_holder):
        await pool.release(c)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert stats.acquired_total == stats.released_total == 3
    check_invariants(pool)


async def test_acquire_from_another_thread_is_refused_while_others_wait(
    make_fake_pool: Any,
) -> None:
    pool = make_fake_pool(min_size=1, max_size=1)
    await pool.open()
    holder = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=5))
    await settle()
    before = counters(pool)

    async def borrow() -> None:
        async with pool.acquire(timeout=0.1):
            pass

    [exc] = in_thread(lambda: asyncio.run(borrow()))
    assert isinstance(exc, asyncpool.PoolUsageError), exc
    assert counters(pool) == before
    check_invariants(pool)
    await pool.release(holder)
    await pool.release(await asyncio.wait_for(waiter, 5))
    check_invariants(pool)


async def test_connection_dropped_in_another_thread_is_reclaimed(
    make_fake_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_fake_pool(min_size=1, max_size=1)
    await pool.open()
    box = [await pool.acquire()]
    assert in_thread(lambda: (box.clear(), gc.collect())) == []  # the last reference dies
    for _ in range(100):  # the reclaim is posted to the pool's loop
        await asyncio.sleep(0)
        if pool.stats().in_use == 0:
            break
    stats = pool.stats()
    assert (stats.in_use, stats.leaks_total) == (0, 1), pool
    assert "garbage-collected without being released" in caplog.text
    async with pool.acquire(timeout=1) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    check_invariants(pool)


def test_pool_refuses_a_new_loop_in_the_same_thread() -> None:
    """A pool opened in one ``asyncio.run()`` refuses the next one (same thread)."""
    server = FakeServer()
    box: dict[str, Any] = {}

    async def first() -> None:
        pool = asyncpool.Pool(connect=server.connect, min_size=1, max_size=2, budget_check="off")
        await pool.open()
        box["pool"], box["conn"] = pool, await pool.acquire()

    async def second() -> None:
        pool, conn = box["pool"], box["conn"]
        before = counters(pool)
        with pytest.raises(asyncpool.PoolUsageError, match="another loop or thread"):
            await pool.acquire()
        with pytest.raises(asyncpool.PoolUsageError, match="another loop or thread"):
            await pool.release(conn)
        with pytest.raises(asyncpool.PoolUsageError, match="another loop or thread"):
            async with pool.acquire():
                pass
        assert counters(pool) == before
        assert not conn.is_released
        check_invariants(pool)

    for step in (first, second):  # like two asyncio.run() calls, one after the other
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(step())
    box["pool"].terminate()
    assert open_fakes(server) == 0


# Defect 6 (minor; fixed in 526b9bf, this test guards it):
# terminate() on a pool whose event loop was closed without cancelling
# its tasks (loop.close() rather than asyncio.run()) raises RuntimeError('Event loop is
# closed') from _cancel_background (Task.cancel schedules a callback on the closed loop)
# before it reaches the slots: the pool is marked closed but keeps all its slots.


def test_terminate_after_the_loop_closed_does_not_raise() -> None:
    server = FakeServer()
    pool = asyncpool.Pool(connect=server.connect, min_size=1, max_size=2, budget_check="off")
    loop = new_loop()
    try:
        loop.run_until_complete(pool.open())
    finally:
        loop.close()  # without cancelling the pool's maintenance task
    try:
        pool.terminate()
    finally:
        remaining = pool.stats().size
        pool._maintenance = None  # let the test end cleanly whatever happened
    assert remaining == 0


# Defect 3 (fixed in 526b9bf, this test guards it):
# close() from another loop is refused, but only inside the task it creates
# and stores in _close_task; every later close(), on the pool's own loop, finds that task
# and re-raises its stale PoolUsageError, so the pool can never be closed gracefully and
# its connections stay open.


async def test_close_from_another_loop_is_refused_and_the_pool_still_closes(
    make_fake_pool: Any, fake_server: FakeServer
) -> None:
    pool = make_fake_pool(min_size=2, max_size=2)
    await pool.open()
    [exc] = in_thread(lambda: asyncio.run(pool.close()))
    assert isinstance(exc, asyncpool.PoolUsageError), exc
    assert not pool.closed
    async with pool.acquire(timeout=1):
        pass
    await asyncio.wait_for(pool.close(), 5)  # raises the stale PoolUsageError today
    assert open_fakes(fake_server) == 0


# Defect 4 (fixed in 526b9bf, this test guards it):
# resize(), expire() and terminate() have no loop/thread check. Called from
# another thread they change the pool's state there and create or cancel tasks on the
# pool's loop from the wrong thread (asyncio's debug mode then raises RuntimeError
# half-way through; uvloop and plain asyncio silently race).


@pytest.mark.parametrize("operation", ["resize", "expire", "terminate"])
async def test_sync_operations_from_another_thread_are_refused(
    make_fake_pool: Any, operation: str
) -> None:
    pool = make_fake_pool(min_size=1, max_size=3)
    await pool.open()
    before = counters(pool)
    call = {
        "resize": lambda: pool.resize(min_size=2),
        "expire": pool.expire,
        "terminate": pool.terminate,
    }[operation]
    errors = in_thread(call)
    assert len(errors) == 1 and isinstance(errors[0], asyncpool.PoolUsageError), errors
    assert counters(pool) == before and not pool.closed


# ------------------------------------------------------------------------------ fork


async def fork_and_wait(
    child: Callable[[io.StringIO], int], timeout: float = 30.0
) -> tuple[int, str]:
    """Fork; run ``child(out)`` in the child and leave with ``os._exit(its result)`` (no
    cleanup, no finalizers); return the child's exit code and what it wrote."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.close(read_end)
            out = io.StringIO()
            try:
                code = child(out)
            except BaseException:
                traceback.print_exc(file=out)
                code = 71
            os.write(write_end, out.getvalue().encode()[-60000:])
        finally:
            os._exit(code)
    os.close(write_end)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = None
    while status is None:
        done, raw_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw_status
        elif loop.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        else:
            await asyncio.sleep(0.01)  # the parent's loop keeps running meanwhile
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), output


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine's first step synchronously (on whatever loop is current)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return ("returned", stop.value)
    finally:
        coro.close()
    return ("suspended", None)


def expect_fork_refusal(out: io.StringIO, what: str, call: Callable[[], Any]) -> bool:
    try:
        result = call()
    except asyncpool.PoolUsageError as exc:
        if "fork()" in str(exc):
            return True
        print(f"{what}: refused without naming fork(): {exc}", file=out)
        return False
    except BaseException as exc:
        print(f"{what}: raised {exc!r} instead of PoolUsageError", file=out)
        return False
    print(f"{what}: not refused ({result!r})", file=out)
    return False


async def server_pids(admin: Any, app: str) -> set[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app)
    return {r["pid"] for r in rows}


@pytest.fixture
async def forkable_pool(postgres_dsn: str) -> Any:
    app = f"fork-{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn, server_settings={"application_name": "fork-admin"})
    pool = asyncpool.Pool(
        postgres_dsn, min_size=2, max_size=3, server_settings={"application_name": app}
    )
    await pool.open()
    try:
        yield pool, admin, app
    finally:
        pool.terminate()
        await admin.close()


async def test_forked_child_is_refused_and_parent_is_undisturbed(forkable_pool: Any) -> None:
    pool, admin, app = forkable_pool
    held = await pool.acquire()
    held_pid = held.get_server_pid()
    pids = {s.conn.get_server_pid() for s in pool._slots}
    assert await server_pids(admin, app) == pids and len(pids) == 2
    block = pool.acquire()  # a lease inside `async with`, left dirty (a reset on exit)
    inside = await block.__aenter__()
    await inside.execute("SET work_mem = '8MB'")
    stats_at_fork = counters(pool)

    def child(out: io.StringIO) -> int:
        ok = True
        # The inherited loop object, the same thread: only the fork check can refuse.
        ok &= expect_fork_refusal(out, "acquire", lambda: drive(pool.acquire().__await__()))
        ok &= expect_fork_refusal(out, "release", lambda: drive(pool.release(held)))
        ok &= expect_fork_refusal(out, "release_nowait", lambda: pool.release_nowait(held))
        ok &= expect_fork_refusal(out, "async with exit", lambda: block.__aexit__(None, None, None))
        if counters(pool) != stats_at_fork:
            print(f"stats moved: {counters(pool)} != {stats_at_fork}", file=out)
            ok = False
        if held.is_released or inside.is_released:
            print("the parent's borrowed connection was detached", file=out)
            ok = False

        # A fresh event loop in the child (as a child process that runs asyncio.run()).
        async def fresh() -> None:
            nonlocal ok

            async def borrow() -> None:
                async with pool.acquire(timeout=1):
                    pass

            for what, make in (
                ("acquire in a new loop", borrow),
                ("close in a new loop", pool.close),
            ):
                try:
                    await make()
                except asyncpool.PoolUsageError as exc:
                    ok &= "fork()" in str(exc)
                except BaseException as exc:
                    print(f"{what}: raised {exc!r}", file=out)
                    ok = False
                else:
                    print(f"{what}: not refused", file=out)
                    ok = False

        errors = in_thread(lambda: asyncio.run(fresh()))
        for exc in errors:
            print("".join(traceback.format_exception(exc)), file=out)
        return 0 if ok and not errors else 1

    code, output = await fork_and_wait(child)
    assert code == 0, output
    # The parent: the same connections, still working.
    assert await asyncio.wait_for(held.fetchval("SELECT pg_backend_pid()"), 5) == held_pid
    assert counters(pool) == stats_at_fork
    assert await server_pids(admin, app) == pids
    await pool.release(held)
    await block.__aexit__(None, None, None)

    async def verify(conn: Any) -> None:
        assert await conn.fetchval("SELECT 1") == 1

    await serve_max_size(pool, verify)
    check_invariants(pool)
    assert pids <= await server_pids(admin, app)
    await pool.close()
    for _ in range(200):
        if not await server_pids(admin, app):
            break
        await asyncio.sleep(0.01)
    assert not await server_pids(admin, app)


# Defect 5 (fixed in 526b9bf, this test guards it):
# terminate() has no fork check. In a child process it aborts the inherited
# asyncpg transports: on asyncio that unregisters the sockets from the epoll instance the
# child shares with the parent (the parent's queries on those connections then hang); on
# uvloop the parent's connections fail with ConnectionDoesNotExistError.


async def test_terminate_in_forked_child_leaves_parent_connections_alone(
    forkable_pool: Any,
) -> None:
    pool, admin, app = forkable_pool
    held = await pool.acquire()
    pids = {s.conn.get_server_pid() for s in pool._slots}

    def child(out: io.StringIO) -> int:
        pool.terminate()  # e.g. a post-fork hook dropping inherited pools
        return 0

    code, output = await fork_and_wait(child)
    assert code == 0, output
    assert await asyncio.wait_for(held.fetchval("SELECT 1"), 3) == 1
    await pool.release(held)
    async with pool.acquire(timeout=3) as conn:
        assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 3) == 1
    assert await server_pids(admin, app) == pids
