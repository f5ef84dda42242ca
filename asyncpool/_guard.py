"""Who may use a pool: the event loop it was opened on, that loop's thread, and the
process that opened it (the loop/thread/fork guard).

A pool belongs to one event loop. asyncio's loops record the thread that runs them, so
"are we on the pool's loop?" costs one comparison on the hot paths
(``tid_loop._thread_id != get_ident()``); other loops (uvloop) are compared by the
opening thread and ``is_running()``, since only one loop runs per thread. When that
cheap test fails, :func:`check_loop` finds out why and raises the explanation.

After ``fork()`` the child must not touch the parent's connections (their sockets, and
on asyncio the epoll instance, are shared with the parent). :func:`_after_fork_in_child`
marks every pool opened in this process as forked, which makes the cheap tests fail, and
lets each pool disown its connections at once (``Guarded._after_fork``).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from _thread import get_ident
from asyncio.events import _get_running_loop
from typing import Any, Protocol

from ._errors import PoolUsageError

__all__ = ("Guarded", "check_loop", "check_owner", "register")


class Guarded(Protocol):
    """What the guard reads and writes of a pool."""

    _loop: asyncio.AbstractEventLoop | None
    _tid_loop: Any  # the loop, if it records its thread (asyncio's); else None
    _owner_tid: int | None
    _forked: bool

    @property
    def name(self) -> str: ...

    def _after_fork(self) -> None: ...


_opened: weakref.WeakSet[Any] = weakref.WeakSet()


def register(pool: Guarded) -> None:
    """Remember a pool opened in this process (for :func:`_after_fork_in_child`)."""
    _opened.add(pool)


def _after_fork_in_child() -> None:
    for pool in list(_opened):
        pool._forked = True
        pool._tid_loop = None  # the cheap "on the pool's loop?" tests now fail
        pool._owner_tid = None
        pool._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def bind(pool: Guarded, loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` (running, in this thread) the pool's loop."""
    pool._loop = loop
    pool._tid_loop = loop if hasattr(loop, "_thread_id") else None
    pool._owner_tid = get_ident()
    pool._forked = False
    register(pool)


def check_loop(pool: Guarded) -> asyncio.AbstractEventLoop:
    """Refuse, with the explanation, unless called on the pool's open loop in the process
    that opened it; return the loop. The hot paths call this only when the cheap test
    (see the module notes) fails.
    """
    loop = pool._loop
    if pool._forked:
        raise PoolUsageError(
            f"asyncpool pool {pool.name!r} was opened in another process before fork(); "
            "create a new pool in each child process"
        )
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not loop or loop is None:
        if loop is None:
            raise PoolUsageError(
                f"asyncpool pool {pool.name!r} is not open; call `await pool.open()` first"
            )
        raise PoolUsageError(
            f"asyncpool pool {pool.name!r} belongs to the event loop it was opened on and "
            "cannot be used from another loop or thread; create one pool per loop"
        )
    if pool._tid_loop is None:
        pool._owner_tid = get_ident()  # uvloop run from another thread this time
    return loop


def check_owner(pool: Guarded, *, is_open: bool) -> None:
    """Refuse a synchronous operation on an open pool from another thread while the
    pool's loop runs there, from inside another loop, or after ``fork()``.
    """
    loop = pool._loop
    if loop is None or not is_open:
        return
    running = _get_running_loop()
    if running is not loop and (running is not None or loop.is_running() or pool._forked):
        check_loop(pool)  # raises with the explanation
