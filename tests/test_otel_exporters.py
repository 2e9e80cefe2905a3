"""dbscope.otel through real exporters, and beside OpenTelemetry's SQLAlchemy instrumentation.

Prometheus: OpenTelemetry's exporter behind prometheus_client's HTTP server on 127.0.0.1,
scraped over HTTP. Traces: spans of real dbscope units through the SDK into an in-memory
exporter. The code of docs/metrics.md runs as written, its exporters swapped for in-memory
ones where the test must read what they got.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

import dbscope.otel
from dbscope import Database
from dbscope._otel_metrics import SCHEMA_URL
from tests.documented import ROOT, block_containing, run_async_block, run_block
from tests.otel_readings import Holders, Readings, turned_away
from tests.server import free_port

Sample = tuple[str, dict[str, str], float]
PROMETHEUS_BLOCK = ("docs/metrics.md", "PrometheusMetricReader()")
TRACES_BLOCK = ("docs/metrics.md", "SQLAlchemyInstrumentor")


def samples(exposition: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition: name, labels, value."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def value(found: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    matching = [
        v for n, found_labels, v in found if n == name and labels.items() <= found_labels.items()
    ]
    assert len(matching) == 1, f"{name} {labels}: {matching}"
    return matching[0]


@contextlib.contextmanager
def prometheus() -> Iterator[tuple[MeterProvider, str]]:
    """A MeterProvider read by OpenTelemetry's Prometheus exporter, served on 127.0.0.1: the
    provider and the URL to scrape."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield provider, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        provider.shutdown()


async def scrape(url: str) -> list[Sample]:
    """GET the exposition over HTTP, as Prometheus does."""
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    response.raise_for_status()
    return samples(response.text)


async def test_a_prometheus_scrape_shows_the_line_and_one_timeout(database_url: str) -> None:
    """Scraped over HTTP: two requests pending while the pool is held, then one timeout."""
    with prometheus() as (provider, url):
        db = Database(database_url, pool_size=1, max_overflow=0, pool_timeout=1)
        dbscope.otel.instrument(db, meter_provider=provider)
        async with db:
            holders = Holders(db)
            await holders.hold(1)
            await holders.queue(2)
            saturated = await scrape(url)
            await holders.finish()
            timed_out = await turned_away(db)
            after = await scrape(url)
    pool = {"db_client_connection_pool_name": db.name}
    assert timed_out.cause == "pool_timeout"
    assert value(saturated, "db_client_connection_pending_requests", **pool) == 2
    assert (
        value(
            saturated,
            "db_client_connection_count",
            **pool,
            **{"db_client_connection_state": "used"},
        )
        == 1
    )
    assert value(saturated, "db_client_connection_timeouts_total", **pool) == 0
    assert value(after, "db_client_connection_pending_requests", **pool) == 0
    assert value(after, "db_client_connection_timeouts_total", **pool) == 1
    assert value(after, "db_client_connection_wait_time_seconds_count", **pool) == 4


@contextlib.contextmanager
def sqlalchemy_traced(**options: Any) -> Iterator[None]:
    """OpenTelemetry's SQLAlchemy instrumentation, on for the block (it patches globally)."""
    # It declares SQLAlchemy < 2.1; the check is skipped to run it on 2.1.
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True, **options)
    try:
        yield
    finally:
        SQLAlchemyInstrumentor().uninstrument()


