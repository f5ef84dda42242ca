"""The public surface: names, modules, docstrings, typing marker."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import asyncpool

PUBLIC_MODULES = [
    "asyncpool",
    "asyncpool.testing",
    "asyncpool.sizing",
    "asyncpool.routing",
    "asyncpool.contrib.starlette",
    "asyncpool.contrib.fastapi",
    "asyncpool.contrib.workers",
    "asyncpool.contrib.sqlalchemy",
    "asyncpool.contrib.otel",
    "asyncpool.contrib.prometheus",
]


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    assert isinstance(asyncpool.__all__, tuple)
    for name in asyncpool.__all__:
        assert hasattr(asyncpool, name), name


def test_public_classes_report_the_package_module() -> None:
    for name in asyncpool.__all__:
        obj = getattr(asyncpool, name)
        if inspect.isclass(obj):
            assert obj.__module__ == "asyncpool", name


def test_error_tree() -> None:
    for name in (
        "PoolTimeout",
        "PoolClosed",
        "TooManyWaiters",
        "ConnectionReleasedError",
        "DatabaseUnavailable",
        "PoolUsageError",
        "ConnectionBudgetExceeded",
        "ConnectionConfigError",
    ):
        assert issubclass(getattr(asyncpool, name), asyncpool.PoolError), name
    assert issubclass(asyncpool.PoolTimeout, TimeoutError)
    assert issubclass(asyncpool.PoolOverloaded, asyncpool.PoolTimeout)
    assert issubclass(asyncpool.PoolUsageError, RuntimeError)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, module_name
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{module_name}.{name}"
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                assert member.__doc__, f"{module_name}.{name}.{attr}"


def test_package_is_typed() -> None:
    assert (Path(asyncpool.__file__).parent / "py.typed").exists()


def test_stats_are_frozen() -> None:
    stats = asyncpool.Pool().stats()
    with pytest.raises(AttributeError):
        stats.size = 3  # type: ignore[misc]
