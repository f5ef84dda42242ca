"""Pure decisions of the pool: numbers in, a number or a verdict out.

No asyncio, no asyncpg, no logging, no clock: the pool reads its state and the time,
calls these, and then does the I/O they decide on. Each is tested by a table in
``tests/test_policy.py``.
"""

from __future__ import annotations

__all__ = ("connects_to_start",)


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
