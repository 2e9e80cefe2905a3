"""Replicas seen by operations: health readings, metrics per replica pool, fallbacks counted.

These need no streaming replica: a replica that cannot be reached, and a "replica" that is
really a primary (promoted, as the check finds), are what health and metrics must report.
"""

import asyncio
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import text

import dbscope.otel
from dbscope import Database
from tests.otel_readings import Metered, metered
from tests.replica_reads import another_name
from tests.server import free_port


@pytest.fixture
def sdk() -> Iterator[Metered]:
    """A real SDK MeterProvider with an in-memory reader."""
    with metered() as found:
        yield found


def unreachable_replica(postgres_url: str) -> str:
    """A replica URL of ``postgres_url``'s driver at a port nothing listens on."""
    drivername = postgres_url.split("://", 1)[0]
    return f"{drivername}://app:S3cret-replica@127.0.0.1:{free_port()}/app"


async def on_replica(db: Database) -> bool:
    """Whether a read-only unit of ``db`` ran on a server in recovery (a replica)."""
    async with db.transaction(read_only=True) as session:
        return bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar())


async def test_an_unreachable_replica_makes_health_warn_and_reads_run_on_the_primary(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that cannot be reached: health warns (200), reads run on the primary; its
    password shows nowhere."""
    caplog.set_level(logging.INFO, logger="dbscope")
    db = Database(postgres_url, replicas=[unreachable_replica(postgres_url)])
    async with db:
        health = await db.health()
        ran_on_replica = await on_replica(db)
        stats = db.stats()
    replica = health.to_dict()["checks"]["replica:lag"][0]
    assert health.status == "warn"
    assert health.http_status == 200
    assert replica["status"] == "warn"
    assert replica["output"] == "a replica is down"
    assert "127.0.0.1" not in str(health.to_dict())
    assert ran_on_replica is False
    assert stats.replicas[0].state == "down"
    assert dict(stats.fallbacks) == {"no_replica_ready": 1}
    assert "serves no reads: it could not be reached" in caplog.text
    assert "S3cret" not in caplog.text + repr(stats) + repr(db) + repr(db.settings)


async def test_a_replica_url_that_names_a_primary_serves_no_reads(postgres_url: str) -> None:
    """A 'replica' that is not in recovery is found promoted, and never read; the later checks
    keep what the first said of it (before: 'no longer in recovery' from the second on)."""
    db = Database(postgres_url, replicas=[another_name(postgres_url)], replica_check_interval=0.05)
    async with db:
        ran_on_replica = await on_replica(db)
        checks = db.stats().replicas[0]
        await asyncio.sleep(0.3)  # several checks
        stats = db.stats()
    assert ran_on_replica is False
    assert stats.replicas[0].state == "promoted"
    assert stats.replicas[0].served == 0
    assert "the primary itself under another name" in (stats.replicas[0].reason or "")
    assert stats.replicas[0].reason == checks.reason


async def test_each_replica_pool_is_reported_with_the_fallbacks_by_reason(
    postgres_url: str, sdk: Metered
) -> None:
    """dbscope.otel reports a replica's pool under its own name, and the reads it turned away."""
    db = Database(postgres_url, replicas=[another_name(postgres_url)], pool_name="orders")
    async with db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        await on_replica(db)
        await on_replica(db)
        readings = sdk.read()
        replica_name = db.stats().replicas[0].name
    pools = {
        dict(point.attributes or {})["db.client.connection.pool.name"]
        for point in readings.points("db.client.connection.max")
    }
    assert pools == {"orders", replica_name}
    assert replica_name.startswith("orders replica ")
    reason = {"dbscope.fallback.reason": "no_replica_ready"}
    assert readings.value("dbscope.replica.fallbacks", "orders", **reason) == 2
