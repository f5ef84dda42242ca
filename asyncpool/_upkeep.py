"""The pool's upkeep: what happens with time rather than with borrowers (lifetimes,
idle limits, keepalive pings, leak warnings, refilling ``min_size``).

One maintenance task per pool wakes about every ``maintenance_interval`` and makes one
synchronous pass (:meth:`PoolUpkeep._housekeep`); it holds only a weak reference to the
pool. Idle expiry has its own single timer, armed for the oldest idle connection, so a
short ``max_idle`` is kept to within milliseconds rather than to the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from time import monotonic as _now

from ._events import EventKind
from ._policy import MIN_HOLD_SAMPLES
from ._sizer import BUDGET_INTERVAL
from ._slots import CHECKING, IN_USE
from ._state import INF, OPEN
from ._workers import PoolWorkers

__all__ = ("PoolUpkeep", "maintain")

logger = logging.getLogger("asyncpool.pool")


class PoolUpkeep(PoolWorkers):
    """Maintenance passes and the idle-expiry timer (internal)."""

    __slots__ = ()

    def _schedule_idle_expiry(self) -> None:
        """(Re-)arm the pool's one idle-expiry timer: for the oldest idle connection's
        ``max_idle``, or ``max_idle`` from now when none is idle; none while the pool
        holds no more than ``min_size`` (nothing may expire then; a new connection
        re-arms it).
        """
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cfg = self._config
        max_idle = cfg.max_idle
        if (
            max_idle is None
            or max_idle == INF
            or self._state is not OPEN
            or self._table.active <= cfg.min_size
        ):
            return
        loop = self._loop
        assert loop is not None
        now = _now()
        oldest = min((slot.last_used for slot in self._idle), default=now)
        self._idle_timer = loop.call_later(max(oldest + max_idle - now, 0.0), self._expire_idle)

    def _expire_idle(self) -> None:
        """The idle-expiry timer: close connections idle ``max_idle`` or longer, oldest
        first, while the pool holds more than ``min_size``; then re-arm.
        """
        self._idle_timer = None
        if self._state is not OPEN:
            return
        cfg = self._config
        assert cfg.max_idle is not None
        now = _now()
        for slot in sorted(self._idle, key=lambda slot: slot.last_used):
            if self._table.active <= cfg.min_size or now - slot.last_used < cfg.max_idle:
                break
            self._retire(slot, "max_idle")
        self._schedule_idle_expiry()

    def _measure_hold(self) -> None:
        """Refresh the usual lease time (for overload control) from the use-time histogram:
        the mean of the leases since the last measure, once there are enough of them.
        """
        use_time = self._counters.use_time
        count, total = use_time.count, use_time.sum
        last_count, last_total = self._hold_mark
        if count < last_count:  # pop_stats() reset the counters
            last_count, last_total = 0, 0.0
        if count - last_count >= MIN_HOLD_SAMPLES:
            self._mean_hold = (total - last_total) / (count - last_count)
            self._hold_mark = (count, total)
            self._waiters.min_useful = self._mean_hold
            self._update_admission()

    def _trim(self, reason: str) -> None:
        """Bring the pool down to its limit (``max_size``, or the adaptive limit): excess
        idle connections close now, the longest idle first; busy ones when they come back
        (``_hand_over``).
        """
        excess = self._table.active - self._max_size
        for slot in list(self._idle)[: max(excess, 0)]:
            self._retire(slot, reason)
        if self._table.active > self._max_size:
            self._over_max = True

    def _autosize_step(self) -> None:
        """One update of the adaptive limit (``autosize=True``) from the pool's counters,
        applied at once; the server's budget is read again every ``BUDGET_INTERVAL``
        seconds (see ``_sizer``).
        """
        sizer = self._sizer
        assert sizer is not None
        counters = self._counters
        now = self._clock()
        lent = self._table.state_counts()[IN_USE] > 0
        decision = sizer.step(
            now, counters.use_time.count, counters.use_time.sum, counters.wait_time.count, lent
        )
        if decision.moved:
            self._max_size = decision.limit
            self._update_admission()
            self._trim("autosize")
            change = f"{decision.reason} ({decision.previous} -> {decision.limit})"
            if self._hooks:
                self._emit(EventKind.LIMIT, reason=change)
            logger.debug("asyncpool pool %r: limit %s", self.name, change)
        if self._config.pooler is None and now - sizer.facts_at >= BUDGET_INTERVAL:
            sizer.facts_at = now  # (one reading at a time)
            self._spawn(self._read_budget(), "asyncpool-budget")

    def _housekeep(self) -> None:
        """One maintenance pass (sync): lifetimes, idle limits, keepalive, leaks, refill."""
        if self._state != OPEN:
            return
        self._measure_hold()
        if self._sizer is not None:
            self._autosize_step()
        cfg = self._config
        loop = self._loop
        assert loop is not None
        now = _now()
        # Oldest-returned first: the deque's left end has been idle longest.
        for slot in list(self._idle):
            if slot.conn.is_closed():
                self._table.take(slot, IN_USE)
                self._discard(slot, lost=True)
            elif now >= slot.expires_at or slot.generation != self._generation:
                self._retire(slot, "max_lifetime or expire()")
            elif (
                cfg.keepalive_interval is not None
                and now - slot.last_used >= cfg.keepalive_interval
            ):
                self._table.take(slot, CHECKING)
                self._spawn(self._keepalive(slot), "asyncpool-keepalive")
        if cfg.leak_timeout is not None:
            for slot in self._slots:
                if (
                    slot.state is IN_USE
                    and not slot.leak_reported
                    and slot.stack is not None
                    and now - slot.acquired_at >= cfg.leak_timeout
                ):
                    slot.leak_reported = True
                    self._counters.leaks_total += 1
                    if self._hooks:
                        self._emit(EventKind.LEAK, now - slot.acquired_at, "held too long")
                    logger.warning(
                        "asyncpool pool %r: a connection has been held for %.1fs "
                        "(leak_timeout=%ss); it was acquired at:\n%s",
                        self.name,
                        now - slot.acquired_at,
                        cfg.leak_timeout,
                        slot.stack,
                    )
        self._grow()


async def maintain(pool_ref: weakref.ref[PoolUpkeep], interval: float) -> None:
    """The pool's one background maintenance loop (holds only a weak reference)."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        pool = pool_ref()
        if pool is None:
            return
        try:
            pool._housekeep()
        except Exception:  # never let upkeep die silently
            logger.exception("asyncpool pool %r: maintenance failed", pool.name)
        del pool
