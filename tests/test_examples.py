"""Every example runs against the test server and does what it says.

Scripts run as subprocesses with ``ASYNCPOOL_DSN`` set and a deadline; the FastAPI app is
also imported and driven in-process with httpx. Each script also runs with no
environment variable set (it starts a throwaway server of its own), and says in one
line what to do when there are no PostgreSQL binaries either.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asyncpool.testing import find_pg_bin

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 60.0


def example_env(dsn: str | None, **extra: str) -> dict[str, str]:
    """The environment for an example: ``ASYNCPOOL_DSN`` set to ``dsn``, or unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCPOOL_DSN", "PORT")}
    if dsn is not None:
        env["ASYNCPOOL_DSN"] = dsn
    return {**env, **extra}


async def run_example(name: str, dsn: str | None, *args: str) -> str:
    """Run ``examples/<name>``; return its stdout. Fails on a non-zero exit or a hang."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(EXAMPLES / name),
        *args,
        env=example_env(dsn),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.fixture(params=["ASYNCPOOL_DSN", "no environment"])
def example_dsn(request: pytest.FixtureRequest, postgres_dsn: str) -> str | None:
    """The test server's DSN, or None: the example then starts a throwaway server."""
    if request.param == "ASYNCPOOL_DSN":
        return postgres_dsn
    if find_pg_bin() is None:
        pytest.skip("without ASYNCPOOL_DSN the examples need the local PostgreSQL binaries")
    return None


async def test_basic(example_dsn: str | None):
    out = await run_example("basic.py", example_dsn)
    assert "connected to PostgreSQL" in out
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "rows after the rolled-back transaction: 0" in out
    assert "PoolTimeout: asyncpool pool '127.0.0.1:" in out  # default name: host:port/db
    assert "': no connection after waiting" in out
    assert "in_use=0" in out
    assert "timeouts=1" in out
    assert out.rstrip().endswith("closed: True")


async def test_listen_notify(example_dsn: str | None):
    out = await run_example("listen_notify.py", example_dsn)
    lines = out.splitlines()
    first = int(lines[0].removeprefix("listening on backend "))
    second = int(lines[1].removeprefix("connection lost; listening again on backend "))
    assert first != second  # it re-listened on another session after losing the first
    assert "received 5: message 0, message 1, message 2, message 3, message 4" in out
    assert "channels listened to on the pooled connections after release: [0, 0]" in out


async def test_retry_transaction_survives_a_real_serialization_failure(example_dsn: str | None):
    out = await run_example("retry_transaction.py", example_dsn)
    assert "failed (SerializationError: could not serialize access" in out
    assert "serialization failures: 1" in out  # provoked by the two concurrent transactions
    assert "leave granted after 1 attempt(s)" in out
    assert "leave refused after 2 attempt(s)" in out  # its retry saw the other's commit
    assert "doctors still on call: 1" in out  # the invariant held


async def test_workers(example_dsn: str | None):
    out = await run_example(
        "workers.py",
        example_dsn,
        "--processes",
        "2",
        "--budget",
        "5",
        "--jobs",
        "20",
        "--table",
        "asyncpool_example_jobs_test",
    )
    assert "2 workers x max_size 2 <= budget 5" in out
    assert out.count("job(s) done, pool closed") == 2
    assert "worker exit codes: [0, 0]" in out
    assert "20/20 jobs done, 0 run more than once" in out


async def test_sqlalchemy_orm(example_dsn: str | None):
    out = await run_example("sqlalchemy_orm.py", example_dsn)
    assert "rolled back: IntegrityError" in out
    assert "Ursula: 2 books, years [1971, 1974]" in out
    assert "while a session holds a connection: in_use=1" in out
    assert "after: in_use=0" in out
    assert "opened=1" in out  # every SQLAlchemy connection came from the one pooled


async def test_workers_defaults_run_a_whole_demo(postgres_dsn: str):
    out = await run_example("workers.py", postgres_dsn, "--table", "asyncpool_example_jobs_dflt")
    assert "3 workers x max_size 2 <= budget 6" in out
    assert "40/40 jobs done, 0 run more than once" in out


SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def test_every_example_is_tested_here():
    source = Path(__file__).read_text()
    assert SCRIPTS == [
        "basic.py",
        "fastapi_app.py",
        "listen_notify.py",
        "retry_transaction.py",
        "sqlalchemy_orm.py",
        "workers.py",
    ]
    for name in SCRIPTS:
        assert f'"{name}"' in source


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "fastapi_app.py"])
def test_without_dsn_or_binaries_an_example_says_what_to_do(name: str, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=example_env(None, ASYNCPOOL_PG_BIN=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("ASYNCPOOL_DSN is not set: starting a throwaway PostgreSQL")
    assert "python -m asyncpool server" in lines[0]
    assert len(lines) == 2
    assert lines[1].startswith("cannot start PostgreSQL (")
    assert lines[1].endswith("set ASYNCPOOL_DSN to a server's DSN")


# ----------------------------------------------------------------------------- FastAPI


@pytest.fixture
async def fastapi_example(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ModuleType]:
    monkeypatch.setenv("ASYNCPOOL_DSN", postgres_dsn)
    spec = importlib.util.spec_from_file_location(
        "example_fastapi_app", EXAMPLES / "fastapi_app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS asyncpool_example_notes")
    finally:
        await conn.close()


async def test_fastapi_app_in_process(fastapi_example: ModuleType):
    app = fastapi_example.app
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post("/notes", json={"text": "first"})
            assert created.status_code == 201
            note = created.json()
            assert note["text"] == "first"
            assert (await client.get(f"/notes/{note['id']}")).json() == note
            assert (await client.get("/notes/999999999")).status_code == 404
            empty = await client.post("/notes", json={"text": ""})
            assert empty.status_code == 422  # validated: not the database's CHECK (a 500)

            batch = await client.post("/notes/batch", json=[{"text": "a"}, {"text": ""}])
            assert batch.status_code == 422  # the whole batch rolled back
            assert [n["text"] for n in (await client.get("/notes")).json()] == ["first"]
            ok = await client.post("/notes/batch", json=[{"text": "a"}, {"text": "b"}])
            assert [n["text"] for n in ok.json()] == ["a", "b"]

            assert (await client.get("/livez")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["pool"]["in_use"] == 0
        pool = app.state.pool
    assert pool.closed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("with_dsn", [True, False], ids=["ASYNCPOOL_DSN", "no environment"])
async def test_fastapi_app_under_uvicorn_shuts_down_on_sigterm(
    fastapi_example: ModuleType, postgres_dsn: str, with_dsn: bool
):
    if not with_dsn and find_pg_bin() is None:
        pytest.skip("without ASYNCPOOL_DSN the examples need the local PostgreSQL binaries")
    port = free_port()
    admin = await asyncpg.connect(postgres_dsn)
    abandoned = "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
    abandoned_before = await admin.fetchval(abandoned)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "fastapi_app.py"),
        env=example_env(postgres_dsn if with_dsn else None, PORT=str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:

        async def started() -> None:
            while b"Application startup complete" not in await proc.stderr.readline():
                assert proc.returncode is None

        await asyncio.wait_for(started(), DEADLINE)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.post("/notes", json={"text": "over tcp"})).status_code == 201
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        # uvicorn shuts down gracefully (lifespan: the pool closes), then re-raises the
        # signal so that the parent sees it: -SIGTERM is its normal exit status here.
        assert await asyncio.wait_for(proc.wait(), 10) in (0, -signal.SIGTERM)
        assert b"Application shutdown complete" in rest
        assert b"Traceback" not in rest
        if not with_dsn:
            return  # its own server is gone with it: nothing to inspect there
        # The pool closed its connections politely: none left, none abandoned.
        app_sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await admin.fetchval(app_sessions, "asyncpool-example-api"):
            assert loop.time() < deadline, "the app's sessions outlived it"
            await asyncio.sleep(0.02)
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        assert await admin.fetchval(abandoned) == abandoned_before
    finally:
        await admin.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
