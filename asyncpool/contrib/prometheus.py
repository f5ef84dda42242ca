"""A Prometheus collector for asyncpool pools (needs ``prometheus-client``).

Usage (``pip install 'asyncpool-pg[prometheus]'``)::

    from prometheus_client import REGISTRY
    from asyncpool.contrib.prometheus import PoolCollector

    collector = PoolCollector(pool)                 # or PoolCollector([pool_a, pool_b])
    REGISTRY.register(collector)
    collector.add(other_pool)                       # pools can come and go later
    collector.remove(other_pool)

Every scrape reads :meth:`Pool.stats() <asyncpool.Pool.stats>` of each pool, which is
cheap and never touches the database. Every sample has a ``pool`` label
(:attr:`Pool.name <asyncpool.Pool.name>`). Exposed, with the default ``namespace``:

* ``asyncpool_connections{state}`` (gauge): connections per slot state, ``state`` one of
  ``idle``, ``in_use``, ``connecting``, ``returning``, ``checking``, ``closing``; their
  sum is the pool's size;
* ``asyncpool_connections_max``, ``asyncpool_connections_min``, ``asyncpool_waiting``
  (gauges): ``max_size``, ``min_size`` and the borrowers waiting now;
* ``asyncpool_connections_limit`` (gauge): the connections the pool may hold now
  (``max_size``, or with ``autosize=True`` the adaptive limit), and
  ``asyncpool_limit_reason{reason}`` (gauge, 1 for the current reason, autosize pools
  only): why the adaptive limit last moved or held;
* ``asyncpool_<counter>_total`` (counters), one per ``*_total`` field of
  :class:`~asyncpool.PoolStats` (``asyncpool_acquired_total``,
  ``asyncpool_timeouts_total``, ``asyncpool_connect_errors_total`` ...);
* ``asyncpool_wait_seconds``, ``asyncpool_use_seconds``, ``asyncpool_connect_seconds``
  (histograms, buckets :data:`asyncpool.HISTOGRAM_BOUNDS`): ``wait_time``,
  ``use_time`` and ``connect_time``, made cumulative as Prometheus expects.

Counters must only grow: they are read with ``stats()``, never ``pop_stats()``. Calling
:meth:`Pool.pop_stats() <asyncpool.Pool.pop_stats>` elsewhere resets them, which
Prometheus sees as a counter reset (``rate()`` copes, but ``increase()`` over the reset
loses the difference): use ``pop_stats`` or Prometheus for a pool, not both.

The collector holds the pools weakly; a pool that is closed or garbage-collected is
no longer reported (and no longer blocks its name). With
``prometheus_client.start_http_server`` the scrape runs in another thread: each value is
read atomically, but one scrape may see a pool midway through a state change (e.g. one
connection counted in neither of two states).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import HISTOGRAM_BOUNDS, Pool, PoolStats, TimeSummary

__all__ = ("PoolCollector",)

_STATES = ("idle", "in_use", "connecting", "returning", "checking", "closing")

_COUNTER_HELP = {
    "acquired_total": "Connections lent to borrowers.",
    "released_total": "Connections given back by borrowers.",
    "timeouts_total": "Acquires that gave up at their deadline (PoolTimeout).",
    "cancelled_total": "Acquires cancelled while waiting.",
    "too_many_waiters_total": "Acquires refused because max_waiting borrowers already "
    "waited (TooManyWaiters).",
    "unavailable_total": "Acquires failed because the database was unreachable "
    "(DatabaseUnavailable).",
    "connections_opened_total": "Connections opened.",
    "connections_closed_total": "Connections closed, for any reason.",
    "connections_lost_total": "Connections found broken (server restart, network cut, "
    "failed check or reset).",
    "connect_errors_total": "Failed attempts to open a connection.",
    "resets_total": "Returned connections reset with a query.",
    "resets_skipped_total": "Returned connections that needed no reset query.",
    "pings_total": "Health checks of idle connections.",
    "pings_failed_total": "Health checks that failed.",
    "leaks_total": "Connections held past leak_timeout or garbage-collected unreleased.",
    "overload_refused_total": "Acquires refused at once: overloaded, they could not be "
    "served in time (PoolOverloaded).",
    "overload_shed_total": "Waiters dropped from a standing queue: too little time left "
    "(PoolOverloaded).",
    "served_newest_total": "Connections handed to the newest waiter while the queue stood "
    "(adaptive LIFO).",
}

_HISTOGRAMS = (
    ("wait_time", "wait_seconds", "Time borrowers waited for a connection (successful acquires)."),
    ("use_time", "use_seconds", "Time connections were held by borrowers."),
    ("connect_time", "connect_seconds", "Time taken to open a new connection."),
)

_COUNTERS = tuple(f.name for f in dataclasses.fields(PoolStats) if f.name.endswith("_total"))


def _cumulative_buckets(summary: TimeSummary) -> list[tuple[str, float]]:
    """Prometheus ``le`` buckets from a :class:`TimeSummary`'s per-bucket counts.

    ``+Inf`` is the total of the buckets (not ``summary.count``), so the histogram is
    self-consistent even when read from another thread mid-update.
    """
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(HISTOGRAM_BOUNDS, summary.buckets, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))  # 0.0001, 1.0: as Go prints
    buckets.append(("+Inf", sum(summary.buckets)))
    return buckets


class PoolCollector:
    """A ``prometheus_client`` collector reporting one or more pools' :meth:`stats`.

    Register it in a ``CollectorRegistry`` (the default ``REGISTRY`` or your own).
    ``namespace`` prefixes every metric name (default ``asyncpool``). Pools can be
    given at construction and added or removed at any time after registration
    (:meth:`add`, :meth:`remove`). The names of the open pools reported must be unique,
    as they become the ``pool`` label.
    """

    def __init__(self, pools: Pool | Iterable[Pool] = (), *, namespace: str = "asyncpool") -> None:
        self._lock = threading.Lock()
        # Changed under the lock, read by scrapes (perhaps in another thread) as one
        # tuple: a scrape sees the pools before or after a change, never half of it.
        self._pools: tuple[weakref.ref[Pool], ...] = ()
        self._namespace = namespace
        for pool in [pools] if isinstance(pools, Pool) else list(pools):
            self.add(pool)

    def _reported(self) -> list[Pool]:
        pools = (ref() for ref in self._pools)
        return [pool for pool in pools if pool is not None and not pool.closed]

    def add(self, pool: Pool) -> None:
        """Report ``pool`` from the next scrape on.

        Raises :class:`ValueError` if it is already reported, or if another open pool
        of the same name is (give each pool its own ``name=``).
        """
        with self._lock:
            reported = self._reported()
            for other in reported:
                if other is pool:
                    raise ValueError(f"asyncpool pool {pool.name!r} is already reported")
                if other.name == pool.name:
                    raise ValueError(
                        f"another open asyncpool pool named {pool.name!r} is already "
                        "reported: pool names must be unique (they become the 'pool' "
                        "label); pass name=... to each pool"
                    )
            self._pools = (*(weakref.ref(p) for p in reported), weakref.ref(pool))

    def remove(self, pool: Pool) -> None:
        """Stop reporting ``pool`` (a closed pool stops on its own). Raises
        :class:`ValueError` if it is not reported.
        """
        with self._lock:
            kept = tuple(ref for ref in self._pools if ref() is not pool)
            if len(kept) == len(self._pools):
                raise ValueError(f"asyncpool pool {pool.name!r} is not reported here")
            self._pools = kept

    @property
    def pools(self) -> list[Pool]:
        """The pools reported now (open and alive), in the order they were added."""
        return self._reported()

    def _families(
        self,
    ) -> tuple[
        list[GaugeMetricFamily],
        list[GaugeMetricFamily],
        list[CounterMetricFamily],
        list[HistogramMetricFamily],
    ]:
        ns = self._namespace
        labels = ["pool"]
        connections = GaugeMetricFamily(
            f"{ns}_connections",
            "Connections of the pool, by slot state.",
            labels=["pool", "state"],
        )
        reason = GaugeMetricFamily(
            f"{ns}_limit_reason",
            "Why the adaptive limit last moved or held (autosize=True): 1 for the reason.",
            labels=["pool", "reason"],
        )
        gauges = [
            GaugeMetricFamily(f"{ns}_connections_max", "The pool's max_size.", labels=labels),
            GaugeMetricFamily(f"{ns}_connections_min", "The pool's min_size.", labels=labels),
            GaugeMetricFamily(
                f"{ns}_waiting", "Borrowers waiting for a connection now.", labels=labels
            ),
            GaugeMetricFamily(
                f"{ns}_connections_limit",
                "The connections the pool may hold now (max_size, or the adaptive limit).",
                labels=labels,
            ),
        ]
        counters = [
            CounterMetricFamily(
                f"{ns}_{field.removesuffix('_total')}",
                _COUNTER_HELP.get(field, field),
                labels=labels,
            )
            for field in _COUNTERS
        ]
        histograms = [
            HistogramMetricFamily(f"{ns}_{suffix}", doc, labels=labels, unit="seconds")
            for _, suffix, doc in _HISTOGRAMS
        ]
        return [connections, reason], gauges, counters, histograms

    def describe(self) -> Iterator[Metric]:
        """The metric families (without samples), for the registry's name checks."""
        labelled, gauges, counters, histograms = self._families()
        yield from labelled
        yield from gauges
        yield from counters
        yield from histograms

    def collect(self) -> Iterator[Metric]:
        """Read each live, open pool's :meth:`~asyncpool.Pool.stats` into metric families."""
        labelled, gauges, counters, histograms = self._families()
        connections, reason = labelled
        for pool in self._reported():
            s = pool.stats()
            label = [s.name]
            for state in _STATES:
                connections.add_metric([s.name, state], getattr(s, state))
            values = (s.max_size, s.min_size, s.waiting, s.limit)
            for gauge, value in zip(gauges, values, strict=True):
                gauge.add_metric(label, value)
            if s.autosize is not None:
                reason.add_metric([s.name, s.autosize.reason], 1)
            for counter, field in zip(counters, _COUNTERS, strict=True):
                counter.add_metric(label, getattr(s, field))
            for histogram, (field, _, _) in zip(histograms, _HISTOGRAMS, strict=True):
                summary: TimeSummary = getattr(s, field)
                histogram.add_metric(label, _cumulative_buckets(summary), summary.sum)
        yield from labelled
        yield from gauges
        yield from counters
        yield from histograms

    def __repr__(self) -> str:
        return f"<PoolCollector pools={[pool.name for pool in self._reported()]!r}>"
