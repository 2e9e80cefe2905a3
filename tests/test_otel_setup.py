"""Setting dbscope.otel up: what it imports, instrumenting twice, closing, and pool names.

Import checks run in a fresh interpreter; "OpenTelemetry not installed" is a fresh
interpreter in which importing it fails, as it does without the package.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.pool import NullPool

import dbscope.otel
from dbscope import ConfigurationError, Database
from dbscope._pool import QueuedPool
from dbscope.otel import PoolMetrics
from tests.helpers import imported_by
from tests.otel_readings import POOL_NAME, Metered, metered


@pytest.fixture
def sdk() -> Iterator[Metered]:
    """A real SDK MeterProvider with an in-memory reader."""
    with metered() as found:
        yield found


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its last line of output."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return completed.stdout.splitlines()[-1]


@pytest.mark.parametrize("statement", ["import dbscope", "import dbscope.otel"])
def test_importing_dbscope_or_its_otel_module_imports_no_opentelemetry(statement: str) -> None:
    """Neither `import dbscope` nor `import dbscope.otel` loads an OpenTelemetry module."""
    assert imported_by(statement, "opentelemetry") == []


def test_the_otel_module_exports_its_pinned_names_each_documented() -> None:
    """dbscope.otel's __all__ is pinned; each name and PoolMetrics' members are documented;
    instrument() returns the module's own public class."""
    members = [getattr(PoolMetrics, name) for name in ("close", "name", "closed")]
    functions = [member.fget if isinstance(member, property) else member for member in members]
    assert dbscope.otel.__all__ == ["SEMCONV_VERSION", "PoolMetrics", "instrument"]
    assert all(f.__doc__ for f in [dbscope.otel.instrument, PoolMetrics, *functions])
    assert inspect.signature(dbscope.otel.instrument).return_annotation == "PoolMetrics"
    assert PoolMetrics.__module__ == "dbscope.otel"


def test_without_opentelemetry_instrument_says_which_extra_to_install() -> None:
    """With OpenTelemetry not importable, instrument() raises ModuleNotFoundError with the fix."""
    code = """
        import sys
        sys.modules["opentelemetry"] = None  # what an interpreter without it finds
        import dbscope, dbscope.otel
        try:
            dbscope.otel.instrument(dbscope.Database("sqlite+aiosqlite://"))
        except ModuleNotFoundError as error:
            print(type(error).__name__, error.name, "|", error)
    """
    shown = run_python(code)
    assert shown.startswith("ModuleNotFoundError opentelemetry")
    assert "pip install 'dbscope[otel]'" in shown


def test_the_global_meter_provider_set_up_after_instrument_gets_the_metrics(
    tmp_path: Path,
) -> None:
    """instrument(db) without a provider, then the SDK set globally: the pool is reported."""
    code = f"""
        import asyncio
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import dbscope.otel
        from dbscope import Database

        db = Database("sqlite+aiosqlite:///{tmp_path / "global.db"}", pool_name="global")
        dbscope.otel.instrument(db)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        async def main():
            async with db:
                print(sorted(
                    (metric.name, dict(point.attributes)["{POOL_NAME}"], point.value)
                    for resource in reader.get_metrics_data().resource_metrics
                    for scope in resource.scope_metrics
                    for metric in scope.metrics
                    if metric.name == "db.client.connection.count"
                    for point in metric.data.data_points
                ))

        asyncio.run(main())
    """
    count = "db.client.connection.count"
    assert run_python(code) == str([(count, "global", 0), (count, "global", 1)])


