"""Counters and time summaries, and their frozen snapshots."""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right

from ._autosize import AutosizeStats

__all__ = ("HISTOGRAM_BOUNDS", "PoolStats", "TimeSummary")

#: Upper bounds (seconds) of the histogram buckets kept for wait, use and connect times.
#: The last bucket (index ``len(HISTOGRAM_BOUNDS)``) counts everything above the last bound.
HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
)


@dataclasses.dataclass(frozen=True)
class TimeSummary:
    """A summary of durations in seconds: count, sum, max and a histogram.

    ``buckets[i]`` counts durations ``<= HISTOGRAM_BOUNDS[i]`` (and above the previous
    bound); the final entry counts durations above the last bound.
    """

    count: int = 0
    sum: float = 0.0
    max: float = 0.0
    buckets: tuple[int, ...] = (0,) * (len(HISTOGRAM_BOUNDS) + 1)

    __module__ = "asyncpool"

    @property
    def mean(self) -> float:
        """The mean duration in seconds (0.0 when empty)."""
        return self.sum / self.count if self.count else 0.0


#: Durations a recorder notes before they are filed (see _Recorder.noted).
_NOTED_MAX = 1024


class _Recorder:
    """Mutable accumulator behind a :class:`TimeSummary` (internal)."""

    __slots__ = ("buckets", "max", "noted", "sum")

    def __init__(self) -> None:
        self.sum = 0.0
        self.max = 0.0
        # The count is the buckets' total: one store less per sample on the hot path.
        self.buckets = [0] * (len(HISTOGRAM_BOUNDS) + 1)
        #: Durations recorded but not filed yet: the waiting path appends here (a list
        #: append costs a fraction of a call of add()) and, at _NOTED_MAX of them, calls
        #: file_noted(); snapshot() files them first.
        self.noted: list[float] = []

    @property
    def count(self) -> int:
        """Durations recorded so far."""
        return sum(self.buckets) + len(self.noted)

    def add(self, seconds: float) -> None:
        """File one duration (``PoolCore._returned`` inlines this; a test pins the two)."""
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds <= 0.001:  # the first three buckets with literal comparisons: a bisect
            # is a C call with generic float comparisons, several times the cost
            self.buckets[0 if seconds <= 0.0001 else 1 if seconds <= 0.0005 else 2] += 1
        else:
            self.buckets[bisect_left(HISTOGRAM_BOUNDS, seconds)] += 1

    def file_noted(self) -> None:
        """File the ``noted`` durations as :meth:`add` would, in one pass: sorted, each
        bucket takes the run of them up to its bound.
        """
        noted = sorted(self.noted)
        self.noted.clear()
        if not noted:
            return
        self.sum += sum(noted)
        if noted[-1] > self.max:
            self.max = noted[-1]
        buckets = self.buckets
        filed = 0
        for i, bound in enumerate(HISTOGRAM_BOUNDS):
            upto = bisect_right(noted, bound, filed)
            buckets[i] += upto - filed
            filed = upto
        buckets[-1] += len(noted) - filed

    def snapshot(self, zeros: int = 0) -> TimeSummary:
        """Freeze, adding ``zeros`` durations of 0 s (counted apart on the hot path)."""
        self.file_noted()
        buckets = list(self.buckets)
        buckets[0] += zeros
        return TimeSummary(sum(buckets), self.sum, self.max, tuple(buckets))


class _Counters:
    """The pool's mutable counters (internal); see :class:`PoolStats` for meanings."""

    __slots__ = (
        "cancelled_total",
        "lends_before",
        "connect_errors_total",
        "connect_time",
        "connections_closed_total",
        "connections_lost_total",
        "connections_opened_total",
        "leaks_total",
        "overload_refused_total",
        "overload_shed_total",
        "pings_failed_total",
        "pings_total",
        "returns_not_skipped",
        "resets_total",
        "timeouts_total",
        "too_many_waiters_total",
        "unavailable_total",
        "use_time",
        "wait_time",
    )

    def __init__(self) -> None:
        # Derived on the hot path's behalf (Pool.stats): acquired is the slots' lend
        # counts since lends_before, released is use_time.count, and skipped resets
        # are the releases not counted in returns_not_skipped.
        self.lends_before = 0
        self.returns_not_skipped = 0
        self.timeouts_total = 0
        self.cancelled_total = 0
        self.too_many_waiters_total = 0
        self.unavailable_total = 0
        self.connections_opened_total = 0
        self.connections_closed_total = 0
        self.connections_lost_total = 0
        self.connect_errors_total = 0
        self.resets_total = 0
        self.pings_total = 0
        self.pings_failed_total = 0
        self.leaks_total = 0
        self.overload_refused_total = 0
        self.overload_shed_total = 0
        self.wait_time = _Recorder()
        self.use_time = _Recorder()
        self.connect_time = _Recorder()


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of the pool's state and counters.

    Sizes: ``size`` counts every connection the pool owns or is opening
    (``size == idle + in_use + connecting + returning + checking + closing``).
    Counters (``*_total``) count since the pool was created, or since the last
    :meth:`Pool.pop_stats`.
    """

    name: str
    min_size: int
    max_size: int
    limit: int
    """The connections the pool may hold now: ``max_size``, or with ``autosize=True``
    the adaptive limit (between ``min_size`` and ``max_size``)."""
    size: int
    idle: int
    in_use: int
    connecting: int
    returning: int
    checking: int
    closing: int
    waiting: int
    acquired_total: int
    released_total: int
    timeouts_total: int
    cancelled_total: int
    too_many_waiters_total: int
    unavailable_total: int
    connections_opened_total: int
    connections_closed_total: int
    connections_lost_total: int
    connect_errors_total: int
    resets_total: int
    resets_skipped_total: int
    pings_total: int
    pings_failed_total: int
    leaks_total: int
    overload_refused_total: int
    """Borrowers refused at once: under overload they could not be served in time."""
    overload_shed_total: int
    """Waiters dropped from the queue: their time left no longer covered a query."""
    served_newest_total: int
    """Connections handed to the newest waiter while the queue stood (adaptive LIFO)."""
    wait_time: TimeSummary
    use_time: TimeSummary
    connect_time: TimeSummary
    autosize: AutosizeStats | None = None
    """The adaptive limit's state and why it last moved (None without ``autosize``)."""

    __module__ = "asyncpool"


if HISTOGRAM_BOUNDS[:3] != (0.0001, 0.0005, 0.001):  # pragma: no cover - a guard for edits
    raise RuntimeError("asyncpool: HISTOGRAM_BOUNDS changed; update _Recorder.add's buckets")
