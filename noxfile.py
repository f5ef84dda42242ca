"""Developer tasks: `nox -s tests`, `lint`, `typecheck`, `bench`, `tests_fastapi_floor`,
`package`, `docs`, `docs_screenshots`."""

from __future__ import annotations

import nox


def _install(session: nox.Session, *args: str) -> None:
    """The package (editable) and the dependency groups named in ``args`` (PEP 735,
    which needs pip >= 25.1)."""
    session.install("pip>=25.1")
    session.install("-e", ".", *args)


nox.options.sessions = ["lint", "typecheck", "tests", "tests_fastapi_floor"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]

#: The lowest FastAPI the `fastapi` extra allows (keep in step with pyproject.toml).
FASTAPI_FLOOR = "0.121.0"

#: What the FastAPI/Starlette tests need, without the rest of the test group.
FASTAPI_TEST_DEPS = [
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "httpx",
    "asgi-lifespan",
    "uvicorn",
    "anyio",
]


@nox.session(python=PYTHON[0])
def tests(session: nox.Session) -> None:
    """The test suite on the default event loop (extra pytest args pass through)."""
    _install(session, "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON[0])
@nox.parametrize("loop", ["uvloop", "debug"])
def tests_loops(session: nox.Session, loop: str) -> None:
    """The test suite on uvloop and in asyncio debug mode."""
    _install(session, "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs, env={"ASYNCPOOL_TEST_LOOP": loop})


@nox.session(python="3.12")
def tests_eager(session: nox.Session) -> None:
    """The test suite with asyncio's eager task factory (Python 3.12+)."""
    _install(session, "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs, env={"ASYNCPOOL_TEST_LOOP": "eager"})


@nox.session(python=PYTHON[0])
def tests_long(session: nox.Session) -> None:
    """The long fuzz and soak runs (marked `long`)."""
    _install(session, "--group", "test")
    session.run("python", "-m", "pytest", "-m", "long", "--timeout", "1800", *session.posargs)


@nox.session(python=PYTHON[0])
def tests_fastapi_floor(session: nox.Session) -> None:
    """The FastAPI integration's tests on the lowest FastAPI the extra allows."""
    session.install("-e", ".", f"fastapi=={FASTAPI_FLOOR}", *FASTAPI_TEST_DEPS)
    session.run("python", "-m", "pytest", "tests/test_contrib_fastapi.py", *session.posargs)


@nox.session(python=PYTHON[0])
def lint(session: nox.Session) -> None:
    """ruff (lint and format) over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON[0])
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the type test (tests/typecheck)."""
    _install(session, "--group", "dev")
    session.run("mypy")
    session.run("mypy", "--strict", "tests/typecheck")


@nox.session(python=PYTHON[0])
def package(session: nox.Session) -> None:
    """Build the sdist and wheel and check their contents and metadata."""
    _install(session, "--group", "test")
    session.run("python", "-m", "pytest", "tests/test_packaging.py", *session.posargs)


@nox.session(python=PYTHON[0])
def bench(session: nox.Session) -> None:
    """The benchmark suite against every peer (see benchmarks/README.md)."""
    _install(session, "--group", "bench", "--group", "test", "pyinstrument")
    session.run("python", "-m", "benchmarks", *session.posargs)


DOCS_OUT = "docs/_build/html"
SCREENSHOT_PAGES = (
    "index",
    "getting-started",
    "guide/acquire",
    "performance",
    "api/asyncpool",
)


@nox.session(python=PYTHON[0])
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors: docs/_build/html/index.html."""
    # The test group brings the integrations' libraries, which autodoc imports.
    _install(session, "--group", "docs", "--group", "test")
    session.run("python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", DOCS_OUT)


@nox.session(python=PYTHON[0])
def docs_screenshots(session: nox.Session) -> None:
    """Build the site, then photograph a few pages in headless Chromium (Debian's
    `chromium` on PATH): docs/_build/screenshots/*.png, to look at before a release.
    """
    import pathlib
    import shutil
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        session.error("needs Chromium on PATH (Debian: apt-get install chromium)")
    docs(session)
    site = pathlib.Path(DOCS_OUT).resolve()
    shots = pathlib.Path("docs/_build/screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    for page in SCREENSHOT_PAGES:
        target = shots / (page.replace("/", "-") + ".png")
        with tempfile.TemporaryDirectory() as profile:
            session.run(
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={target}",
                "--window-size=1280,1600",
                (site / f"{page}.html").as_uri(),
                external=True,
                silent=True,
            )
        if not target.is_file() or target.stat().st_size < 10_000:
            session.error(f"no usable screenshot of {page}: {target}")
        session.log(f"{page}: {target}")
