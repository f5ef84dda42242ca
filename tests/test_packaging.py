"""The built distributions: files and metadata (what a user installs from the index).

Builds the sdist and the wheel once (``python -m build --no-isolation``; build and
hatchling are in the test dependency group).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

import asyncpool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def wheel_metadata(dist: Path) -> tuple[list[str], Message]:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(meta).decode())
    return names, metadata


def test_wheel_files(dist: Path) -> None:
    names, _ = wheel_metadata(dist)
    assert "asyncpool/__init__.py" in names
    assert "asyncpool/py.typed" in names
    assert "asyncpool/contrib/fastapi.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    # No pytest11 entry point: the plugin is opt-in.
    assert not [n for n in names if n.endswith("entry_points.txt")]


def test_wheel_metadata(dist: Path) -> None:
    _, meta = wheel_metadata(dist)
    assert meta["Name"] == "asyncpool-pg"
    assert meta["Version"] == asyncpool.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Framework :: AnyIO" not in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta.get_all("Project-URL") is None  # no placeholder URL
    requires = meta.get_all("Requires-Dist")
    unconditional = sorted(re.split(r"[<>=!~\[ ]", r)[0] for r in requires if ";" not in r)
    assert unconditional == ["asyncpg", "asyncpg-stubs"]
    extras = set(meta.get_all("Provides-Extra"))
    # Users see the integrations' extras only: the development tooling (test, bench,
    # docs, dev) is in PEP 735 dependency groups, outside the package's metadata.
    assert extras == {"fastapi", "starlette", "otel", "prometheus", "sqlalchemy"}
    assert any(r.startswith("fastapi>=0.121") and "extra == 'fastapi'" in r for r in requires)
    # The description the index shows: the README, without links the index cannot follow.
    description = meta.get_payload()
    assert "asyncpool" in description and "pip install asyncpool-pg" in description
    assert "](benchmarks/" not in description and "](docs/" not in description
    assert "`benchmarks/results/latest.png` in the source distribution" in description


def test_sdist_leaves_out_benchmark_results(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"asyncpool_pg-{asyncpool.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    assert "LICENSE" in names
    assert "asyncpool/py.typed" in names
    assert "benchmarks/runner.py" in names
    assert not [n for n in names if n.startswith("benchmarks/results")]
    assert sdist.stat().st_size < 400_000, sdist.stat().st_size
