"""The adaptive pool size: a limit algorithm driven by observed hold times (pure).

A pool is best when it is as small as it can be without losing throughput: past the
database's "knee" (about its core count for CPU-bound queries) more connections only
queue inside the server, so every query takes longer and nothing more gets done. This
module decides the limit; the pool applies it. Nothing here reads a clock, awaits,
logs or touches a connection: the pool reports each completed lease with
:meth:`AdaptiveLimit.on_sample` and asks for a decision with
:meth:`AdaptiveLimit.update` about every 0.5-1 s, passing the time in. So the whole
policy can be tested with tables of fake latencies.

Which algorithm, and why
------------------------
Two published designs were considered (Netflix's concurrency-limits library, whose
ideas Envoy's adaptive concurrency filter also uses):

* **Gradient2** keeps a long-term average latency and a short-term one and sets
  ``limit = limit * clamp(tolerance * long / short) + queue_size``. In steady state the
  long average catches up with the short one, the gradient is 1 and the limit keeps
  growing by ``queue_size`` until latency rises far enough (``tolerance`` is 1.5-2 by
  default), then falls back: a sawtooth whose amplitude grows with the limit. Its
  tolerance is a latency ratio, and for a 2-core server twice the no-load latency is
  already twice the right pool size.
* **TCP Vegas** estimates how many of the in-flight requests are *queued* rather than
  served: ``queue = inflight * (1 - rtt_noload / rtt)``. With a server that serves
  ``c`` requests at once and shares its CPU among the rest, ``rtt = rtt_noload *
  inflight / c`` past the knee, so ``queue = inflight - c`` exactly: the estimate is in
  connections, the unit we size in. Vegas grows while ``queue < alpha``, shrinks when
  ``queue > beta`` and holds in between, so a steady workload gives a steady limit.

We use **Vegas**, for its hold band (stability is a requirement; a pool that opens
and closes connections in a sawtooth pays a connect each time) and because its
signal is counted in connections. Its weak spot is the no-load hold time
(``baseline``): measured while the server queues, it is too high and the limit too
large; left over from a faster workload, it is too low and the limit too small. Four
changes make it fit a connection pool:

1. *Windows, not single samples.* Each update looks at the mean hold time and mean
   in-flight count of the leases completed since the last update (at least
   ``min_samples`` of them; with fewer the window keeps accumulating). Samples that
   started before the last change of the limit are dropped: they measured the old one.
2. *The baseline is measured by probing down, not assumed.* A probe halves the limit
   for one window; while the throughput (``inflight / rtt``, Little's law) holds, the
   server was still queueing, so it halves again. The first window that loses
   throughput ran below the knee; the lowest mean hold time seen is the baseline, and
   the limit returns to the lowest level that kept the throughput; a level that kept
   it with a hold time close to the old baseline confirms it and ends the probe early,
   back at the level before that halving (kept "within 10 %" is not the same
   throughput), without a window below the knee (BBR's "ProbeRTT", made to find the knee; Gradient2
   lets its long average drift instead). A probe
   runs when the pool starts above its floor, when a window is much faster than the
   baseline (a lighter workload), and every ``probe_interval`` seconds otherwise. A
   shrink that lost more than half of its proportional share of throughput is undone
   and the baseline re-anchored so that the level before sits in the middle of the
   band: there the hold time rose *with* the throughput (a busy client on the same
   machine, a server that does not simply share its CPU), which Vegas alone would
   misread as queueing. A window that is merely a little faster lowers the baseline
   directly.
3. *Exploring up.* A limit that held still in the band for ``explore_interval``
   seconds tries a quarter more connections (at least one) for one window and goes
   back when the throughput did not rise by at least half of the proportional gain
   (``step / limit``): "grow while more connections raise throughput". When it did rise, the
   hold time that looked like queueing came with throughput (a slower workload than
   the baseline's, a busy client); the baseline is re-anchored so that the new level
   sits in the middle of the band, and the limit keeps climbing by a quarter per
   window while each step gains (a hill climb on throughput).
4. *Steps sized to connections.* ``alpha`` and ``beta`` grow with ``log10(limit)``
   as in Netflix's VegasLimit (``2 log10`` and ``4 log10``), but never below 1.5 and
   3.5 connections (Netflix's floor is 3 and 6). On a 2-core server a CPU-bound
   workload queues about 2 leases at a limit of 4 and 3 at 5, give or take half a
   connection between 1 s windows; a band of 1 to 2.4 let that noise shrink the limit
   to 2 (about 8 % less throughput than 3 to 8 gave); 1.5 to 3.5 holds 4 and 5. Growth is +50 %
   while nothing queues at all (so an I/O-bound workload reaches 40 connections in
   about ten updates) and +1 near the band; shrinking goes straight to the estimated
   knee plus ``alpha``, but at most halves per update. The limit only grows when the
   borrowers used all of it: an idle pool learns nothing about more connections.

The decision is bounded by ``min_limit`` (the pool's ``min_size``), ``max_limit``
(``max_size``) and an optional live ``budget`` (see :func:`fair_share`), which wins
over ``min_limit`` because the server's ``max_connections`` is a hard wall. The limit
is never below 1. (The budget itself is worked out in ``_sizer``.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final, Literal

__all__ = ("AdaptiveLimit", "AutosizeStats", "LimitDecision", "LimitReason")

LimitReason = Literal[
    "grow: latency flat",
    "grow: throughput gained",
    "shrink: queueing",
    "shrink: no gain",
    "explore: more",
    "hold",
    "hold: few samples",
    "hold: demand below limit",
    "probe: measuring baseline",
    "probe: done",
    "cap: max_size",
    "cap: budget",
    "floor: min_size",
]
"""Why :meth:`AdaptiveLimit.update` chose its limit (the value of ``LimitDecision.reason``)."""

# The limit grows only when the borrowers used at least this share of it (all of it:
# a pool that never filled its limit learns nothing about a larger one).
_DEMAND_SHARE: Final = 1.0
# More connections that raised the throughput by at least this share of their
# proportional gain (step / limit) show that the server was not queueing; a noisy
# window that passes it moves the limit up (to be undone by the next probe).
_GAIN_NEEDED: Final = 0.5
# A shrink that lost more than this share of its proportional loss is undone.
_LOSS_TOLERATED: Final = 0.5
# A probe window whose mean hold time is within this factor of the baseline (and that
# kept the throughput) confirms the baseline.
_CONFIRMED: Final = 1.2
# A window whose mean hold time is below this share of the baseline starts a probe.
_FASTER: Final = 0.8
# A probe that halved the concurrency and kept this share of the throughput ran at or
# above the knee: halve again.
_PROBE_KEPT: Final = 0.9


@dataclasses.dataclass(frozen=True)
class LimitDecision:
    """The outcome of one :meth:`AdaptiveLimit.update`: the limit and why.

    ``previous`` is the limit before this update; ``limit != previous`` means it moved.
    """

    limit: int
    reason: LimitReason
    previous: int

    @property
    def moved(self) -> bool:
        """True when this update changed the limit."""
        return self.limit != self.previous


@dataclasses.dataclass(frozen=True)
class AutosizeStats:
    """A snapshot of :class:`AdaptiveLimit`'s state, for stats, events and debugging.

    ``baseline_rtt`` is the no-load hold time (None before the first full window);
    ``window_rtt``, ``window_inflight`` and ``queue`` describe the last full window
    (``queue`` is the estimated number of leases that waited inside the server).
    """

    limit: int
    reason: LimitReason
    baseline_rtt: float | None
    window_rtt: float | None
    window_inflight: float | None
    queue: float | None
    probing: bool
    updates: int
    probes: int
    samples_total: int
    samples_stale: int
    budget: int | None = None
    """The server's live budget for this pool (None: not known, or not used)."""

    __module__ = "asyncpool"


