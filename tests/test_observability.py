"""Observability on a real PostgreSQL: OpenTelemetry and Prometheus metrics, event hooks,
PoolTimeout diagnoses and logging.

Durations are asserted against what the test itself forced (a borrower that waited
through another's 0.05 s timeout waited at least 0.05 s), counts exactly.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import asyncpool
from asyncpool import HISTOGRAM_BOUNDS, EventKind, PoolEvent, PoolStats, TimeSummary
from asyncpool.contrib.otel import POOL_NAME, SCHEMA_URL, STATE, instrument
from asyncpool.contrib.prometheus import PoolCollector, _cumulative_buckets
from asyncpool.testing import PostgresServer, TcpProxy

HOLD = 0.05  # how long a borrower waits for a connection it cannot get


@asynccontextmanager
async def opened(pool: asyncpool.Pool) -> AsyncIterator[asyncpool.Pool]:
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close(timeout=2)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait for a condition the pool's own background work will make true."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def start_waiter(pool: asyncpool.Pool) -> asyncio.Task[asyncpool.PooledConnection]:
    """A borrower queued behind the busy pool (queued before this returns)."""
    before = pool.stats().waiting

    async def borrow() -> asyncpool.PooledConnection:
        return await pool.acquire(timeout=10)

    task = asyncio.create_task(borrow())
    await asyncio.sleep(0)  # acquire queues without awaiting anything first
    assert pool.stats().waiting == before + 1
    return task


@contextmanager
def asyncpool_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Records of the ``asyncpool`` logger at INFO and above, from here to the end."""
    caplog.set_level(logging.INFO, logger="asyncpool")
    records: list[logging.LogRecord] = []
    start = len(caplog.records)
    try:
        yield records
    finally:
        records.extend(r for r in caplog.records[start:] if r.name.startswith("asyncpool"))


# ------------------------------------------------------------------ OpenTelemetry


