"""The pool's own statements, hidden from tracing instrumentations.

The pool runs statements of its own on a connection: the ping (``SELECT 1``), the
ROLLBACK and reset statements after a borrower, the connection-budget query, the
server check at open. With a tracing instrumentation of asyncpg installed (e.g.
OpenTelemetry's), each would be a span inside whatever request span is current,
sometimes ending after it. :func:`quiet` marks them as instrumentation-suppressed:
it sets OpenTelemetry's suppress-instrumentation context key, which instrumentations
check before they start a span.

It costs a dictionary lookup when OpenTelemetry is not in use: the context key is only
set when ``opentelemetry.context`` is already imported (an instrumentation imports
it), and asyncpool never imports OpenTelemetry here.

Not every instrumentation checks that key (OpenTelemetry's asyncpg instrumentation does
not, as of this writing). :func:`own` therefore also finds the connection's own method
behind a ``wrapt`` wrapper that an instrumentation put on the connection's class, and the
pool calls that one for its statements.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType, TracebackType
from typing import Any

__all__ = ("own", "quiet")

_NOTHING: AbstractContextManager[None] = nullcontext()


class _Suppressed:
    """Sets OpenTelemetry's suppress-instrumentation key for the ``with`` block."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: ModuleType) -> None:
        self._context = context
        self._token: Any = None

    def __enter__(self) -> None:
        context = self._context
        self._token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._context.detach(self._token)


def quiet() -> AbstractContextManager[None]:
    """A context manager inside which tracing instrumentations skip the pool's statements.

    Use one per ``with`` block (it keeps the token of the context it attached).
    """
    context = sys.modules.get("opentelemetry.context")
    if context is None or not hasattr(context, "_SUPPRESS_INSTRUMENTATION_KEY"):
        return _NOTHING
    return _Suppressed(context)


def own(conn: Any, name: str) -> Any:
    """``conn``'s method ``name``, bound, past any ``wrapt`` wrapper an instrumentation
    put on its class (the method as the class defines it). Other wrappers, such as a
    ``connection_class``'s own decorators, are kept.
    """
    method = getattr(type(conn), name, None)
    # (wrapt's FunctionWrapper and BoundFunctionWrapper, in C or in Python)
    if method is not None and type(method).__name__.endswith("FunctionWrapper"):
        original = getattr(method, "__wrapped__", None)
        if original is not None:
            return original.__get__(conn, type(conn))
    return getattr(conn, name)
