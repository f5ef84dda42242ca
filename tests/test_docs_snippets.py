"""Every ```python block in README.md and docs/**/*.md runs against a real server.

The conventions, also described in docs/development.md:

* A block runs as written, with two names given: ``dsn`` (a fresh database on the test
  server, one per page) and, in blocks that use top-level ``await`` / ``async with``,
  ``pool`` (an open pool on ``dsn``, shared by the blocks of a page). Such blocks run on
  one event loop per page, as in an asyncio REPL (``python -m asyncio``).
* ``ASYNCPOOL_DSN`` is set to ``dsn`` too, for complete programs that read it.
* ``<!-- snippet: continue -->`` on the line before a block runs it in the previous
  block's namespace (a page that builds something up step by step).
* ``<!-- snippet: skip REASON -->`` does not run it. Keep these few: the reason is
  required, and ``test_skipped_blocks_are_few_and_justified`` lists them.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import io
import os
import re
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import asyncpool
from asyncpool.testing import PostgresInstance

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts),
]
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
MARKER = re.compile(r"^<!-- snippet: (skip|continue)(?: (.*?))? -->$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    marker: str | None
    reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker comment before each."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, language = match.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        previous = lines[start - 1].strip() if start > 0 else ""
        marker = MARKER.match(previous)
        found.append(
            Block(
                page=page,
                line=start + 1,
                language=language,
                code="\n".join(body) + "\n",
                marker=marker.group(1) if marker else None,
                reason=marker.group(2) if marker else None,
            )
        )
        i += 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
PYTHON_PAGES = sorted({b.page for b in ALL_BLOCKS if b.language == "python"})


def test_pages_have_python_blocks() -> None:
    assert len([b for b in ALL_BLOCKS if b.language == "python"]) > 30


def test_markers_are_well_formed() -> None:
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("<!-- snippet"):
                match = MARKER.match(line.strip())
                assert match is not None, f"{page}:{number}: unknown marker {line!r}"
                if match.group(1) == "skip":
                    assert match.group(2), f"{page}:{number}: a skip needs a reason"


def test_skipped_blocks_are_few_and_justified() -> None:
    skipped = [b for b in ALL_BLOCKS if b.marker == "skip"]
    python = [b for b in ALL_BLOCKS if b.language == "python"]
    assert all(b.language == "python" for b in skipped)
    assert len(skipped) <= 6, [b.id for b in skipped]
    assert len(skipped) * 10 < len(python)
    for block in skipped:
        assert block.reason and len(block.reason) > 20, block.id


def test_code_blocks_name_their_language() -> None:
    for block in ALL_BLOCKS:
        assert block.language, f"{block.id}: a fence without a language"


@contextlib.contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A database of its own for one page, dropped afterwards."""
    name = f"snippets_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    base, _, _ = server_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYTHON_PAGES])
def test_snippets_of_page_run(
    page: Path, postgres_server: PostgresInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [b for b in blocks_of(page) if b.language == "python" and b.marker != "skip"]
    if not blocks:
        pytest.skip("every block of this page is marked skip")
    with fresh_database(postgres_server.dsn) as dsn, asyncio.Runner() as runner:
        monkeypatch.setenv("ASYNCPOOL_DSN", dsn)
        pool: asyncpool.Pool | None = None
        namespace: dict[str, Any] = {}
        try:
            for block in blocks:
                if block.marker != "continue":
                    # A real module, as a script's __main__ is (SQLAlchemy's declarative
                    # classes look their annotations up in sys.modules[cls.__module__]).
                    module = types.ModuleType("__snippet__")
                    monkeypatch.setitem(sys.modules, "__snippet__", module)
                    namespace = module.__dict__
                    namespace["dsn"] = dsn
                code = compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                stdout = io.StringIO()
                try:
                    with contextlib.redirect_stdout(stdout):
                        if code.co_flags & 0x80:
                            if pool is None:
                                pool = runner.run(_open_pool(dsn))
                            namespace.setdefault("pool", pool)
                            runner.run(asyncio.wait_for(eval(code, namespace), 60))
                        else:
                            exec(code, namespace)
                    if os.environ.get("SNIPPET_SHOW"):
                        sys.__stderr__.write(f"--- {block.id}\n{stdout.getvalue()}")
                except BaseException as exc:
                    raise AssertionError(
                        f"{block.id}: the snippet failed: {exc!r}\n{block.code}"
                    ) from exc
        finally:
            if pool is not None:
                runner.run(pool.close())


async def _open_pool(dsn: str) -> asyncpool.Pool:
    return await asyncpool.create_pool(dsn, min_size=1, max_size=10)


def test_no_snippet_points_at_a_made_up_server() -> None:
    """Snippets use ``dsn`` (or ASYNCPOOL_DSN), never a host that does not exist."""
    for block in ALL_BLOCKS:
        if block.language == "python" and block.marker != "skip":
            code = "\n".join(line.split("#")[0] for line in block.code.splitlines())
            assert "@localhost/" not in code, block.id
            assert "@db/" not in code, block.id
            assert "@db1" not in code, block.id
            assert "os.environ[" not in code or "ASYNCPOOL_DSN" in code, block.id