def test_a_provider_named_before_it_is_made_the_global_one_reports_every_pool(
    tmp_path: Path,
) -> None:
    """instrument(a, meter_provider=mp), mp then set globally, instrument(b): one set of
    instruments for mp, both pools reported, and a third Database named 'a' refused."""
    code = f"""
        import asyncio
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import dbscope.otel
        from dbscope import ConfigurationError, Database
        from tests.otel_readings import Readings

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        c = Database("sqlite+aiosqlite:///{tmp_path / "c.db"}", pool_name="a")
        a = Database("sqlite+aiosqlite:///{tmp_path / "a.db"}", pool_name="a")
        b = Database("sqlite+aiosqlite:///{tmp_path / "b.db"}", pool_name="b")
        dbscope.otel.instrument(a, meter_provider=provider)
        metrics.set_meter_provider(provider)
        dbscope.otel.instrument(b)
        refused = False
        try:
            dbscope.otel.instrument(c)
        except ConfigurationError:
            refused = True

        async def main():
            async with a, b:
                points = Readings(reader).points("db.client.connection.max")
                print(refused, sorted(dict(point.attributes)["{POOL_NAME}"] for point in points))

        asyncio.run(main())
    """
    assert run_python(code) == "True ['a', 'b']"


def test_instrumenting_twice_for_one_provider_gives_the_same_metrics(
    sqlite_url: str, sdk: Metered
) -> None:
    """instrument() again, same Database and MeterProvider: the same PoolMetrics."""
    db = Database(sqlite_url)
    first = dbscope.otel.instrument(db, meter_provider=sdk.provider)
    assert dbscope.otel.instrument(db, meter_provider=sdk.provider) is first
    assert first.name == db.name


def test_instrumenting_for_another_provider_is_refused_until_closed(sqlite_url: str) -> None:
    """A second MeterProvider is refused with what to call; after close() it is accepted."""
    db = Database(sqlite_url)
    with metered() as one, metered() as other:
        first = dbscope.otel.instrument(db, meter_provider=one.provider)
        with pytest.raises(ConfigurationError, match=r"close\(\)"):
            dbscope.otel.instrument(db, meter_provider=other.provider)
        with pytest.raises(ConfigurationError, match="durations=True"):
            dbscope.otel.instrument(db, meter_provider=one.provider, durations=False)
        first.close()
        first.close()  # idempotent
        second = dbscope.otel.instrument(db, meter_provider=other.provider)
    assert (first.closed, second.closed) == (True, False)
    assert repr(first) == f"PoolMetrics(name={db.name!r}, closed)"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"db": "postgresql+asyncpg://app:secret@localhost/app"}, "got a str"),
        ({"meter_provider": "prometheus"}, "meter_provider must be"),
    ],
)
def test_a_wrong_argument_is_refused_naming_it_and_no_password(
    sqlite_url: str, arguments: dict[str, Any], named: str
) -> None:
    """A URL given for the Database, or a string for the provider: ConfigurationError."""
    given: dict[str, Any] = {"db": Database(sqlite_url), **arguments}
    with pytest.raises(ConfigurationError, match=named) as caught:
        dbscope.otel.instrument(given.pop("db"), **given)
    assert "secret" not in str(caught.value)


def test_two_databases_of_one_name_on_one_provider_are_refused(
    sqlite_url: str, sdk: Metered
) -> None:
    """Their figures would mix: the second is refused, naming pool_name."""
    dbscope.otel.instrument(Database(sqlite_url), meter_provider=sdk.provider)
    with pytest.raises(ConfigurationError, match="pool_name"):
        dbscope.otel.instrument(Database(sqlite_url), meter_provider=sdk.provider)


async def test_two_databases_report_side_by_side_under_their_names(
    sqlite_url: str, tmp_path: Path, sdk: Metered
) -> None:
    """A primary and a second pool on one provider: each reported under its own name."""
    primary = Database(sqlite_url, pool_name="primary")
    reports = Database(f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}", pool_name="reports")
    for db in (primary, reports):
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
    async with primary, reports, primary.transaction() as session:
        await session.execute(text("SELECT 1"))
        readings = sdk.read()
    assert readings.connections("primary") == (0, 1)
    assert readings.connections("reports") == (1, 0)


