"""Where the examples find PostgreSQL.

``ASYNCPOOL_DSN`` when it is set (``python -m asyncpool server`` prints the line to
export); otherwise a throwaway server started from the local PostgreSQL binaries for
this one run, and removed at its end. Without those binaries the example says so in
one line and exits with status 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from asyncpool.testing import PostgresNotFoundError, PostgresServer


@contextlib.contextmanager
def database() -> Iterator[str]:
    """Yield a DSN; ``ASYNCPOOL_DSN`` is set to it for the duration (child processes too)."""
    dsn = os.environ.get("ASYNCPOOL_DSN")
    if dsn:
        yield dsn
        return
    print(
        "ASYNCPOOL_DSN is not set: starting a throwaway PostgreSQL for this run "
        "(keep one running with: python -m asyncpool server)",
        file=sys.stderr,
        flush=True,
    )
    server = PostgresServer()
    try:
        server.start()
    except PostgresNotFoundError as exc:
        server.close()
        reason = str(exc).strip().splitlines()[0]
        print(
            f"cannot start PostgreSQL ({reason}); set ASYNCPOOL_DSN to a server's DSN",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    os.environ["ASYNCPOOL_DSN"] = server.dsn
    try:
        yield server.dsn
    finally:
        del os.environ["ASYNCPOOL_DSN"]
        server.close()