def statements(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """The SQL of each statement span."""
    return [
        str(span.attributes["db.statement"])
        for span in spans
        if span.attributes and "db.statement" in span.attributes
    ]


async def test_opentelemetry_sqlalchemy_instrumentation_traces_dbscope_units(
    database_url: str,
) -> None:
    """Instrumented after dbscope was imported, before connect(): a unit's query is a span."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    with sqlalchemy_traced(tracer_provider=tracer_provider):
        async with Database(database_url) as db, db.transaction() as session:
            assert (await session.execute(text("SELECT 42"))).scalar_one() == 42
    tracer_provider.shutdown()
    assert "SELECT 42" in statements(exporter.get_finished_spans())


async def test_the_traces_and_metrics_example_of_the_guide_runs(database_url: str) -> None:
    """docs/metrics.md's two instrumentations together: spans of the unit, dbscope's metrics,
    and the instrumentation's older connection count dropped by the View."""
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    code = block_containing(*TRACES_BLOCK)
    replace = {
        "BatchSpanProcessor(ConsoleSpanExporter())": "SimpleSpanProcessor(span_exporter)",
        "PeriodicExportingMetricReader(ConsoleMetricExporter())": "metric_reader",
    }
    namespace = {
        "SimpleSpanProcessor": SimpleSpanProcessor,
        "span_exporter": spans,
        "metric_reader": reader,
    }
    found = run_block(code, database_url, namespace=namespace, replace=replace)
    db = found["db"]
    try:
        async with db, db.transaction() as session:
            await session.execute(text("SELECT 42"))
        readings = Readings(reader)
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        found["tracer_provider"].shutdown()
        found["meter_provider"].shutdown()
    assert "SELECT 42" in statements(spans.get_finished_spans())
    # The guide: a span named by the statement's first word as written, `SELECT`.
    named = [
        span.name
        for span in spans.get_finished_spans()
        if span.attributes and span.attributes.get("db.statement") == "SELECT 42"
    ]
    assert [name.split()[0] for name in named] == ["SELECT"]
    assert readings.histogram("db.client.connection.use_time", db.name).count == 1
    assert "db.client.connections.usage" not in readings.metrics


@contextlib.asynccontextmanager
async def prometheus_example(url: str, port: int) -> AsyncIterator[dict[str, Any]]:
    """The Prometheus example of docs/metrics.md, serving on ``port``, stopped at the end."""
    code = block_containing(*PROMETHEUS_BLOCK)
    found = run_block(code, url, replace={"9464": str(port)})
    try:
        yield found
    finally:
        found["server"].shutdown()
        found["server"].server_close()
        found["meter_provider"].shutdown()


async def test_the_prometheus_example_scrapes_as_the_guide_shows(database_url: str) -> None:
    """The guide's app with its 20 connections in use and 3 requests waiting: each sample the
    guide shows is in the scrape, with that value."""
    port = free_port()
    shown = samples(block_containing("docs/metrics.md", "db_client_connection_count", "text"))
    async with prometheus_example(database_url, port) as found:
        db, app = found["db"], found["app"]
        async with db.lifespan(app):
            holders = Holders(db)
            await holders.hold(20)
            await holders.queue(3)
            scraped = await scrape(f"http://127.0.0.1:{port}/metrics")
            await holders.finish()
    assert len(shown) == 7
    for name, labels, expected in shown:
        labels["db_client_connection_pool_name"] = db.name  # the guide's is localhost:5432/app
        assert value(scraped, name, **labels) == expected, name


async def test_the_pool_names_the_guide_shows_are_what_db_name_gives() -> None:
    """Each `.name` the guide claims, with its URL as written."""
    code = block_containing("docs/metrics.md", "pool_name=")
    seen = await run_async_block(code, {"Database": Database})
    assert len(seen) == 2
    for comment, shown in seen:
        assert shown == comment


def test_the_guide_and_the_module_pin_one_semconv_version() -> None:
    """docs/metrics.md and dbscope.otel's docstring name the version the schema URL has."""
    pinned = f"semantic conventions {dbscope.otel.SEMCONV_VERSION}"
    guide = " ".join((ROOT / "docs/metrics.md").read_text().split())
    module = " ".join((dbscope.otel.__doc__ or "").split())
    assert pinned in guide
    assert pinned in module
    assert SCHEMA_URL.endswith(f"/{dbscope.otel.SEMCONV_VERSION}")
