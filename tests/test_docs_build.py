"""The documentation site builds with warnings as errors and documents every public name.

Needs the ``docs`` dependency group (Sphinx, MyST, Furo); skipped without it. ``nox -s docs`` runs
the same build.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = (
    "asyncpool",
    "asyncpool.sizing",
    "asyncpool.routing",
    "asyncpool.contrib.fastapi",
    "asyncpool.contrib.starlette",
    "asyncpool.contrib.workers",
    "asyncpool.contrib.sqlalchemy",
    "asyncpool.contrib.otel",
    "asyncpool.contrib.prometheus",
    "asyncpool.testing",
)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module, reason="the docs dependency group is not installed")
    out = tmp_path_factory.mktemp("html")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"),
            *("-d", str(out / ".doctrees"), str(ROOT / "docs"), str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"the docs build warned or failed:\n{done.stderr}"
    return out


def documented_names(site: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with (site / "objects.inv").open("rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    names: set[str] = set()
    for role, entries in inventory.items():
        if role.startswith("py:"):
            names.update(entries)
    return names


def test_the_site_builds_strictly(built_site: Path) -> None:
    for page in ("index", "getting-started", "performance", "changelog", "api/asyncpool"):
        assert (built_site / f"{page}.html").is_file(), page
    assert (built_site / "_images" / "latest.png").is_file()  # the benchmark plot


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_api_reference_has_every_public_name(built_site: Path, module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = documented_names(built_site)
    missing = [name for name in module.__all__ if f"{module_name}.{name}" not in names]
    assert not missing, f"not in the API reference: {missing}"


def test_the_user_guide_pages_are_all_in_the_navigation(built_site: Path) -> None:
    pages = sorted(
        p.relative_to(ROOT / "docs")
        for p in (ROOT / "docs").rglob("*.md")
        if "_build" not in p.parts
    )
    index = (built_site / "index.html").read_text()
    for page in pages:
        if page.name == "index.md":
            continue
        assert page.with_suffix(".html").as_posix() in index, page


def test_the_readme_links_point_at_files_that_exist() -> None:
    """The README is read on its own (a repository page), outside the Sphinx build."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert len(local) > 20
    for target in local:
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    assert len(readme.splitlines()) <= 300
