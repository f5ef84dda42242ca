"""Typed event hooks: what the pool tells observers, and how it keeps them harmless.

A hook is a plain callable taking one :class:`PoolEvent`. Hooks run
synchronously at the moment of the event (keep them quick; schedule work
elsewhere if needed). A hook that raises is logged and otherwise ignored: it can
never break the pool or the borrower.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable

__all__ = ("EventHook", "EventKind", "PoolEvent")

logger = logging.getLogger("asyncpool.events")


class EventKind(enum.Enum):
    """What happened."""

    CONNECT = "connect"
    """A new connection was opened (``seconds``: connect time)."""
    CONNECT_FAILED = "connect_failed"
    """Opening a connection failed (``error``)."""
    ACQUIRE = "acquire"
    """A connection was lent (``seconds``: time the borrower waited)."""
    RELEASE = "release"
    """A connection came back (``seconds``: time it was held)."""
    DISCARD = "discard"
    """A connection was closed by the pool (``reason``: lost, expired, idle, ...)."""
    TIMEOUT = "timeout"
    """A borrower gave up at its deadline (``seconds``: time waited)."""
    LEAK = "leak"
    """A connection was held past ``leak_timeout`` or dropped without release."""
    LIMIT = "limit"
    """The adaptive limit moved (``autosize=True``; ``reason``: why, and from what to
    what, e.g. ``"shrink: queueing (8 -> 5)"``)."""

    __module__ = "asyncpool"


@dataclasses.dataclass(frozen=True)
class PoolEvent:
    """One event: its kind, the pool's name, and what is known about it."""

    kind: EventKind
    pool: str
    seconds: float | None = None
    reason: str | None = None
    error: BaseException | None = None

    __module__ = "asyncpool"


#: The signature of an event hook.
EventHook = Callable[[PoolEvent], None]


def emit(hooks: list[EventHook], event: PoolEvent) -> None:
    """Call each hook; a hook that raises is logged and ignored."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            logger.exception(
                "asyncpool: event hook %r raised on %s; ignored", hook, event.kind.value
            )
