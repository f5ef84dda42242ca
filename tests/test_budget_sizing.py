"""The connection budget guard (asyncpool._budget) and the sizing rules and CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket

import asyncpg
import pytest

import asyncpool
from asyncpool import sizing
from asyncpool._budget import (
    BudgetReport,
    ServerFacts,
    check_budget,
    evaluate_budget,
    read_server_facts,
)


def facts(
    max_connections: int = 100,
    superuser: int = 3,
    reserved: int = 0,
    clients: int = 1,
    version: int = 150000,
) -> ServerFacts:
    return ServerFacts(max_connections, superuser, reserved, clients, version)


# ------------------------------------------------------------------ pure rules


def test_server_pool_size_rule() -> None:
    assert sizing.server_pool_size(4) == 8
    assert sizing.server_pool_size(4, effective_spindles=2) == 10
    with pytest.raises(ValueError, match="cores"):
        sizing.server_pool_size(0)
    with pytest.raises(ValueError, match="effective_spindles"):
        sizing.server_pool_size(2, -1)


def test_per_instance_limit_rule() -> None:
    # floor((max_connections - reserved - headroom) / instances)
    assert sizing.per_instance_limit(100, 3, 4) == 24
    assert sizing.per_instance_limit(100, 3, 4, headroom=10) == 21
    assert sizing.per_instance_limit(10, 3, 20) == 0
    with pytest.raises(ValueError, match="instances"):
        sizing.per_instance_limit(100, 3, 0)


def test_default_headroom() -> None:
    assert sizing.default_headroom(197) == 20
    assert sizing.default_headroom(10) == 3
    assert sizing.default_headroom(2) == 2


def test_reserved_includes_pg16_reserved_connections() -> None:
    f = facts(max_connections=100, superuser=3, reserved=5)
    assert f.reserved == 8
    assert f.capacity == 92


def test_evaluate_budget_fits() -> None:
    report = evaluate_budget(facts(clients=11), max_size=10, instances=2, pool_name="p")
    assert isinstance(report, BudgetReport)
    assert (report.max_connections, report.reserved, report.in_use_now) == (100, 3, 11)
    assert (report.requested, report.capacity, report.available) == (20, 97, 86)
    assert report.ok and report.fits_now
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = False  # type: ignore[misc]


def test_evaluate_budget_never_fits() -> None:
    report = evaluate_budget(facts(), max_size=30, instances=4, pool_name="orders")
    assert not report.ok
    assert report.requested == 120
    # The message says what happened and what to change.
    assert "'orders'" in report.message
    assert "max_size=30" in report.message and "instances=4" in report.message
    assert "at most 24 per instance" in report.message


def test_evaluate_budget_fits_in_total_but_not_now() -> None:
    report = evaluate_budget(facts(clients=90), max_size=20, instances=1, pool_name="p")
    assert report.ok
    assert not report.fits_now
    assert report.available == 7
    assert "too many clients" in report.message


def test_evaluate_budget_behind_pooler_only_reports() -> None:
    report = evaluate_budget(facts(), max_size=1000, instances=10, pooler="pgbouncer-session")
    assert report.ok and report.fits_now
    assert "default_pool_size" in report.message


def test_recommend_takes_the_smaller_limit() -> None:
    f = facts(max_connections=200)  # capacity 197, default headroom 20
    rec = sizing.recommend(f, instances=4, cores=8, effective_spindles=2)
    assert rec.budget_limit == (200 - 3 - 20) // 4 == 44
    assert rec.cpu_limit == (8 * 2 + 2) // 4 == 4
    assert rec.max_size == 4
    rec = sizing.recommend(facts(max_connections=20), instances=4, cores=32)
    assert rec.budget_limit == (20 - 3 - 3) // 4 == 3
    assert rec.max_size == 3
    assert any("max_connections limits" in note for note in rec.notes)


def test_recommend_without_cores_uses_the_budget_and_says_so() -> None:
    rec = sizing.recommend(facts(max_connections=100), instances=2, headroom=7)
    assert rec.cpu_limit is None
    assert rec.max_size == (100 - 3 - 7) // 2
    assert any("--cores" in note for note in rec.notes)
    assert "cannot be read through SQL" in rec.render()


def test_recommend_no_room() -> None:
    rec = sizing.recommend(facts(max_connections=10), instances=50, cores=4)
    assert rec.max_size == 0
    assert any("PgBouncer" in note for note in rec.notes)


# ------------------------------------------------------------------ real server


async def test_read_server_facts(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        f = await read_server_facts(conn)
        assert f.max_connections == int(await conn.fetchval("SHOW max_connections"))
        assert f.superuser_reserved_connections == int(
            await conn.fetchval("SHOW superuser_reserved_connections")
        )
        if f.server_version_num < 160000:
            assert f.reserved_connections == 0
        else:
            assert f.reserved_connections == int(await conn.fetchval("SHOW reserved_connections"))
        assert f.client_connections >= 1
    finally:
        await conn.close()


async def test_client_count_matches_pg_stat_activity(postgres_dsn: str) -> None:
    """in_use_now counts client backends, a pool's connections among them (compared in
    one transaction, so both counts see the same pg_stat_activity snapshot).
    """
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async with asyncpool.create_pool(
            postgres_dsn,
            min_size=5,
            max_size=5,
            server_settings={"application_name": "budget-count"},
        ):
            async with conn.transaction():
                f = await read_server_facts(conn)
                ours = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    "budget-count",
                )
                clients = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                )
        assert ours == 5
        assert f.client_connections == clients >= 6
    finally:
        await conn.close()


async def test_client_count_includes_sessions_hidden_from_a_non_superuser(
    postgres_dsn: str,
) -> None:
    """A role without pg_read_all_stats cannot see other roles' backend_type; their
    sessions must still be counted.
    """
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute("DROP ROLE IF EXISTS budget_app; CREATE ROLE budget_app LOGIN")
        app = await asyncpg.connect(postgres_dsn, user="budget_app")
        try:
            visible = await app.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            seen_by_app = await read_server_facts(app)
            assert visible == 1  # only its own session shows its backend_type
            assert seen_by_app.client_connections >= 2  # the admin session is counted too
        finally:
            await app.close()
    finally:
        await admin.execute("DROP ROLE IF EXISTS budget_app")
        await admin.close()


async def test_check_budget_ok_logs_nothing(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncpool.create_pool(postgres_dsn, min_size=1) as pool, pool.acquire() as conn:
        with caplog.at_level(logging.WARNING, logger="asyncpool"):
            report = await check_budget(
                conn, max_size=10, instances=2, policy="refuse", pool_name=pool.name
            )
    assert report.ok and report.fits_now
    assert report.requested == 20
    assert report.available == report.max_connections - report.reserved - report.in_use_now
    assert not caplog.records


async def test_check_budget_warn_refuse_off(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        max_connections = int(await conn.fetchval("SHOW max_connections"))
        too_big = max_connections  # x 2 instances: more than max_connections - reserved
        with caplog.at_level(logging.WARNING, logger="asyncpool"):
            report = await check_budget(
                conn, max_size=too_big, instances=2, policy="warn", pool_name="warned"
            )
        assert not report.ok
        [record] = [r for r in caplog.records if r.name.startswith("asyncpool")]
        assert record.levelno == logging.WARNING
        assert "'warned'" in record.getMessage()
        caplog.clear()
        with pytest.raises(asyncpool.PoolError, match="budget_check='refuse'"):
            await check_budget(
                conn, max_size=too_big, instances=2, policy="refuse", pool_name="refused"
            )
        with caplog.at_level(logging.WARNING, logger="asyncpool"):
            report = await check_budget(
                conn, max_size=too_big, instances=2, policy="off", pool_name="quiet"
            )
        assert not report.ok
        assert not caplog.records
    finally:
        await conn.close()


async def test_check_budget_validates_arguments(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(ValueError, match="budget_check"):
            await check_budget(
                conn,
                max_size=1,
                instances=1,
                policy="loud",  # type: ignore[arg-type]
                pool_name="p",
            )
        with pytest.raises(ValueError, match="instances"):
            await check_budget(conn, max_size=1, instances=0, policy="warn", pool_name="p")
    finally:
        await conn.close()


# ------------------------------------------------------------------ CLI


def test_cli_prints_a_recommendation(postgres_dsn: str, capsys: pytest.CaptureFixture[str]):
    assert sizing.main(["--dsn", postgres_dsn, "--instances", "4", "--cores", "4"]) == 0
    out = capsys.readouterr().out
    assert "max_connections" in out
    # cores 4 -> 8 connections for the server, 2 per instance (budget allows more)
    assert "Recommended max_size per instance: 2" in out


def test_cli_json(postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        sizing.main(["--dsn", postgres_dsn, "--instances", "3", "--headroom", "10", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    server = data["server"]
    assert data["budget_limit"] == (server["max_connections"] - server["reserved"] - 10) // 3
    assert data["max_size"] == data["budget_limit"]
    assert data["cpu_limit"] is None


def test_cli_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = sizing.main(
        ["--dsn", f"postgresql://postgres@127.0.0.1:{port}/postgres", "--connect-timeout", "2"]
    )
    assert code == 1
    assert "cannot read the server's settings" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sizing.main(["--instances", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
