"""Pure decisions of the pool: numbers in, a number or a verdict out.

No asyncio, no asyncpg, no logging, no clock: the pool reads its state and the time,
calls these, and then does the I/O they decide on. Each is tested by a table in
``tests/test_policy.py``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = (
    "HAND_OVER",
    "MIN_HOLD_SAMPLES",
    "STALL_FLOOR",
    "ReturnVerdict",
    "connects_to_start",
    "diagnose_timeout",
    "admission_limit",
    "next_backoff",
    "standing_after",
    "return_verdict",
    "stall_limit",
)


def connects_to_start(
    *,
    active: int,
    connecting: int,
    returning: int,
    waiting: int,
    min_size: int,
    max_size: int,
    concurrency: int,
    down: bool,
) -> int:
    """How many connects to start now.

    Two needs, each with its own bound:

    - **Borrowers waiting**: as many as wait, less the connects already under way and
      the connections coming back from a reset or a check (a round trip away, sooner
      than a connect). Bounded by ``concurrency`` connects in flight: a burst of
      borrowers must not become a storm of connects (they wait only on the pool).
    - **The floor** (``min_size``, or one connection while the database is down, to
      find out when it is back): restored at once after losses, as asyncpg's pool
      does, not ``concurrency`` at a time; but while the database is down, the floor
      too waits its turn within ``concurrency``.

    ``active`` counts every connection not closing, those being opened included. The
    result never takes the pool past ``max_size``.
    """
    room = max_size - active
    if room <= 0:
        return 0
    in_flight_room = max(concurrency - connecting, 0)
    for_waiters = min(waiting - connecting - returning, in_flight_room)
    floor = max(min_size, 1 if down else 0) - active
    if down:
        floor = min(floor, in_flight_room)
    return max(min(max(for_waiters, floor), room), 0)


def next_backoff(previous: float, initial: float, cap: float) -> float:
    """The reconnect backoff after one more failure: doubling from ``initial`` up to
    ``cap`` (the caller waits a random 50-100 % of it, so pools do not retry in step).
    """
    return min(max(previous * 2, initial), cap)


#: A background connect or round trip running this long while borrowers wait is given
#: up and tried afresh; four times the usual connect time when that is more.
STALL_FLOOR = 1.0


def stall_limit(connect_estimate: float | None) -> float:
    """How long a background connect or round trip may take while borrowers wait:
    four times the usual connect time, at least :data:`STALL_FLOOR`; no limit before a
    connect has succeeded (nothing is known of the server's speed yet).
    """
    if connect_estimate is None:
        return float("inf")
    return max(STALL_FLOOR, 4 * connect_estimate)


class ReturnVerdict(NamedTuple):
    """What to do with a connection given back: ``action`` is ``"hand over"`` (ready
    as it is), ``"reset"`` (``rollback`` and/or ``full`` reset, or the custom reset
    callable, first), ``"retire"`` (close politely) or ``"discard"`` (abort).
    """

    action: Literal["hand over", "reset", "retire", "discard"]
    rollback: bool = False
    full: bool = False


HAND_OVER = ReturnVerdict("hand over")


def return_verdict(
    *,
    closed: bool,
    used_up: bool,
    needs_rollback: bool,
    dirty: bool,
    mode: str,
    shares_sessions: bool,
) -> ReturnVerdict:
    """Decide the fate of a returned connection.

    ``closed``: the connection is gone; ``used_up``: past its lifetime, uses or queries,
    or expired; ``needs_rollback``: a transaction (or a cancelled query) is open;
    ``dirty``: the lease ran statements that may change session state; ``mode``: the
    ``reset`` setting (``"custom"`` for a callable); ``shares_sessions``: behind a
    transaction or statement pooler (session state can be neither kept nor reset).
    The hot path (``PoolCore._returned``) decides the common case inline: clean, not
    dirty, ``reset="auto"``, no pooler is :data:`HAND_OVER` (a test pins the two).
    """
    if closed:
        return ReturnVerdict("discard")
    if used_up:
        return ReturnVerdict("retire")
    full = (dirty if mode == "auto" else mode == "full") and not shares_sessions
    if not (needs_rollback or full or mode == "custom"):
        return HAND_OVER
    if mode == "none":
        return ReturnVerdict("discard")  # no reset query allowed: replace it
    return ReturnVerdict("reset", rollback=needs_rollback, full=full)


def diagnose_timeout(
    *,
    waited: float,
    name: str,
    size: int,
    max_size: int,
    in_use: int,
    idle: int,
    connecting: int,
    busy: int,
    waiting: int,
    oldest_held: float,
    leak_timeout: float | None,
    down: bool,
    last_error: str | None,
) -> str:
    """The message of a :class:`PoolTimeout`: the pool's state, and the likely cause
    with what to change. ``busy``: connections lent, being reset or being checked.
    """
    if last_error is not None and down:
        cause = f"the database looks down (last connect error: {last_error})"
    elif leak_timeout is not None and oldest_held > leak_timeout:
        cause = (
            f"a borrower has held a connection for {oldest_held:.1f}s, longer than "
            f"leak_timeout={leak_timeout}s: likely a leak (see the leak warning)"
        )
    elif busy >= max_size:
        cause = (
            f"the pool is at max_size={max_size} and every connection is busy: "
            "raise max_size (if the server allows), shorten transactions, or raise "
            "acquire_timeout"
        )
    elif last_error is not None:
        cause = f"new connections fail: {last_error}"
    else:
        cause = "connections are being opened too slowly (see connect_timeout)"
    return (
        f"asyncpool pool {name!r}: no connection after waiting {waited:.3f}s "
        f"(size={size}/{max_size}, in_use={in_use}, idle={idle}, "
        f"connecting={connecting}, waiting={waiting}, oldest borrower has held "
        f"its connection {oldest_held:.3f}s). Likely cause: {cause}"
    )


# ------------------------------------------------------------------ overload

#: Lends a hold-time estimate needs before admission control trusts it.
MIN_HOLD_SAMPLES = 20


def standing_after(started: float, deadline: float) -> float:
    """From when a waiter still waiting shows that the queue stands (the pool is past its
    capacity): once it has used half of its time. Scale-free: with 100 ms deadlines that
    is 50 ms of queueing, with the default 30 s it is 15 s; never for a waiter without a
    deadline. While the oldest waiter is past that moment, the queue serves the newest
    waiter first (adaptive LIFO): served from the front of a standing queue, every
    borrower would get its connection with almost no time left, and miss its deadline.
    """
    return started + 0.5 * (deadline - started)


def admission_limit(pool_size: int, mean_hold: float, remaining: float) -> float:
    """The last place in a first-come-first-served queue from which a borrower with
    ``remaining`` seconds can expect a connection in time (Little's law: each of the
    ``pool_size`` connections frees about every ``mean_hold`` seconds); unbounded while
    the usual hold is unknown (0). A borrower queued further back is refused at once:
    microseconds instead of a wait that ends in a timeout.
    """
    if mean_hold <= 0:
        return float("inf")
    return remaining * pool_size / mean_hold
