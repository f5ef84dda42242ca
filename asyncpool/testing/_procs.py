"""What the throwaway servers share: free loopback ports, and an exit-time safety net."""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ("LiveSet", "free_port", "port_accepts")

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
