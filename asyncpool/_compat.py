"""asyncpg ``Pool`` compatibility methods (a thin layer kept apart from the core)."""

from __future__ import annotations

__all__ = ("AsyncpgPoolMethods",)


class AsyncpgPoolMethods:
    """Methods of ``asyncpg.Pool`` that asyncpool provides for one-line migration."""

    __slots__ = ()
