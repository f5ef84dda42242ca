"""Where a benchmark result comes from: package versions, the asyncpool commit measured,
the machine's load. Shared by every benchmark's report.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

__all__ = ("_asyncpool_revision", "_loadavg", "_versions")


def _versions() -> dict[str, str]:
    out = {}
    for dist in (
        "asyncpool-pg",
        "asyncpg",
        "psycopg",
        "psycopg-binary",
        "psycopg-pool",
        "SQLAlchemy",
        "uvloop",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _asyncpool_revision() -> str:
    """The repository commit the measured asyncpool comes from, and whether its
    sources had uncommitted changes (an editable install measures the work tree).
    """
    import subprocess

    if os.environ.get("ASYNCPOOL_BENCH_REVISION"):
        return os.environ["ASYNCPOOL_BENCH_REVISION"]
    import asyncpool

    root = Path(asyncpool.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "asyncpool"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + (
        " + uncommitted changes in asyncpool/" if dirty.stdout.strip() else ""
    )


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"