def otel_metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Collect now; the metrics of the ``asyncpool`` scope by name."""
    data = reader.get_metrics_data()
    assert data is not None
    found = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == "asyncpool":
                found.update({m.name: m for m in scope.metrics})
    return found


def points(metric: Any, pool: str) -> list[Any]:
    return [p for p in metric.data.data_points if p.attributes.get(POOL_NAME) == pool]


def value(metric: Any, pool: str, state: str | None = None) -> float:
    want = {POOL_NAME: pool} if state is None else {POOL_NAME: pool, STATE: state}
    matching = [p.value for p in metric.data.data_points if dict(p.attributes) == want]
    assert len(matching) == 1, (metric.name, want, metric.data.data_points)
    return float(matching[0])


def histogram(metric: Any, pool: str) -> HistogramDataPoint:
    (point,) = points(metric, pool)
    assert isinstance(point, HistogramDataPoint)
    return point


async def test_otel_follows_the_connection_pool_semantic_conventions(postgres_dsn: str):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=1, name="otel-main")
    handle = instrument(pool, provider)  # before open: the first connect is recorded too
    async with opened(pool):
        held = await pool.acquire()  # idle connection: no wait at all
        waiter = await start_waiter(pool)
        with pytest.raises(asyncpool.PoolTimeout):
            await pool.acquire(timeout=HOLD)

        m = otel_metrics(reader)
        assert value(m["db.client.connection.count"], "otel-main", state="idle") == 0
        assert value(m["db.client.connection.count"], "otel-main", state="used") == 1
        assert value(m["db.client.connection.max"], "otel-main") == 1
        assert value(m["db.client.connection.idle.max"], "otel-main") == 1
        assert value(m["db.client.connection.idle.min"], "otel-main") == 1
        assert value(m["db.client.connection.pending_requests"], "otel-main") == 1
        assert value(m["db.client.connection.timeouts"], "otel-main") == 1
        create = histogram(m["db.client.connection.create_time"], "otel-main")
        assert create.count == 1
        assert 0 < create.sum < 10
        wait = histogram(m["db.client.connection.wait_time"], "otel-main")
        assert (wait.count, wait.sum) == (1, 0.0)
        assert "db.client.connection.use_time" not in m  # nothing returned yet

        await pool.release(held)  # handed straight to the queued borrower
        second = await waiter
        await pool.release(second)

        m = otel_metrics(reader)
        assert value(m["db.client.connection.count"], "otel-main", state="idle") == 1
        assert value(m["db.client.connection.count"], "otel-main", state="used") == 0
        assert value(m["db.client.connection.pending_requests"], "otel-main") == 0
        assert value(m["db.client.connection.timeouts"], "otel-main") == 1
        wait = histogram(m["db.client.connection.wait_time"], "otel-main")
        assert wait.count == 2
        assert wait.max >= HOLD  # the waiter sat through the other's timeout
        use = histogram(m["db.client.connection.use_time"], "otel-main")
        assert use.count == 2
        assert use.max >= HOLD  # `held` was held through that timeout
        # The histograms agree with the pool's own summaries.
        stats = pool.stats()
        for point, summary in (
            (wait, stats.wait_time),
            (use, stats.use_time),
            (create, stats.connect_time),
        ):
            assert point.count == summary.count
            assert point.sum == pytest.approx(summary.sum, abs=1e-3)  # timed apart
            assert tuple(point.explicit_bounds) == HISTOGRAM_BOUNDS
            assert tuple(point.bucket_counts) == summary.buckets

        # Instrument kinds and units, as the conventions name them.
        kinds = {
            "db.client.connection.count": ("{connection}", False),
            "db.client.connection.max": ("{connection}", False),
            "db.client.connection.idle.max": ("{connection}", False),
            "db.client.connection.idle.min": ("{connection}", False),
            "db.client.connection.pending_requests": ("{request}", False),
            "db.client.connection.timeouts": ("{timeout}", True),
        }
        for name, (unit, monotonic) in kinds.items():
            assert m[name].unit == unit
            assert isinstance(m[name].data, Sum)
            assert m[name].data.is_monotonic is monotonic
            assert m[name].data.aggregation_temporality is AggregationTemporality.CUMULATIVE
            assert all(isinstance(p, NumberDataPoint) for p in m[name].data.data_points)
        for name in ("create_time", "wait_time", "use_time"):
            assert m[f"db.client.connection.{name}"].unit == "s"
            assert isinstance(m[f"db.client.connection.{name}"].data, Histogram)

        handle.uninstrument()
        handle.uninstrument()  # idempotent
        assert not handle.active
        async with pool.acquire():
            pass
        m = otel_metrics(reader)
        # Observable instruments no longer report the pool; histograms stop growing.
        count = m.get("db.client.connection.count")
        assert count is None or points(count, "otel-main") == []
        assert histogram(m["db.client.connection.wait_time"], "otel-main").count == 2
        assert pool.stats().acquired_total == 3
    provider.shutdown()


async def test_otel_several_pools_share_one_provider():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    a = asyncpool.Pool("postgresql://unused", min_size=0, max_size=3, name="a")
    b = asyncpool.Pool("postgresql://unused", min_size=2, max_size=5, name="b")
    handle_a = instrument(a, provider)
    handle_b = instrument(b, provider)
    assert repr(handle_a) == "<OtelInstrumentation pool='a' active>"

    m = otel_metrics(reader)
    assert value(m["db.client.connection.max"], "a") == 3
    assert value(m["db.client.connection.max"], "b") == 5
    assert value(m["db.client.connection.idle.min"], "b") == 2

    with pytest.raises(ValueError, match="already instrumented"):
        instrument(a, provider)
    twin = asyncpool.Pool("postgresql://unused", name="a")
    with pytest.raises(ValueError, match="unique name"):
        instrument(twin, provider)
    # Another provider has its own instruments: no conflict there.
    other = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(twin, other).uninstrument()

    # A closed pool stops reporting and frees its name.
    await a.close()
    handle_twin = instrument(twin, provider)
    m = otel_metrics(reader)
    assert value(m["db.client.connection.max"], "a") == 10  # the twin's default max_size
    handle_twin.uninstrument()
    handle_b.uninstrument()
    handle_a.uninstrument()
    # The global provider (a no-op until one is set) works too.
    instrument(b).uninstrument()
    provider.shutdown()
    other.shutdown()


# ------------------------------------------------------------------ Prometheus


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def check_histogram(samples: dict[Any, float], name: str, pool: str, summary: TimeSummary) -> None:
    """The scraped histogram is the cumulative form of the pool's summary."""
    running = 0
    for bound, n in zip(HISTOGRAM_BOUNDS, summary.buckets, strict=False):
        running += n
        assert sample(samples, f"{name}_bucket", pool=pool, le=repr(bound)) == running
    assert sample(samples, f"{name}_bucket", pool=pool, le="+Inf") == summary.count
    assert sample(samples, f"{name}_count", pool=pool) == summary.count
    assert sample(samples, f"{name}_sum", pool=pool) == pytest.approx(summary.sum)


