"""The pool's side of ``autosize=True`` (pure): its own counters in, a limit out, within
the server's live connection budget.

Nothing is added to the release path for this. The pool calls :meth:`Sizer.step` once
per maintenance pass (about every ``maintenance_interval``) with what it counts anyway:
the leases completed and their summed hold time (the use-time summary), and the
acquires that found no idle connection at once (the wait-time summary). Two readings
make a window for :class:`~asyncpool._autosize.AdaptiveLimit`:

* the mean hold time: summed hold time / leases;
* the mean number of leases in progress, by Little's law: summed hold time / the
  window's length;
* the peak: the whole limit when some borrower found no idle connection, else the mean
  rounded (demand below the limit: the algorithm does not grow then).

A window counts only when the pool had connections lent at both of its edges. One that
began or ended with none lent (a burst starting or stopping within it) holds idle time
that Little's law spreads over the busy part: its mean in-flight count comes out too
low, and the algorithm would read a saturated pool as one with room to grow. It is
dropped, and the next window starts at its end.

Leases already under way when the limit changed count in the next window; with leases
much shorter than a window (milliseconds against a second) they are a small share.

The budget. With :func:`fair_share`, each of ``instances`` pools takes at most its share
of what the server gives ordinary roles, less the headroom of :func:`default_headroom`
(10 % of it, at least 3: the same rule as ``python -m asyncpool size``), and never more
than the server's other clients leave free. The pool reads
the server's facts (``_budget.read_server_facts``) at open and about every
:data:`BUDGET_INTERVAL` seconds on an idle connection and gives them to
:meth:`Sizer.take_facts`; a connect refused as "too many clients" caps the budget at
what the pool holds (:meth:`Sizer.server_full`) until the next reading.
"""

from __future__ import annotations

import math
from typing import Final

from ._autosize import AdaptiveLimit, AutosizeStats, LimitDecision
from ._budget import ServerFacts

__all__ = ("BUDGET_INTERVAL", "Sizer", "default_headroom", "fair_share")

#: Seconds between two readings of the server's connection facts.
BUDGET_INTERVAL: Final = 5.0


def default_headroom(capacity: int) -> int:
    """Slots to leave free for admin, migrations and monitoring: 10 % of ``capacity``,
    at least 3 (never more than ``capacity``).
    """
    return min(capacity, max(3, math.ceil(capacity * 0.1)))


def fair_share(
    max_connections: int,
    superuser_reserved: int,
    reserve: int,
    instances: int,
    others_in_use: int,
) -> int:
    """The most connections one of ``instances`` pools may hold now (pure).

    ``capacity = max_connections - superuser_reserved - reserve`` is what the whole
    fleet (and every other client of the server) may hold. Each instance gets at most
    ``capacity // instances`` (so ``instances`` pools at their share never exceed it,
    and pools that all want more converge to equal shares), and never more than what
    the others leave free: ``capacity - others_in_use``, where ``others_in_use``
    counts every client connection of the server that is not this pool's (other
    instances, other applications, monitoring). The result is never negative.

    Args:
        max_connections: the server's ``max_connections``.
        superuser_reserved: ``superuser_reserved_connections`` (plus
            ``reserved_connections`` on PostgreSQL 16+).
        reserve: headroom kept free for admin sessions, migrations and deploys.
        instances: how many pools share the server (at least 1).
        others_in_use: client connections held by everyone but this pool.
    """
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    if reserve < 0 or superuser_reserved < 0 or others_in_use < 0:
        raise ValueError("reserve, superuser_reserved and others_in_use must be >= 0")
    capacity = max_connections - superuser_reserved - reserve
    if capacity <= 0:
        return 0
    return max(0, min(capacity // instances, capacity - others_in_use))


class Sizer:
    """The adaptive limit of one pool, fed from the pool's counters (internal)."""

    __slots__ = ("_instances", "_mark", "algorithm", "budget", "decision", "facts_at")

    def __init__(self, min_size: int, max_size: int, instances: int) -> None:
        """Start at ``min_size`` (at least 1), never above ``max_size``."""
        self.algorithm = AdaptiveLimit(min_limit=min_size, max_limit=max_size)
        #: The most connections the server's budget allows now (None: not known yet).
        self.budget: int | None = None
        #: The last update's decision (None before the first).
        self.decision: LimitDecision | None = None
        #: When the server's facts were last taken (the pool's clock), -inf: never.
        self.facts_at = -math.inf
        self._instances = instances
        self._mark: tuple[float, int, float, int, bool] | None = None

    @property
    def limit(self) -> int:
        """The current limit."""
        return self.algorithm.limit

    def step(self, now: float, leases: int, held: float, slow: int, busy: bool) -> LimitDecision:
        """Feed the window since the last step and decide.

        Args:
            now: the pool's clock.
            leases: leases completed since the counters' start (use-time count).
            held: their summed hold time in seconds (use-time sum).
            slow: acquires that found no idle connection at once (wait-time count).
            busy: whether the pool has connections lent now; a window that began or
                ends with none is dropped (see the module docstring).
        """
        mark = self._mark
        if mark is not None:
            at, leases_before, held_before, slow_before, busy_before = mark
            span = now - at
            # (pop_stats() restarts the counters: fewer leases than at the mark.)
            if busy and busy_before and leases > leases_before and span > 0:
                total = held - held_before
                inflight = total / span
                peak = self.algorithm.limit if slow > slow_before else round(inflight)
                self.algorithm.on_window(leases - leases_before, total, inflight, peak)
        self.decision = self.algorithm.update(now, self.budget)
        self._mark = (now, leases, held, slow, busy)
        return self.decision

    def take_facts(self, now: float, facts: ServerFacts, own_open: int) -> int:
        """Work out the budget from the server's facts; ``own_open``: the connections
        this pool holds open (they are among the server's client connections).
        """
        others = max(facts.client_connections - own_open, 0)
        headroom = default_headroom(facts.capacity)
        self.budget = fair_share(
            facts.max_connections, facts.reserved, headroom, self._instances, others
        )
        self.facts_at = now
        return self.budget

    def server_full(self, own_open: int) -> None:
        """A connect was refused as "too many clients": hold at what the pool has."""
        held = max(own_open, 1)
        self.budget = held if self.budget is None else min(self.budget, held)

    def bound(self, min_size: int, max_size: int) -> None:
        """New bounds (``Pool.resize``); the limit moves into them."""
        self.algorithm.set_bounds(min_size, max_size)

    def stats(self) -> AutosizeStats:
        """The algorithm's state, with the budget."""
        return self.algorithm.stats(self.budget)