@dataclasses.dataclass(frozen=True)
class _Window:
    """What one judged window measured (kept to compare with the next)."""

    limit: int
    rtt: float
    used: float
    throughput: float


def _band(limit: int) -> tuple[float, float]:
    """Vegas's ``(alpha, beta)``: grow below alpha queued leases, shrink above beta."""
    scale = math.log10(max(limit, 1))
    return max(1.5, 2.0 * scale), max(3.5, 4.0 * scale)


def _explore_step(limit: int) -> int:
    """How many connections an explore adds: a quarter, at least one."""
    return max(1, limit // 4)


def _band_middle(limit: int) -> float:
    alpha, beta = _band(limit)
    return (alpha + beta) / 2


class AdaptiveLimit:
    """A Vegas-style concurrency limit for one pool (see the module docstring).

    Not thread-safe and not async: call it from the pool's event loop only.
    """

    def __init__(
        self,
        *,
        min_limit: int = 1,
        max_limit: int,
        initial: int | None = None,
        min_samples: int = 5,
        probe_interval: float = 30.0,
        explore_interval: float = 5.0,
    ) -> None:
        """Start at ``initial`` (default ``min_limit``), bounded by min and max.

        Args:
            min_limit: the floor (the pool's ``min_size``; 0 is treated as 1).
            max_limit: the hard cap (the pool's ``max_size``).
            initial: the starting limit; starting low lets the baseline be measured
                without queueing.
            min_samples: completed leases a window needs before it is judged.
            probe_interval: seconds after which an unconfirmed baseline is re-measured.
            explore_interval: seconds the limit holds still before more connections
                (a quarter, at least one) are tried.
        """
        if max_limit < 1:
            raise ValueError(f"max_limit must be at least 1, got {max_limit}")
        if min_limit < 0 or min_limit > max_limit:
            raise ValueError(f"min_limit must be in 0..max_limit ({max_limit}), got {min_limit}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {min_samples}")
        if probe_interval <= 0:
            raise ValueError(f"probe_interval must be positive, got {probe_interval}")
        if explore_interval <= 0:
            raise ValueError(f"explore_interval must be positive, got {explore_interval}")
        self._min = max(min_limit, 1)
        self._max = max_limit
        start = self._min if initial is None else initial
        self._limit = min(max(start, self._min), self._max)
        self._min_samples = min_samples
        self._probe_interval = probe_interval
        self._explore_interval = explore_interval
        self._reason: LimitReason = "hold"
        # The current window (leases completed since the last judged update).
        self._n = 0
        self._rtt_sum = 0.0
        self._inflight_sum = 0.0
        self._inflight_peak = 0
        # Samples that started before this time measured an older limit.
        self._changed_at = -math.inf
        self._baseline: float | None = None
        self._baseline_at = 0.0
        # The limit to return to after a probe: the one before it, or the lowest level
        # a halving reached without losing throughput.
        self._probe_saved: int | None = None
        self._shrunk_from: _Window | None = None  # the window before the last shrink
        self._explored_from: _Window | None = None  # the window before an explore
        self._probe_rtt = 0.0  # the lowest window mean hold time seen by this probe
        self._probe_throughput = 0.0  # the best throughput seen by this probe
        self._window_rtt: float | None = None
        self._window_inflight: float | None = None
        self._queue: float | None = None
        self._updates = 0
        self._probes = 0
        self._samples_total = 0
        self._samples_stale = 0

    def __repr__(self) -> str:
        return (
            f"<AdaptiveLimit limit={self._limit} ({self._reason}) "
            f"range={self._min}..{self._max} baseline={self._baseline}>"
        )

    @property
    def limit(self) -> int:
        """The current limit."""
        return self._limit

    def on_sample(self, now: float, rtt: float, inflight: int) -> None:
        """Record one completed lease.

        Args:
            now: when it completed (the same clock as :meth:`update`'s ``now``).
            rtt: how long the connection was held, in seconds.
            inflight: leases in progress when it completed, itself included.
        """
        self._samples_total += 1
        if rtt < 0 or now - rtt < self._changed_at:
            self._samples_stale += 1
            return
        self._n += 1
        self._rtt_sum += rtt
        self._inflight_sum += inflight
        if inflight > self._inflight_peak:
            self._inflight_peak = inflight

    def on_window(self, leases: int, held: float, inflight: float, peak: int) -> None:
        """Record many completed leases at once, as measured by their owner: ``leases``
        of them, ``held`` seconds in all, ``inflight`` leases in progress on average and
        at most ``peak`` (the same as ``leases`` calls of :meth:`on_sample`, without the
        staleness test: a window's owner starts it at the last change).
        """
        if leases <= 0 or held < 0:
            return
        self._samples_total += leases
        self._n += leases
        self._rtt_sum += held
        self._inflight_sum += inflight * leases
        if peak > self._inflight_peak:
            self._inflight_peak = peak

    def update(self, now: float, budget: int | None = None) -> LimitDecision:
        """Judge the samples since the last update and return the new limit.

        Args:
            now: the current time (seconds, any monotonic origin).
            budget: the most connections this pool may hold now (from
                :func:`fair_share`), or None for no budget.
        """
        self._updates += 1
        previous = self._limit
        wanted, reason = self._decide(now)
        limit, reason = self._bound(wanted, reason, budget)
        if limit != previous:
            self._changed_at = now
        self._limit = limit
        self._reason = reason
        return LimitDecision(limit=limit, reason=reason, previous=previous)

    def set_bounds(self, min_limit: int, max_limit: int) -> None:
        """Change the floor and the cap (``Pool.resize``); the limit moves into them."""
        if max_limit < 1 or not 0 <= min_limit <= max_limit:
            raise ValueError(
                f"bounds must satisfy 0 <= min <= max >= 1, got {min_limit}, {max_limit}"
            )
        self._min = max(min_limit, 1)
        self._max = max_limit
        self._limit = min(max(self._limit, self._min), self._max)

    def stats(self, budget: int | None = None) -> AutosizeStats:
        """A frozen snapshot of the algorithm's state (with the pool's ``budget``)."""
        return AutosizeStats(
            limit=self._limit,
            reason=self._reason,
            baseline_rtt=self._baseline,
            window_rtt=self._window_rtt,
            window_inflight=self._window_inflight,
            queue=self._queue,
            probing=self._probe_saved is not None,
            updates=self._updates,
            probes=self._probes,
            samples_total=self._samples_total,
            samples_stale=self._samples_stale,
            budget=budget,
        )

    # ------------------------------------------------------------------ decisions

    def _decide(self, now: float) -> tuple[int, LimitReason]:
        """The unbounded limit and its reason; consumes the window when judged."""
        limit = self._limit
        if self._n < self._min_samples:
            return limit, "hold: few samples"
        rtt = self._rtt_sum / self._n
        used = self._inflight_sum / self._n
        peak = self._inflight_peak
        self._n = 0
        self._rtt_sum = 0.0
        self._inflight_sum = 0.0
        self._inflight_peak = 0
        self._window_rtt = rtt
        self._window_inflight = used

        if self._probe_saved is not None:
            return self._end_probe_window(now, rtt, used)
        baseline = self._baseline
        if baseline is None and limit > self._min:
            # No baseline yet and started above the floor: this window may already
            # queue, so measure one by probing first.
            return self._start_probe(limit, rtt, used)
        throughput = used / rtt if rtt > 0 else 0.0
        shrunk_from, self._shrunk_from = self._shrunk_from, None
        explored_from, self._explored_from = self._explored_from, None
        if baseline is not None and rtt < _FASTER * baseline and limit > self._min:
            # Much faster than ever: a lighter workload, whose no-load time this window
            # (which may queue) does not show. Re-measure it.
            self._baseline = rtt
            return self._start_probe(limit, rtt, used)
        if baseline is None or rtt <= baseline:
            self._baseline = baseline = rtt
            self._baseline_at = now
        elif shrunk_from is not None and throughput < shrunk_from.throughput * (
            1.0 - _LOSS_TOLERATED * (shrunk_from.limit - limit) / shrunk_from.limit
        ):
            # The last shrink lost more than half its proportional share of throughput:
            # the hold time had risen with the throughput (a busy client, a server that
            # is not simply sharing its CPU), so it was worth it. Go back, and re-anchor
            # the baseline so that the level before sits in the middle of the band:
            # shrink again only on more queueing.
            before = shrunk_from
            self._baseline = before.rtt * max(0.5, 1.0 - _band_middle(before.limit) / before.used)
            self._baseline_at = now
            return before.limit, "grow: throughput gained"
        elif explored_from is not None and limit > explored_from.limit:
            before = explored_from
            step = limit - before.limit
            if throughput < before.throughput * (1.0 + _GAIN_NEEDED * step / before.limit):
                return before.limit, "shrink: no gain"
            # More connections raised the throughput: the hold time that looked like
            # queueing came with throughput (a slower workload than the baseline's, a
            # busy client). Re-anchor the baseline so that this level sits in the middle
            # of the band, and keep climbing while each step gains.
            self._baseline = rtt * max(0.5, 1.0 - _band_middle(limit) / used)
            self._baseline_at = now
            if peak < limit:
                return limit, "hold: demand below limit"
            self._explored_from = _Window(limit, rtt, used, throughput)
            return limit + _explore_step(limit), "grow: throughput gained"
        elif now - self._baseline_at >= self._probe_interval and limit > self._min:
            return self._start_probe(limit, rtt, used)

        queue = used * (1.0 - baseline / rtt) if rtt > 0 else 0.0
        self._queue = queue
        alpha, beta = _band(limit)
        if queue > beta:
            # Go to the estimated knee plus alpha, at most halving, at least one less.
            knee = used - queue
            target = math.floor(knee + alpha)
            self._shrunk_from = _Window(limit, rtt, used, throughput)
            return min(limit - 1, max(target, (limit + 1) // 2)), "shrink: queueing"
        if queue < alpha:
            if peak < _DEMAND_SHARE * limit:
                return limit, "hold: demand below limit"
            step = max(1, limit // 2) if queue < alpha / 2 else 1
            return limit + step, "grow: latency flat"
        if now - self._changed_at >= self._explore_interval and peak >= limit and limit < self._max:
            # Held in the band for a while: check that more connections gain nothing.
            self._explored_from = _Window(limit, rtt, used, throughput)
            return limit + _explore_step(limit), "explore: more"
        return limit, "hold"

    def _start_probe(self, limit: int, rtt: float, used: float) -> tuple[int, LimitReason]:
        """Halve the limit for one window to re-measure the no-load hold time."""
        self._probes += 1
        self._probe_saved = limit
        self._probe_rtt = rtt
        self._probe_throughput = used / rtt if rtt > 0 else 0.0
        self._queue = None
        return max(self._min, (limit + 1) // 2), "probe: measuring baseline"

    def _end_probe_window(self, now: float, rtt: float, used: float) -> tuple[int, LimitReason]:
        """Judge a probe window: halve again, or take the lowest hold time as baseline.

        While halving the concurrency keeps the throughput (``inflight / rtt``), the
        server was queueing at the level before, so the halved level is as good as the
        one above it. If its hold time is close to the baseline, the baseline is
        confirmed and the probe ends there. Otherwise the baseline is not measured yet:
        halve again, and return to the lowest level that kept the throughput. The
        first level that loses throughput runs below the knee and measures the no-load
        hold time.
        """
        limit = self._limit
        self._queue = None
        throughput = used / rtt if rtt > 0 else 0.0
        self._probe_rtt = min(self._probe_rtt, rtt)
        kept = throughput >= _PROBE_KEPT * self._probe_throughput
        baseline = self._baseline
        if kept and baseline is not None and rtt <= _CONFIRMED * baseline:
            # Half the limit, about the same throughput, no queueing: the baseline
            # holds. No need to go below the knee to learn more; back to the level
            # before this halving (it kept the throughput too), from where the
            # confirmed baseline decides.
            saved = self._probe_saved
            assert saved is not None
            self._probe_saved = None
            self._baseline = min(baseline, rtt)
            self._baseline_at = now
            return saved, "probe: done"
        if kept and limit > self._min:
            self._probe_throughput = max(self._probe_throughput, throughput)
            self._probe_saved = limit
            return max(self._min, (limit + 1) // 2), "probe: measuring baseline"
        saved = self._probe_saved
        assert saved is not None
        self._probe_saved = None
        self._baseline = self._probe_rtt
        self._baseline_at = now
        return saved, "probe: done"

    def _bound(
        self, wanted: int, reason: LimitReason, budget: int | None
    ) -> tuple[int, LimitReason]:
        """Apply max_limit, the budget and min_limit (the budget wins over the floor)."""
        limit = wanted
        if limit > self._max:
            limit, reason = self._max, "cap: max_size"
        if limit < self._min:
            limit, reason = self._min, "floor: min_size"
        if budget is not None and limit > max(budget, 1):
            limit, reason = max(budget, 1), "cap: budget"
        return limit, reason