def test_otel_schema_url_is_the_conventions_of_the_emitted_names():
    from opentelemetry.semconv._incubating.attributes import db_attributes
    from opentelemetry.semconv._incubating.metrics import db_metrics

    assert SCHEMA_URL == "https://opentelemetry.io/schemas/1.27.0"
    assert POOL_NAME == db_attributes.DB_CLIENT_CONNECTION_POOL_NAME
    assert STATE == db_attributes.DB_CLIENT_CONNECTION_STATE
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = asyncpool.Pool("postgresql://unused", name="semconv")
    handle = instrument(pool, meter_provider=provider)
    try:
        data = reader.get_metrics_data()
        assert data is not None
        (scope,) = data.resource_metrics[0].scope_metrics
        assert scope.scope.schema_url == SCHEMA_URL
        emitted = {metric.name for metric in scope.metrics}
        conventions = {
            value
            for name, value in vars(db_metrics).items()
            if name.startswith("DB_CLIENT_CONNECTION_") and isinstance(value, str)
        }
        assert "db.client.connection.count" in emitted
        assert emitted <= conventions, emitted - conventions
        attributes = {
            key
            for metric in scope.metrics
            for point in metric.data.data_points
            for key in (point.attributes or {})
        }
        assert attributes == {POOL_NAME, STATE}
    finally:
        handle.uninstrument()
        provider.shutdown()


async def test_prometheus_collector_scrape(postgres_dsn: str):
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=1, name="prom-main")
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool))
    async with opened(pool):
        held = await pool.acquire()
        waiter = await start_waiter(pool)
        with pytest.raises(asyncpool.PoolTimeout):
            await pool.acquire(timeout=HOLD)

        s = scrape(registry)
        states = {
            "idle": 0,
            "in_use": 1,
            "connecting": 0,
            "returning": 0,
            "checking": 0,
            "closing": 0,
        }
        for state, n in states.items():
            assert sample(s, "asyncpool_connections", pool="prom-main", state=state) == n
        assert sample(s, "asyncpool_connections_max", pool="prom-main") == 1
        assert sample(s, "asyncpool_connections_min", pool="prom-main") == 1
        assert sample(s, "asyncpool_waiting", pool="prom-main") == 1
        assert sample(s, "asyncpool_timeouts_total", pool="prom-main") == 1
        assert sample(s, "asyncpool_acquired_total", pool="prom-main") == 1
        assert sample(s, "asyncpool_released_total", pool="prom-main") == 0
        assert sample(s, "asyncpool_connections_opened_total", pool="prom-main") == 1

        await pool.release(held)
        await pool.release(await waiter)
        s = scrape(registry)
        stats = pool.stats()
        assert sample(s, "asyncpool_connections", pool="prom-main", state="idle") == 1
        assert sample(s, "asyncpool_waiting", pool="prom-main") == 0
        assert sample(s, "asyncpool_acquired_total", pool="prom-main") == 2
        assert sample(s, "asyncpool_released_total", pool="prom-main") == 2
        # Every counter of PoolStats is exported, with the pool's value.
        for name in PoolStats.__dataclass_fields__:
            if name.endswith("_total"):
                assert sample(s, f"asyncpool_{name}", pool="prom-main") == getattr(stats, name)
        check_histogram(s, "asyncpool_wait_seconds", "prom-main", stats.wait_time)
        check_histogram(s, "asyncpool_use_seconds", "prom-main", stats.use_time)
        check_histogram(s, "asyncpool_connect_seconds", "prom-main", stats.connect_time)
        assert stats.wait_time.max >= HOLD
        assert stats.use_time.max >= HOLD
        assert sample(s, "asyncpool_connect_seconds_sum", pool="prom-main") > 0

        # Scraping reads stats() and resets nothing; pop_stats() would (see the docs).
        assert scrape(registry) == s
        pool.pop_stats()
        assert sample(scrape(registry), "asyncpool_acquired_total", pool="prom-main") == 0
    # A closed pool is no longer reported.
    assert not any(labels for (_, labels) in scrape(registry) if ("pool", "prom-main") in labels)