async def test_closed_metrics_report_and_measure_nothing_more(
    sqlite_url: str, sdk: Metered
) -> None:
    """After close(): the pool's series are gone, and its checkouts are not measured."""
    async with Database(sqlite_url) as db:
        metrics = dbscope.otel.instrument(db, meter_provider=sdk.provider)
        metrics.close()
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        readings = sdk.read()
        pool = db.engine.pool
    names = {
        dict(point.attributes or {}).get(POOL_NAME)
        for name in readings.metrics
        for point in readings.points(name)
    }
    assert db.name not in names
    assert isinstance(pool, QueuedPool)
    assert pool.observer is None


async def test_without_durations_the_pool_is_counted_and_checkouts_are_not_timed(
    sqlite_url: str, sdk: Metered
) -> None:
    """durations=False: counts are reported, no histogram is, no observer is attached."""
    async with Database(sqlite_url) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider, durations=False)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            readings = sdk.read()
        pool = db.engine.pool
    assert readings.connections(db.name) == (0, 1)
    assert [name for name in readings.metrics if name.endswith("_time")] == []
    assert isinstance(pool, QueuedPool)
    assert pool.observer is None


async def test_a_pool_that_keeps_no_queue_reports_only_retries_and_rereads(
    sqlite_url: str, sdk: Metered, caplog: pytest.LogCaptureFixture
) -> None:
    """poolclass=NullPool: no counts to read, so none reported, and no callback fails."""
    async with Database(sqlite_url, poolclass=NullPool) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        readings = sdk.read()
    assert readings.points("db.client.connection.count") == []
    assert readings.value("dbscope.unit.retries", db.name) == 0
    assert readings.value("dbscope.unit.rereads", db.name) == 0
    # Nor a count of a line, checks or failures that a NullPool does not keep (each was a
    # constant 0 before): only what has points, the units' counts.
    counted = [name for name in readings.metrics if readings.points(name)]
    assert counted == ["dbscope.unit.retries", "dbscope.unit.rereads"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql+asyncpg://app:secret@db.internal/app", "db.internal:5432/app"),
        ("postgresql+psycopg://app:secret@db.internal:6432/app", "db.internal:6432/app"),
        (
            "postgresql://app@/app?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
            "h1:5432,h2:5433/app",
        ),
        (  # the ports were left out, 5432 named for both
            "postgresql+psycopg://app@/app?host=h1:6432,h2:6433&target_session_attrs=read-write",
            "h1:6432,h2:6433/app",
        ),
        ("mysql+asyncmy://root:secret@127.0.0.1/shop", "127.0.0.1:3306/shop"),
        ("sqlite+aiosqlite:///data/app.db", "data/app.db"),
        ("sqlite+aiosqlite://", ":memory:"),
    ],
)
def test_a_pool_is_named_host_port_database_without_user_or_password(url: str, name: str) -> None:
    """The default name follows the conventions: host:port/database; a file by its path."""
    assert Database(url).name == name


def test_pool_name_is_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    """POOL_NAME (behind the prefix) names the pool."""
    clean_env.setenv("APP_DATABASE_URL", "sqlite+aiosqlite://")
    clean_env.setenv("APP_POOL_NAME", "primary")
    assert Database.from_env("APP_").name == "primary"


def test_a_blank_pool_name_is_refused_naming_it() -> None:
    """pool_name=' ' fails at construction, naming the argument and the fix."""
    with pytest.raises(ConfigurationError, match="pool_name") as caught:
        Database("postgresql+asyncpg://app:secret@localhost/app", pool_name=" ")
    assert "host:port/database" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_durations_that_is_no_bool_is_refused(sqlite_url: str) -> None:
    """durations="no" is refused naming it (before: taken as True, histograms recorded)."""
    with pytest.raises(ConfigurationError, match="durations='no' is no bool"):
        dbscope.otel.instrument(Database(sqlite_url), durations="no")  # type: ignore[arg-type]
