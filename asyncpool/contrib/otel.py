"""OpenTelemetry metrics for asyncpool, following the database connection-pool conventions.

Usage (needs ``opentelemetry-api``: ``pip install 'asyncpool-pg[otel]'``)::

    from asyncpool.contrib.otel import instrument

    handle = instrument(pool)  # the global MeterProvider, or pass meter_provider=...
    ...
    handle.uninstrument()

The instruments are those of the OpenTelemetry semantic conventions for database
client connection pools (``db.client.connection.*``), every measurement carrying
``db.client.connection.pool.name`` = :attr:`Pool.name <asyncpool.Pool.name>`:

* ``db.client.connection.count`` (observable UpDownCounter, ``{connection}``), with
  ``db.client.connection.state`` = ``idle`` or ``used``;
* ``db.client.connection.max`` and ``db.client.connection.idle.max`` (``max_size``, or
  with ``autosize=True`` the adaptive limit: :attr:`PoolStats.limit
  <asyncpool.PoolStats.limit>`),
  ``db.client.connection.idle.min`` (``min_size``), observable UpDownCounters;
* ``db.client.connection.pending_requests`` (observable UpDownCounter, ``{request}``):
  borrowers waiting;
* ``db.client.connection.timeouts`` (Counter, ``{timeout}``): ``TIMEOUT`` events;
* ``db.client.connection.create_time``, ``db.client.connection.wait_time`` and
  ``db.client.connection.use_time`` (Histograms, ``s``): ``CONNECT``, ``ACQUIRE`` and
  ``RELEASE`` events.

The observable instruments read :meth:`Pool.stats() <asyncpool.Pool.stats>` when the
metrics are collected; ``used`` counts every open connection that is not idle (lent,
being reset, being health-checked or being closed), so ``idle + used`` is the number
of connections open on the server. Counter and histograms are fed by the pool's event
hooks, so :meth:`Pool.pop_stats() <asyncpool.Pool.pop_stats>` does not disturb them.
``wait_time`` records successful acquires only (a timed-out wait is a ``timeouts``
increment). Histograms advise the pool's own bucket bounds,
:data:`asyncpool.HISTOGRAM_BOUNDS`.

Pools instrumented on one meter provider share its instruments; their names must be
unique (the conventions require it): a second open pool with the same name is refused.
A closed pool stops reporting.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from .. import HISTOGRAM_BOUNDS, EventKind, Pool, PoolEvent, PoolStats, __version__

__all__ = ("POOL_NAME", "SCHEMA_URL", "STATE", "OtelInstrumentation", "instrument")

#: The attribute naming the pool on every measurement.
POOL_NAME = "db.client.connection.pool.name"
#: The attribute of ``db.client.connection.count``: ``idle`` or ``used``.
STATE = "db.client.connection.state"
#: The semantic-conventions version whose names are used: 1.26.0 renamed the metrics to
#: ``db.client.connection.*`` but kept the ``db.client.connections.state`` and
#: ``db.client.connections.pool.name`` attributes; 1.27.0 renamed those to the
#: ``db.client.connection.*`` names emitted here.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

_CONNECTION = "{connection}"


class _Instruments:
    """The instruments on one meter provider, shared by every pool instrumented on it."""

    def __init__(self, meter: Meter) -> None:
        self.lock = threading.Lock()
        # Handles are added/removed on the event loop's thread and read by the metric
        # reader's thread: readers iterate over a tuple copy.
        self.handles: tuple[OtelInstrumentation, ...] = ()
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._observe_count],
            _CONNECTION,
            "The number of connections that are currently in state described by the "
            "`state` attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            [self._observe_max],
            _CONNECTION,
            "The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            [self._observe_idle_max],
            _CONNECTION,
            "The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.min",
            [self._observe_idle_min],
            _CONNECTION,
            "The minimum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._observe_pending],
            "{request}",
            "The number of current pending requests for an open connection.",
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            "{timeout}",
            "The number of connection timeouts that have occurred trying to obtain a "
            "connection from the pool.",
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            "s",
            "The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=HISTOGRAM_BOUNDS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            "s",
            "The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=HISTOGRAM_BOUNDS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            "s",
            "The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=HISTOGRAM_BOUNDS,
        )

    def add(self, handle: OtelInstrumentation, pool: Pool) -> None:
        with self.lock:
            for other in self.handles:
                other_pool = other.pool
                if other_pool is pool:
                    raise ValueError(
                        f"asyncpool pool {pool.name!r} is already instrumented on this "
                        "meter provider; call uninstrument() on the first handle"
                    )
                if other_pool is not None and not other_pool.closed and other.name == pool.name:
                    raise ValueError(
                        f"another open asyncpool pool named {pool.name!r} is already "
                        "instrumented on this meter provider; give each pool a unique "
                        "name (Pool(name=...)), as db.client.connection.pool.name requires"
                    )
            self.handles = (*self.handles, handle)

    def remove(self, handle: OtelInstrumentation) -> None:
        with self.lock:
            self.handles = tuple(h for h in self.handles if h is not handle)

    def _live(self) -> list[tuple[dict[str, str], PoolStats]]:
        """(attributes, stats) of each instrumented pool that is alive and not closed."""
        live = []
        for handle in self.handles:
            pool = handle.pool
            if pool is not None and not pool.closed:
                live.append((handle.attributes, pool.stats()))
        return live

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for attrs, s in self._live():
            used = s.size - s.idle - s.connecting
            observations.append(Observation(s.idle, {**attrs, STATE: "idle"}))
            observations.append(Observation(used, {**attrs, STATE: "used"}))
        return observations

    def _observe_max(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.limit, attrs) for attrs, s in self._live()]

    def _observe_idle_max(self, options: CallbackOptions) -> Iterable[Observation]:
        # Every connection may be idle: the idle cap is the pool's cap.
        return [Observation(s.limit, attrs) for attrs, s in self._live()]

    def _observe_idle_min(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.min_size, attrs) for attrs, s in self._live()]

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.waiting, attrs) for attrs, s in self._live()]


_lock = threading.Lock()
_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_global: _Instruments | None = None


def _instruments_for(meter_provider: MeterProvider | None) -> _Instruments:
    """The shared instruments of a meter provider (``None``: the global one), made once."""
    global _global
    with _lock:
        if meter_provider is None:
            # One set for the global provider, made through the API's proxy when no
            # provider is set yet (it forwards to the real one once set).
            if _global is None:
                _global = _Instruments(
                    metrics.get_meter("asyncpool", __version__, schema_url=SCHEMA_URL)
                )
            return _global
        instruments = _by_provider.get(meter_provider)
        if instruments is None:
            meter = meter_provider.get_meter("asyncpool", __version__, schema_url=SCHEMA_URL)
            instruments = _by_provider[meter_provider] = _Instruments(meter)
        return instruments


class OtelInstrumentation:
    """The link between one pool and the OpenTelemetry instruments; see :func:`instrument`.

    It holds the pool only weakly: a pool that is garbage-collected stops reporting.
    """

    def __init__(self, pool: Pool, instruments: _Instruments) -> None:
        self._pool_ref = weakref.ref(pool)
        self._instruments = instruments
        self._name = pool.name
        self._attributes = {POOL_NAME: pool.name}
        self._active = False

    @property
    def name(self) -> str:
        """The instrumented pool's name (``db.client.connection.pool.name``)."""
        return self._name

    @property
    def attributes(self) -> dict[str, str]:
        """The attributes put on every measurement of this pool."""
        return self._attributes

    @property
    def pool(self) -> Pool | None:
        """The instrumented pool, or ``None`` once it has been garbage-collected."""
        return self._pool_ref()

    @property
    def active(self) -> bool:
        """True until :meth:`uninstrument` is called."""
        return self._active

    def _start(self) -> None:
        pool = self._pool_ref()
        assert pool is not None
        self._instruments.add(self, pool)
        pool.add_event_hook(self._on_event)
        self._active = True

    def uninstrument(self) -> None:
        """Stop recording this pool's events and reporting its state. Safe to call twice."""
        if not self._active:
            return
        self._active = False
        self._instruments.remove(self)
        pool = self._pool_ref()
        if pool is not None:
            try:
                pool.remove_event_hook(self._on_event)
            except ValueError:  # removed by hand already
                pass

    def _on_event(self, event: PoolEvent) -> None:
        """The pool's event hook: feed the counter and histograms."""
        kind = event.kind
        seconds = event.seconds
        if kind is EventKind.TIMEOUT:
            self._instruments.timeouts.add(1, self._attributes)
        elif seconds is None:
            return
        elif kind is EventKind.ACQUIRE:
            self._instruments.wait_time.record(seconds, self._attributes)
        elif kind is EventKind.RELEASE:
            self._instruments.use_time.record(seconds, self._attributes)
        elif kind is EventKind.CONNECT:
            self._instruments.create_time.record(seconds, self._attributes)

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<OtelInstrumentation pool={self._name!r} {state}>"


def instrument(pool: Pool, meter_provider: MeterProvider | None = None) -> OtelInstrumentation:
    """Report ``pool``'s ``db.client.connection.*`` metrics through OpenTelemetry.

    ``meter_provider`` defaults to the global one (``opentelemetry.metrics``); set it
    before or after, the API forwards. The pool may be open or not yet opened. Returns a
    handle whose :meth:`~OtelInstrumentation.uninstrument` undoes this.

    Raises :class:`ValueError` if this pool, or another open pool with the same name, is
    already instrumented on the same meter provider.
    """
    handle = OtelInstrumentation(pool, _instruments_for(meter_provider))
    handle._start()
    return handle