async def test_prometheus_several_pools():
    a = asyncpool.Pool("postgresql://unused", max_size=3, name="a")
    b = asyncpool.Pool("postgresql://unused", max_size=4, name="b")
    registry = CollectorRegistry()
    collector = PoolCollector([a, b], namespace="app_db")
    registry.register(collector)
    s = scrape(registry)
    assert sample(s, "app_db_connections_max", pool="a") == 3
    assert sample(s, "app_db_connections_max", pool="b") == 4
    assert repr(collector) == "<PoolCollector pools=['a', 'b']>"
    with pytest.raises(ValueError, match="unique"):
        PoolCollector([a, asyncpool.Pool("postgresql://unused", name="a")])
    # The registry checks names through describe(): a second collector clashes.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(
            PoolCollector(asyncpool.Pool("postgresql://unused", name="c"), namespace="app_db")
        )


async def test_metrics_follow_the_adaptive_limit():
    # autosize=True: the limit starts at min_size; db.client.connection.max and
    # asyncpool_connections_limit report it, asyncpool_connections_max stays max_size.
    pool = asyncpool.Pool("postgresql://unused", min_size=2, max_size=8, autosize=True, name="auto")
    fixed = asyncpool.Pool("postgresql://unused", max_size=5, name="fixed")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handle = instrument(pool, provider)
    m = otel_metrics(reader)
    assert value(m["db.client.connection.max"], "auto") == 2
    assert value(m["db.client.connection.idle.max"], "auto") == 2
    handle.uninstrument()
    provider.shutdown()
    registry = CollectorRegistry()
    registry.register(PoolCollector([pool, fixed]))
    s = scrape(registry)
    assert sample(s, "asyncpool_connections_limit", pool="auto") == 2
    assert sample(s, "asyncpool_connections_max", pool="auto") == 8
    assert sample(s, "asyncpool_limit_reason", pool="auto", reason="hold") == 1
    assert sample(s, "asyncpool_connections_limit", pool="fixed") == 5
    assert not [k for k in s if k[0] == "asyncpool_limit_reason" and ("pool", "fixed") in k[1]]


async def test_prometheus_pools_added_and_removed_after_registration():
    registry = CollectorRegistry()
    collector = PoolCollector()
    registry.register(collector)
    assert [n for (n, _) in scrape(registry) if n.endswith("_max")] == []
    a = asyncpool.Pool("postgresql://unused", max_size=3, name="a")
    collector.add(a)
    assert sample(scrape(registry), "asyncpool_connections_max", pool="a") == 3
    b = asyncpool.Pool("postgresql://unused", max_size=4, name="b")
    collector.add(b)
    s = scrape(registry)
    assert sample(s, "asyncpool_connections_max", pool="a") == 3
    assert sample(s, "asyncpool_connections_max", pool="b") == 4
    with pytest.raises(ValueError, match="already reported"):
        collector.add(a)
    with pytest.raises(ValueError, match="unique"):
        collector.add(asyncpool.Pool("postgresql://unused", name="a"))
    collector.remove(a)
    assert collector.pools == [b]
    s = scrape(registry)
    assert not any(("pool", "a") in labels for (_, labels) in s)
    assert sample(s, "asyncpool_connections_max", pool="b") == 4
    with pytest.raises(ValueError, match="not reported"):
        collector.remove(a)
    # A closed pool frees its name: its successor can be added.
    b.terminate()
    assert collector.pools == []
    successor = asyncpool.Pool("postgresql://unused", max_size=5, name="b")
    collector.add(successor)
    assert sample(scrape(registry), "asyncpool_connections_max", pool="b") == 5


def test_prometheus_buckets_are_cumulative():
    buckets = [0] * (len(HISTOGRAM_BOUNDS) + 1)
    buckets[0], buckets[3], buckets[-2], buckets[-1] = 2, 1, 4, 3
    summary = TimeSummary(count=10, sum=123.0, max=99.0, buckets=tuple(buckets))
    got = _cumulative_buckets(summary)
    assert got[0] == ("0.0001", 2)
    assert got[3] == ("0.005", 3)
    assert got[-3] == ("10.0", 3)
    assert got[-2] == ("30.0", 7)
    assert got[-1] == ("+Inf", 10)
    assert [le for le, _ in got[:-1]] == [repr(b) for b in HISTOGRAM_BOUNDS]


