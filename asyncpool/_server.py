"""``python -m asyncpool server``: a throwaway PostgreSQL for trying asyncpool.

Starts a cluster from the local PostgreSQL server binaries (``initdb`` + ``pg_ctl``,
see :class:`asyncpool.testing.PostgresServer`) in a temporary directory on a free
loopback port, prints its DSN and an ``export ASYNCPOOL_DSN=...`` line, and runs until
Ctrl-C (SIGINT) or SIGTERM. Then it stops the server and deletes its data.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import TextIO

__all__ = ("main",)

DESCRIPTION = (
    "Run a throwaway PostgreSQL from the local server binaries (initdb and pg_ctl, e.g. "
    "Debian's postgresql package) on a free loopback port, print its DSN, and keep it "
    "running until Ctrl-C or SIGTERM. Its data lives in a temporary directory that is "
    "deleted when it stops. Authentication is 'trust': for local experiments only."
)


class _Stop(Exception):
    """Raised by the signal handler to leave the wait loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of ``python -m asyncpool server``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m asyncpool server", description=DESCRIPTION)
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the server to accept connections (default 60)",
    )
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out

    from .testing import PostgresNotFoundError, PostgresServer

    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = PostgresServer(startup_timeout=args.startup_timeout)
    try:
        try:
            server.start()
        except PostgresNotFoundError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            print(f"asyncpool server: cannot start PostgreSQL: {first_line}", file=sys.stderr)
            return 2
        out.write(
            f"PostgreSQL is running at {server.dsn}\n"
            f"data directory {server.data_dir} (deleted when it stops)\n\n"
            f"export ASYNCPOOL_DSN={server.dsn}\n\n"
            "Press Ctrl-C to stop it.\n"
        )
        out.flush()
        pid_file = server.data_dir / "postmaster.pid"
        while pid_file.exists():
            time.sleep(0.5)
        print("asyncpool server: PostgreSQL stopped unexpectedly", file=sys.stderr)
        return 1
    except _Stop:
        out.write("Stopping PostgreSQL...\n")
        out.flush()
        return 0
    finally:
        # A second Ctrl-C during the shutdown must not leave a half-stopped cluster.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        out.write("PostgreSQL stopped; its data directory is deleted.\n")
        out.flush()
