"""What the throwaway servers share: free loopback ports, and an exit-time safety net."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

__all__ = ("LiveSet", "free_port", "port_accepts", "query_sync")

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LiveSet(Generic[T]):
    """Processes still running; ``stop`` is called on each at interpreter exit."""

    def __init__(self, stop: Callable[[T], None]) -> None:
        self._items: set[T] = set()
        self._lock = threading.Lock()
        self._stop = stop
        self._registered = False

    def add(self, item: T) -> None:
        """Track a started process."""
        with self._lock:
            self._items.add(item)
            if not self._registered:
                atexit.register(self.stop_all)
                self._registered = True

    def discard(self, item: T) -> None:
        """Forget a stopped process."""
        with self._lock:
            self._items.discard(item)

    def stop_all(self) -> None:
        """Stop every process still tracked (errors ignored)."""
        with self._lock:
            items = list(self._items)
        for item in items:
            with contextlib.suppress(Exception):
                self._stop(item)


def query_sync(
    dsn: str, sql: str, *, method: Literal["execute", "fetchval"] = "execute", timeout: float = 10.0
) -> Any:
    """Run one statement on a fresh connection from synchronous code; it runs on a helper
    thread with its own loop, so it also works while the caller's loop is running.
    """
    result: list[Any] = []
    errors: list[BaseException] = []

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            result.append(await getattr(conn, method)(sql))
        finally:
            await conn.close()

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="asyncpool-query-sync")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