# ------------------------------------------------------------------ event hooks


async def test_a_raising_event_hook_breaks_nothing(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
):
    seen: list[PoolEvent] = []

    def broken(event: PoolEvent) -> None:
        raise RuntimeError("hook bug")

    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=1, name="hooks")
    pool.add_event_hook(broken)
    pool.add_event_hook(seen.append)  # still called after the broken one
    with asyncpool_logs(caplog) as records:
        async with opened(pool):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                with pytest.raises(asyncpool.PoolTimeout):
                    await pool.acquire(timeout=HOLD)
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 2") == 2
            assert pool.stats().in_use == 0
            assert pool.stats().idle == 1
    kinds = [e.kind for e in seen]
    assert kinds == [
        EventKind.CONNECT,
        EventKind.ACQUIRE,
        EventKind.TIMEOUT,
        EventKind.RELEASE,
        EventKind.ACQUIRE,
        EventKind.RELEASE,
        EventKind.DISCARD,
    ]
    assert all(e.pool == "hooks" for e in seen)
    timeout = seen[2]
    # uvloop's clock has millisecond resolution: allow one tick below the deadline.
    assert timeout.seconds is not None and timeout.seconds >= HOLD - 0.001
    assert seen[3].seconds is not None and seen[3].seconds >= HOLD - 0.001  # held through it
    errors = [r for r in records if r.levelno == logging.ERROR and "event hook" in r.message]
    assert len(errors) == len(seen)  # one per event, each with the traceback
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)
    pool.remove_event_hook(broken)


# ------------------------------------------------------------------ PoolTimeout diagnosis


def parse_timeout(message: str) -> dict[str, Any]:
    pattern = (
        r"asyncpool pool '(?P<name>[^']+)': no connection after waiting (?P<waited>[\d.]+)s "
        r"\(size=(?P<size>\d+)/(?P<max>\d+), in_use=(?P<in_use>\d+), idle=(?P<idle>\d+), "
        r"connecting=(?P<connecting>\d+), waiting=(?P<waiting>\d+), oldest borrower has held "
        r"its connection (?P<oldest>[\d.]+)s\)\. Likely cause: (?P<cause>.+)"
    )
    match = re.fullmatch(pattern, message, re.DOTALL)
    assert match, message
    return match.groupdict()


async def test_timeout_message_pool_too_small(postgres_dsn: str):
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=1, name="small")
    async with opened(pool):
        held = await pool.acquire()
        waiter = await start_waiter(pool)  # another borrower queued ahead
        with pytest.raises(asyncpool.PoolTimeout) as caught:
            await pool.acquire(timeout=HOLD)
        assert isinstance(caught.value, TimeoutError)
        d = parse_timeout(str(caught.value))
        assert d["name"] == "small"
        assert HOLD <= float(d["waited"]) < 5
        assert (d["size"], d["max"], d["in_use"], d["idle"], d["connecting"]) == (
            "1",
            "1",
            "1",
            "0",
            "0",
        )
        assert d["waiting"] == "1"  # the other borrower, still queued
        assert float(d["oldest"]) >= float(d["waited"])  # held since before the wait
        assert d["cause"].startswith("the pool is at max_size=1 and every connection is busy")
        assert "raise max_size" in d["cause"]
        await pool.release(held)
        await pool.release(await waiter)


async def test_timeout_message_and_warning_for_a_leak(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
):
    leaks: list[PoolEvent] = []
    pool = asyncpool.Pool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        name="leaky",
        leak_timeout=0.05,
        maintenance_interval=0.02,
    )
    pool.add_event_hook(lambda e: leaks.append(e) if e.kind is EventKind.LEAK else None)
    with asyncpool_logs(caplog) as records:
        async with opened(pool):
            forgotten = await pool.acquire()  # the acquiring line shows in the warning
            await until(lambda: pool.stats().leaks_total == 1)
            with pytest.raises(asyncpool.PoolTimeout) as caught:
                await pool.acquire(timeout=HOLD)
            d = parse_timeout(str(caught.value))
            assert float(d["oldest"]) > 0.05
            assert "longer than leak_timeout=0.05s: likely a leak" in d["cause"]
            await pool.release(forgotten)
    assert len(leaks) == 1
    assert leaks[0].reason == "held too long"
    assert leaks[0].seconds is not None and leaks[0].seconds >= 0.05
    (warning,) = [r for r in records if r.levelno == logging.WARNING]
    assert "has been held for" in warning.message
    assert "test_timeout_message_and_warning_for_a_leak" in warning.message  # the stack


