"""The classes of the wrappers a pool lends, per connection class (see
:func:`wrapper_classes`).
"""

from __future__ import annotations

import weakref
from typing import Any

import asyncpg

from ._connection import PooledConnection

__all__ = ("wrapper_classes",)


def _forward(name: str) -> property:
    def get(self: PooledConnection) -> Any:
        return getattr(self._live(name), name)

    return property(get, doc=f"The connection's own ``{name}``.")


def _forward_any(self: PooledConnection, name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    return getattr(self._live(name), name)


def _reclaim_dropped(self: PooledConnection) -> None:
    """``__del__`` of the wrappers ``await pool.acquire()`` lends."""
    slot = self._slot
    if slot is not None:
        # Dropped without release: hand the slot back on the pool's loop.
        self._pool._reclaim_later(slot, self._lease)


def _subclass(base: type[PooledConnection], namespace: dict[str, Any]) -> type[PooledConnection]:
    namespace.update(__slots__=(), __module__="asyncpool", __doc__=PooledConnection.__doc__)
    return type("PooledConnection", (base,), namespace)


_Wrappers = tuple[type[PooledConnection], type[PooledConnection]]

_GUARDED = _subclass(PooledConnection, {"__del__": _reclaim_dropped})
_wrappers: weakref.WeakKeyDictionary[type, _Wrappers] = weakref.WeakKeyDictionary()


def wrapper_classes(conn_type: type) -> _Wrappers:
    """The classes of the wrappers lent for connections of ``conn_type``: for leases
    that ``async with pool.acquire()`` ends, and for those of ``await pool.acquire()``,
    whose wrapper also reclaims its connection if it is dropped unreleased (its
    ``__del__``; an ``async with`` block always releases, so it is spared that cost).

    :class:`PooledConnection` itself for ``asyncpg.Connection``. For another class (a
    ``connection_class`` subclass, or what a custom ``connect`` returns) subclasses
    that also forward the public names that class adds, as asyncpg's pool does; if
    its instances can carry attributes of their own (they have a ``__dict__``), any
    other name is looked up on the connection too, at the price of slower attribute
    access on that pool's wrappers.
    """
    if conn_type is asyncpg.Connection:
        return PooledConnection, _GUARDED
    classes = _wrappers.get(conn_type)
    if classes is None:
        namespace: dict[str, Any] = {
            name: _forward(name)
            for name in dir(conn_type)
            if not name.startswith("_") and not hasattr(PooledConnection, name)
        }
        if getattr(conn_type, "__dictoffset__", 0):
            namespace["__getattr__"] = _forward_any
        scoped = _subclass(PooledConnection, namespace)
        classes = _wrappers[conn_type] = (scoped, _subclass(scoped, {"__del__": _reclaim_dropped}))
    return classes
