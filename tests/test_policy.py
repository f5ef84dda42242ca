"""The pool's pure decisions, by table (asyncpool/_policy.py)."""

from __future__ import annotations

import asyncio

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


# ---------------------------------------------------------------- return verdict

from asyncpool._policy import (  # noqa: E402
    HAND_OVER,
    ReturnVerdict,
    diagnose_timeout,
    next_backoff,
    return_verdict,
    stall_limit,
)

CLEAN = {
    "closed": False,
    "used_up": False,
    "needs_rollback": False,
    "dirty": False,
    "mode": "auto",
    "shares_sessions": False,
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, HAND_OVER),
        ({"dirty": True}, ReturnVerdict("reset", full=True)),
        ({"needs_rollback": True}, ReturnVerdict("reset", rollback=True)),
        ({"needs_rollback": True, "dirty": True}, ReturnVerdict("reset", True, True)),
        ({"dirty": True, "shares_sessions": True}, HAND_OVER),
        ({"mode": "full"}, ReturnVerdict("reset", full=True)),
        ({"mode": "full", "shares_sessions": True}, HAND_OVER),
        ({"mode": "rollback", "dirty": True}, HAND_OVER),
        ({"mode": "rollback", "needs_rollback": True}, ReturnVerdict("reset", rollback=True)),
        ({"mode": "none", "needs_rollback": True}, ReturnVerdict("discard")),
        ({"mode": "none", "dirty": True}, HAND_OVER),
        ({"mode": "custom"}, ReturnVerdict("reset")),
        ({"closed": True, "dirty": True}, ReturnVerdict("discard")),
        ({"used_up": True}, ReturnVerdict("retire")),
        ({"used_up": True, "closed": True}, ReturnVerdict("discard")),
    ],
)
def test_return_verdict(changes: dict[str, object], expected: ReturnVerdict) -> None:
    assert return_verdict(**{**CLEAN, **changes}) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["auto", "full", "rollback", "none"])
@pytest.mark.parametrize("pooler", [None, "pgbouncer-transaction"])
@pytest.mark.parametrize("dirty", [False, True])
@pytest.mark.parametrize("in_transaction", [False, True])
async def test_the_pool_returns_connections_as_the_verdict_says(
    make_fake_pool: object, mode: str, pooler: str | None, dirty: bool, in_transaction: bool
) -> None:
    """Pins the hot path's inlined clean case (PoolCore._returned) and the slow path to
    return_verdict: a reset runs exactly when the verdict says so."""
    pool = make_fake_pool(min_size=1, max_size=1, reset=mode, pooler=pooler)  # type: ignore[operator]
    await pool.open()
    conn = await pool.acquire()
    raw = conn.raw_connection
    if in_transaction:
        raw.in_transaction = True
    if dirty:
        conn.mark_dirty()
    before = len(raw.queries)
    await pool.release(conn)
    for _ in range(5):
        await asyncio.sleep(0)
    verdict = return_verdict(
        **{**CLEAN, "needs_rollback": in_transaction, "dirty": dirty, "mode": mode,
           "shares_sessions": pooler is not None}
    )  # fmt: skip
    stats = pool.stats()
    if verdict.action == "hand over":
        assert raw.queries[before:] == [] and stats.resets_skipped_total == 1
    elif verdict.action == "reset":
        assert raw.queries[before:] and stats.resets_total == 1
    else:
        assert verdict.action == "discard" and raw.closed
    await pool.close()


@pytest.mark.parametrize(
    ("previous", "initial", "cap", "expected"),
    [(0.0, 0.05, 1.0, 0.05), (0.05, 0.05, 1.0, 0.1), (0.8, 0.05, 1.0, 1.0), (1.0, 0.05, 1.0, 1.0),
     (16.0, 0.05, 30.0, 30.0)],
)  # fmt: skip
def test_next_backoff(previous: float, initial: float, cap: float, expected: float) -> None:
    assert next_backoff(previous, initial, cap) == expected


@pytest.mark.parametrize(
    ("estimate", "expected"),
    [(None, float("inf")), (0.002, 1.0), (0.25, 1.0), (0.5, 2.0), (3.0, 12.0)],
)
def test_stall_limit(estimate: float | None, expected: float) -> None:
    assert stall_limit(estimate) == expected


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"down": True, "last_error": "ConnectionRefusedError()"}, "the database looks down"),
        ({"oldest_held": 9.0, "leak_timeout": 5.0}, "likely a leak"),
        ({"busy": 4}, "raise max_size"),
        ({"last_error": "TimeoutError()"}, "new connections fail: TimeoutError()"),
        ({}, "opened too slowly"),
    ],
)
def test_diagnose_timeout(changes: dict[str, object], cause: str) -> None:
    facts = {
        "waited": 0.25, "name": "p", "size": 4, "max_size": 4, "in_use": 2, "idle": 0,
        "connecting": 1, "busy": 2, "waiting": 3, "oldest_held": 1.0, "leak_timeout": None,
        "down": False, "last_error": None,
    }  # fmt: skip
    text = diagnose_timeout(**{**facts, **changes})  # type: ignore[arg-type]
    assert text.startswith("asyncpool pool 'p': no connection after waiting 0.250s")
    assert "size=4/4" in text and "waiting=3" in text
    assert text.endswith(cause) or cause in text.split("Likely cause: ")[1]