async def test_timeout_message_when_new_connections_fail(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
):
    async with TcpProxy.from_dsn(postgres_dsn) as proxy:
        pool = asyncpool.Pool(proxy.dsn, min_size=1, max_size=2, name="failing")
        with asyncpool_logs(caplog) as records:
            async with opened(pool):
                held = await pool.acquire()
                proxy.refuse()  # the database stops accepting connections
                with pytest.raises(asyncpool.PoolTimeout) as caught:
                    await pool.acquire(timeout=0.2)
                d = parse_timeout(str(caught.value))
                assert (d["size"], d["max"], d["in_use"]) == ("1", "2", "1")
                assert d["cause"].startswith("new connections fail: ")
                await pool.release(held)
                assert pool.stats().connect_errors_total >= 1
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert warnings
        assert all("'failing': connect failed: " in r.message for r in warnings)
        assert not [r for r in records if r.levelno >= logging.ERROR]

        # With no connection open at all, the database is down: fail fast, log an ERROR.
        pool = asyncpool.Pool(proxy.dsn, min_size=0, max_size=2, name="down")
        with asyncpool_logs(caplog) as records:
            async with opened(pool):
                with pytest.raises(
                    asyncpool.DatabaseUnavailable,
                    match=r"'down': the database at .* is unreachable",
                ):
                    await pool.acquire(timeout=5)
        (error,) = [r for r in records if r.levelno == logging.ERROR]
        assert "the database is treated as down" in error.message


# ------------------------------------------------------------------ logging


async def test_server_restart_logs_error_then_recovery(
    postgres_dsn: str, controllable_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
):
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=2, name="restart")
    with asyncpool_logs(caplog) as records:
        async with opened(pool):
            await asyncio.to_thread(controllable_postgres.stop)
            with pytest.raises(asyncpool.DatabaseUnavailable):
                await pool.acquire(timeout=5)
            await asyncio.to_thread(controllable_postgres.start)
            await until(lambda: pool.stats().idle == 1)  # reconnected in the background
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            assert pool.stats().connections_lost_total == 1
    levels = [(r.levelname, r.message) for r in records if r.levelno >= logging.WARNING]
    assert levels[0] == (
        "WARNING",
        "asyncpool pool 'restart': lost 1 connection(s) (closed "
        "by the server or broken); replacing them",
    )
    assert levels[1][0] == "ERROR"
    assert "the database is treated as down" in levels[1][1]
    assert levels[-1] == ("WARNING", "asyncpool pool 'restart': the database is reachable again")


async def test_quick_server_restart_is_logged(
    postgres_dsn: str, controllable_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
):
    pool = asyncpool.Pool(postgres_dsn, min_size=2, max_size=2, name="quick-restart")
    with asyncpool_logs(caplog) as records:
        async with opened(pool):
            await asyncio.to_thread(controllable_postgres.restart)
            async with pool.acquire(timeout=5) as conn:  # the pool recovers by itself
                assert await conn.fetchval("SELECT 1") == 1
            assert pool.stats().connections_lost_total >= 1
    assert [r for r in records if r.levelno >= logging.WARNING]


async def test_ordinary_use_logs_nothing(postgres_dsn: str, caplog: pytest.LogCaptureFixture):
    pool = asyncpool.Pool(postgres_dsn, min_size=1, max_size=2, name="quiet")
    async with opened(pool):
        with asyncpool_logs(caplog) as records:
            for _ in range(3):  # the hot path
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            async with pool.acquire() as conn:  # session state changed: a reset query
                await conn.execute("SET application_name = 'quiet-test'")
            conn = await pool.acquire()
            await conn.execute("BEGIN")  # left in a transaction: rolled back on release
            second = await pool.acquire()  # grows the pool: a second connect
            waiter = await start_waiter(pool)  # waits, then gets a returned connection
            await pool.release(conn)
            await pool.release(second)
            await pool.release(await waiter)
            await until(lambda: pool.stats().idle == 2)
            stats = pool.stats()
            assert stats.resets_total >= 2
            assert stats.connections_opened_total == 2
            assert stats.acquired_total == 7
        assert records == []
