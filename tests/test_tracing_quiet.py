"""The pool's own statements make no tracing spans (asyncpool/_quiet.py).

opentelemetry-instrumentation-asyncpg cannot be installed from this project's package
index, so ``asyncpg_instrumentation`` below wraps ``asyncpg.Connection``'s query
methods as that instrumentation does (one CLIENT span per call, named by the
statement's first word), honouring OpenTelemetry's suppress-instrumentation key as
instrumentations check it with ``is_instrumentation_enabled()``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import asyncpool
import asyncpool._quiet

_METHODS = ("execute", "executemany", "fetch", "fetchval", "fetchrow")


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("asyncpg-instrumentation-stand-in")

    def wrap(original: Any) -> Any:
        @functools.wraps(original)
        async def traced(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY):
                return await original(self, query, *args, **kwargs)
            name = query.split()[0] if query.split() else ""
            with tracer.start_as_current_span(
                name, kind=trace.SpanKind.CLIENT, attributes={"db.statement": query}
            ):
                return await original(self, query, *args, **kwargs)

        return traced

    for method in _METHODS:
        monkeypatch.setattr(
            asyncpg.connection.Connection, method, wrap(getattr(asyncpg.Connection, method))
        )
    yield tracer, exporter
    provider.shutdown()


async def request(dsn: str, tracer: trace.Tracer) -> None:
    """A user's request span: a pool opened in it, a query, session state changed, a
    transaction left open (so release rolls back and resets), a second borrow (pinged).
    """
    with tracer.start_as_current_span("request"):
        async with asyncpool.create_pool(
            dsn, min_size=1, max_size=1, ping_after_idle=0, name="traced"
        ) as pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 42") == 42
                await conn.execute("SET application_name = 'traced'")
                await conn.transaction().start()
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_setting('application_name')") != (
                    "traced"
                )


def statements(exporter: InMemorySpanExporter) -> list[str]:
    return [
        str(span.attributes["db.statement"])
        for span in exporter.get_finished_spans()
        if span.attributes and "db.statement" in span.attributes
    ]


USER_STATEMENTS = [
    "SELECT 42",
    "SET application_name = 'traced'",
    "BEGIN;",
    "SELECT current_setting('application_name')",
]


async def test_only_the_users_statements_are_traced(
    postgres_dsn: str, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans
    await request(postgres_dsn, tracer)
    assert statements(exporter) == USER_STATEMENTS
    (request_span,) = [s for s in exporter.get_finished_spans() if s.name == "request"]
    for span in exporter.get_finished_spans():
        assert span.end_time is not None and request_span.end_time is not None
        assert span.end_time <= request_span.end_time


async def test_without_suppression_the_pools_statements_would_be_spans(
    postgres_dsn: str,
    spans: tuple[trace.Tracer, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: with quiet() doing nothing (as if OpenTelemetry were
    not imported) the stand-in traces the pool's ROLLBACK, reset, ping and checks.
    """
    monkeypatch.setattr(asyncpool._quiet, "sys", types.SimpleNamespace(modules={}))
    tracer, exporter = spans
    await request(postgres_dsn, tracer)
    traced = statements(exporter)
    pools_own = [s for s in traced if s not in USER_STATEMENTS]
    assert "ROLLBACK" in pools_own
    assert "SELECT 1" in pools_own
    assert "SELECT pg_backend_pid()" in pools_own
    assert any(s.startswith("CLOSE ALL") for s in pools_own)
    assert any("max_connections" in s for s in pools_own)


def test_quiet_costs_nothing_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncpool._quiet, "sys", types.SimpleNamespace(modules={}))
    assert asyncpool._quiet.quiet() is asyncpool._quiet._NOTHING


def test_quiet_sets_and_restores_the_suppression_key() -> None:
    key = otel_context._SUPPRESS_INSTRUMENTATION_KEY
    assert not otel_context.get_value(key)
    with asyncpool._quiet.quiet():
        assert otel_context.get_value(key) is True
    assert not otel_context.get_value(key)


@pytest.fixture
def wrapt_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """A stand-in like OpenTelemetry's asyncpg instrumentation as it is today: wrapt
    wrappers on ``asyncpg.Connection``'s methods that do NOT check the suppress key."""
    import wrapt

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("asyncpg-instrumentation-stand-in")

    async def traced(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        query = str(args[0]) if args else ""
        name = query.split()[0] if query.split() else ""
        with tracer.start_as_current_span(
            name, kind=trace.SpanKind.CLIENT, attributes={"db.statement": query}
        ):
            return await wrapped(*args, **kwargs)

    for method in _METHODS:
        original = getattr(asyncpg.connection.Connection, method)
        monkeypatch.setattr(
            asyncpg.connection.Connection, method, wrapt.FunctionWrapper(original, traced)
        )
    yield tracer, exporter
    provider.shutdown()


async def test_an_instrumentation_that_ignores_the_key_still_sees_only_the_user(
    postgres_dsn: str, wrapt_spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = wrapt_spans
    await request(postgres_dsn, tracer)
    assert statements(exporter) == USER_STATEMENTS


async def test_without_unwrapping_that_instrumentation_would_trace_the_pool(
    postgres_dsn: str,
    wrapt_spans: tuple[trace.Tracer, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncpool._quiet, "own", lambda conn, name: getattr(conn, name))
    for module in ("_pg", "_budget", "_workers"):
        monkeypatch.setattr(
            f"asyncpool.{module}.own", lambda conn, name: getattr(conn, name), raising=True
        )
    tracer, exporter = wrapt_spans
    await request(postgres_dsn, tracer)
    pools_own = [s for s in statements(exporter) if s not in USER_STATEMENTS]
    assert "ROLLBACK" in pools_own and "SELECT 1" in pools_own
