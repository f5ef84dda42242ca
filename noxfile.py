"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHON[0])
def tests(session: nox.Session) -> None:
    """The test suite on the default event loop (extra pytest args pass through)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON[0])
@nox.parametrize("loop", ["uvloop", "debug"])
def tests_loops(session: nox.Session, loop: str) -> None:
    """The test suite on uvloop and in asyncio debug mode."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs, env={"ASYNCPOOL_TEST_LOOP": loop})


@nox.session(python="3.12")
def tests_eager(session: nox.Session) -> None:
    """The test suite with asyncio's eager task factory (Python 3.12+)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs, env={"ASYNCPOOL_TEST_LOOP": "eager"})


@nox.session(python=PYTHON[0])
def tests_long(session: nox.Session) -> None:
    """The long fuzz and soak runs (marked `long`)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "long", "--timeout", "1800", *session.posargs)


@nox.session(python=PYTHON[0])
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON[0])
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "-p", "asyncpool")


@nox.session(python=PYTHON[0])
def bench(session: nox.Session) -> None:
    """The benchmark suite against every peer (see benchmarks/README.md)."""
    session.install("-e", ".[bench,test]", "pyinstrument")
    session.run("python", "-m", "benchmarks", *session.posargs)
