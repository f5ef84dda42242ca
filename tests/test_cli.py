"""The command line: ``--version``, the demo's help and errors, and ``server``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import asyncpool
from asyncpool.testing import PostgresServer, find_pg_bin

needs_pg_binaries = pytest.mark.skipif(
    find_pg_bin() is None, reason="needs the local PostgreSQL server binaries"
)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"asyncpool {asyncpool.__version__}"
    assert run_cli("-V").stdout == done.stdout


def test_top_level_help_lists_every_command() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("demo", "size", "server", "--version"):
        assert command in done.stdout


def test_demo_help_is_plain_text_with_help_for_every_option() -> None:
    done = run_cli("demo", "--help")
    assert done.returncode == 0
    assert "``" not in done.stdout  # no raw reST markup
    assert ":class:" not in done.stdout
    options = re.findall(r"^  (--[a-z-]+)", done.stdout, flags=re.MULTILINE)
    assert options == ["--dsn", "--requests", "--concurrency", "--pool-size"]
    for line in done.stdout.splitlines():
        match = re.match(r"^  (--[a-z-]+)( [A-Z]+)?$", line)
        assert match is None, f"option without help on its line or the next: {line!r}"
    # every option line carries its help text (argparse puts it on the same line here)
    for option in options:
        (line,) = [x for x in done.stdout.splitlines() if x.startswith(f"  {option} ")]
        assert len(line.split()) > 2, line


def test_demo_rejects_a_zero_pool_size_cleanly() -> None:
    done = run_cli("demo", "--pool-size", "0")
    assert done.returncode == 2
    assert "must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_with_an_unreachable_server_prints_one_line() -> None:
    done = run_cli("demo", "--dsn", "postgresql://postgres@127.0.0.1:1/postgres")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("asyncpool demo: cannot use the database: ")


@pytest.fixture(scope="module")
def password_server() -> Iterator[PostgresServer]:
    """A server of its own that checks passwords (the shared one trusts everybody)."""
    if find_pg_bin() is None:
        pytest.skip("needs the local PostgreSQL server binaries")
    with PostgresServer() as server:
        server.execute_sync("ALTER ROLE postgres PASSWORD 'right'")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        server.restart()
        yield server


def with_password(server: PostgresServer, password: str) -> str:
    return f"postgresql://postgres:{password}@{server.host}:{server.port}/postgres"


def test_demo_with_a_wrong_password_prints_one_clean_line(password_server: PostgresServer):
    done = run_cli("demo", "--dsn", with_password(password_server, "wrong"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "asyncpool demo: cannot use the database: InvalidPasswordError: "
        'password authentication failed for user "postgres"'
    ]
    # the same server with the right password runs the demo
    ok = run_cli(
        "demo",
        "--dsn",
        with_password(password_server, "right"),
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--pool-size",
        "2",
    )
    assert ok.returncode == 0, ok.stderr
    assert "| asyncpool (size 2) |" in ok.stdout


def test_size_with_a_wrong_password_prints_one_clean_line(password_server: PostgresServer):
    done = run_cli("size", "--dsn", with_password(password_server, "wrong"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "password authentication failed" in done.stderr


def read_until(stream: object, needle: str, deadline: float) -> str:
    """Read lines from a text stream until one contains ``needle``."""
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not seen in:\n{''.join(seen)}")


def process_ends(pid: int, deadline: float) -> bool:
    """Whether ``pid`` exits (or is left a zombie for init to reap) before ``deadline``."""
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "\nState:\tZ" in status.read_text():
            return True
        time.sleep(0.05)
    return False


@needs_pg_binaries
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_server_prints_its_dsn_and_stops_cleanly(stop_signal: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncpool", "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = read_until(proc.stdout, "Press Ctrl-C", time.monotonic() + 60)
        (dsn,) = re.findall(r"^export ASYNCPOOL_DSN=(\S+)$", banner, flags=re.MULTILINE)
        assert f"PostgreSQL is running at {dsn}" in banner
        (data_dir,) = re.findall(r"^data directory (\S+) ", banner, flags=re.MULTILINE)
        pid_file = Path(data_dir) / "postmaster.pid"
        postmaster = int(pid_file.read_text().splitlines()[0])

        async def query() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT 40 + 2"))
            finally:
                await conn.close()

        assert asyncio.run(query()) == 42

        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "its data directory is deleted" in out
        assert not Path(data_dir).exists()
        assert process_ends(postmaster, time.monotonic() + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
