"""The pool's pure decisions, by table (asyncpool/_policy.py)."""

from __future__ import annotations

import pytest

from asyncpool._policy import connects_to_start

BASE = {
    "active": 0,
    "connecting": 0,
    "returning": 0,
    "waiting": 0,
    "min_size": 0,
    "max_size": 10,
    "concurrency": 2,
    "down": False,
}


@pytest.mark.parametrize(
    ("case", "changes", "expected"),
    [
        ("nothing wanted", {}, 0),
        ("one waiter", {"waiting": 1}, 1),
        ("a burst is paced by concurrency", {"waiting": 50}, 2),
        ("connects in flight count", {"waiting": 50, "active": 2, "connecting": 2}, 0),
        ("one slot of concurrency left", {"waiting": 5, "active": 1, "connecting": 1}, 1),
        ("resets on their way serve waiters", {"waiting": 3, "active": 3, "returning": 3}, 0),
        ("floor restored at once", {"min_size": 6, "active": 1}, 5),
        ("floor beyond concurrency", {"min_size": 6, "active": 2, "connecting": 2}, 4),
        ("floor and waiters: the larger", {"min_size": 3, "waiting": 8}, 3),
        ("never past max_size", {"min_size": 6, "max_size": 4}, 4),
        ("full pool", {"waiting": 9, "active": 10}, 0),
        ("over max after resize", {"waiting": 9, "active": 12}, 0),
        ("down: one connection to find out", {"down": True}, 1),
        ("down: floor paced by concurrency", {"down": True, "min_size": 6}, 2),
        ("down: in flight already", {"down": True, "min_size": 6, "active": 2, "connecting": 2}, 0),
    ],
)
def test_connects_to_start(case: str, changes: dict[str, object], expected: int) -> None:
    assert connects_to_start(**{**BASE, **changes}) == expected, case  # type: ignore[arg-type]
