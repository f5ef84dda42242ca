"""Types users see: tests/typecheck/check_types.py under a user's plain ``mypy --strict``
(no project config), and the create_pool settings kept in step with ``Pool``.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpool
from asyncpool._settings_types import PoolSettings

CHECKS = Path(__file__).parent / "typecheck" / "check_types.py"


def run_mypy(path: Path) -> subprocess.CompletedProcess[str]:
    # Run outside the project, with no config file: what a user with only the
    # installed package and mypy gets.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(path.parent / "empty.ini"),
            "--cache-dir",
            str(path.parent / ".mypy_cache"),
            str(path),
        ],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_user_strict_mypy_sees_the_typed_api(tmp_path: Path) -> None:
    (tmp_path / "empty.ini").write_text("[mypy]\n")
    target = tmp_path / "check_types.py"
    shutil.copy(CHECKS, target)
    result = run_mypy(target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_the_type_check_fails_when_a_type_regresses(tmp_path: Path) -> None:
    """The check can fail: a wrong expected type, and an expected error that is gone."""
    (tmp_path / "empty.ini").write_text("[mypy]\n")
    target = tmp_path / "check_types.py"
    text = CHECKS.read_text()
    wrong = text.replace(
        'assert_type(await conn.execute("SELECT 1"), str)',
        'assert_type(await conn.execute("SELECT 1"), int)',
    ).replace(
        'await conn.fecth("SELECT 1")  # type: ignore[attr-defined]',
        'await conn.fetch("SELECT 1")  # type: ignore[attr-defined]',
    )
    assert wrong != text
    target.write_text(wrong)
    result = run_mypy(target)
    assert result.returncode == 1
    assert "[assert-type]" in result.stdout
    assert "[unused-ignore]" in result.stdout


def test_create_pool_settings_match_pool_keywords() -> None:
    """PoolSettings (the typed keywords of Pool and create_pool) names every pool setting
    (PoolConfig's fields) and asyncpg's aliases; the rest are asyncpg.connect's arguments."""
    import dataclasses

    import asyncpg

    fields = {f.name for f in dataclasses.fields(asyncpool.PoolConfig)} - {"dsn", "connect_kwargs"}
    keywords = fields | {"loop", "max_inactive_connection_lifetime"}
    settings = set(PoolSettings.__optional_keys__)
    assert keywords <= settings, f"missing from PoolSettings: {sorted(keywords - settings)}"
    connect = set(inspect.signature(asyncpg.connect).parameters)
    assert settings - keywords <= connect, sorted(settings - keywords - connect)
