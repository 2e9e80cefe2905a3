"""What db.health() answers and how it gets it: a body that names no host, user, database
or version, only the checks a Database has (a bound one, SQLite in memory, no pool's line),
one server connection per max_age however many probes, the migrations when asked; and
docs/health.md's app, db.health() and body.

The faults are real: the server made unreachable behind a TCP proxy that is cut
(helpers.TcpProxy), a SQLite file removed under the app, a database behind its migrations.
The probes over HTTP under load and outages: tests/test_health.py.
"""

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

import dbscope.fastapi
from dbscope import Database, Health, HealthCheck
from tests import helpers
from tests.documented import block_containing, python_blocks, run_async_block, run_block, serving
from tests.health_probes import health_app, timed_get


def strings_in(value: object) -> list[str]:
    """Every key and string value in a JSON document, however deep."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings_in(v)]]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return [value] if isinstance(value, str) else []


def numbers_in(value: object) -> list[float]:
    """Every number in a JSON document, however deep."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for item in value for n in numbers_in(item)]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return [float(value)] if is_number else []  # type: ignore[arg-type]


def server_words(db: Database) -> list[str]:
    """What a body must not tell: host, user, database, file, the server's version."""
    url = db.url
    words = [url.host, url.username, url.database, Path(url.database or "").name]
    if db.server is not None:
        words.append(".".join(map(str, db.server.version)))
    return [word for word in words if word]


def database_files(directory: Path) -> list[Path]:
    """The SQLite test database's file and its journal files in ``directory``."""
    return sorted(directory.glob("test.db*"))


@pytest.fixture
async def bound_connection(database_url: str) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction, as a test binds a Database to; rolled back after."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection, connection.begin() as transaction:
            yield connection
            await transaction.rollback()
    finally:
        await engine.dispose()


@pytest.fixture
async def migrations(tmp_path: Path, database_url: str) -> AsyncIterator[Path]:
    """An Alembic project of one revision, "0001", on the test's database; its alembic.ini.

    env.py runs on the connection the test shares (config.attributes["connection"]).
    """
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(
        f"[alembic]\nscript_location = {tmp_path / 'migrations'}\n"
    )
    (tmp_path / "migrations" / "env.py").write_text(
        "from alembic import context\n"
        "context.configure(connection=context.config.attributes['connection'])\n"
        "with context.begin_transaction():\n"
        "    context.run_migrations()\n"
    )
    (tmp_path / "migrations" / "versions" / "0001_first.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n"
        "revision = '0001'\ndown_revision = None\n"
        "def upgrade():\n    op.create_table('health_migrated', sa.Column('id', sa.Integer))\n"
        "def downgrade():\n    op.drop_table('health_migrated')\n"
    )
    await drop_migrated(database_url)
    yield tmp_path / "alembic.ini"
    await drop_migrated(database_url)


async def drop_migrated(database_url: str) -> None:
    """Remove what the migrations fixture's revision and Alembic leave."""
    async with helpers.admin(database_url) as connection:
        for table in ("health_migrated", "alembic_version"):
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))


async def upgrade(database_url: str, ini: Path) -> None:
    """``alembic upgrade head`` on a connection of the test's own."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ini))
    async with helpers.admin(database_url) as connection:

        def run(sync_connection: Any) -> None:
            config.attributes["connection"] = sync_connection
            command.upgrade(config, "head")

        await connection.run_sync(run)


# -- what the answer says -----------------------------------------------------------------------


async def test_the_body_names_no_host_port_user_database_or_version(database_url: str) -> None:
    """The readiness body tells the checks, never where the server is or what it runs."""
    async with Database(database_url) as db:
        body = (await db.health()).to_dict()
        words = server_words(db)
    strings = " ".join(strings_in(body))
    assert body["status"] == "pass"
    assert [word for word in words if word in strings] == []
    assert make_url(database_url).port not in numbers_in(body)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_failing_body_names_no_host_or_port_either(database_url: str) -> None:
    """Unreachable, the body says so in dbscope's words, not the driver's (which name both)."""
    async with helpers.proxied(database_url) as (proxy, url), Database(url) as db:
        await proxy.cut()
        body = (await db.health()).to_dict()
    strings = " ".join(strings_in(body))
    assert body["status"] == "fail"
    assert "127.0.0.1" not in strings
    assert str(proxy.port) not in strings


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_server_address_is_logged_once_when_the_probe_starts_failing(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator learns where the unreachable server is from the log, once per change."""
    async with helpers.proxied(database_url) as (proxy, url), Database(url) as db:
        await proxy.cut()
        with caplog.at_level(logging.WARNING, logger="dbscope"):
            for _ in range(3):
                await db.health(max_age=0)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Not ready")]
    assert len(logged) == 1
    assert f"127.0.0.1:{proxy.port}" in logged[0]


async def test_a_test_bound_database_answers_from_the_server_alone(
    database_url: str, bound_connection: AsyncConnection
) -> None:
    """Bound to a test's connection, a Database that never connected passes, without pool
    checks: its units share that one connection and wait in no line."""
    db = Database(database_url)
    with db.bind_to(bound_connection):
        health = await db.health()
    assert health.status == "pass"
    assert [check.key for check in health.checks] == ["database:responseTime"]


async def test_a_database_in_memory_is_judged_by_its_pool_alone() -> None:
    """SQLite in memory lives in the pool's one connection: no probe connection is opened."""
    async with Database("sqlite+aiosqlite://") as db:
        health = await db.health()
    assert health.status == "pass"
    assert [check.key for check in health.checks] == ["pool:utilization", "pool:waiting"]


async def test_a_pool_that_keeps_no_queue_has_no_pool_checks(database_url: str) -> None:
    """With poolclass=NullPool there is no line to wait in: the server is the only check."""
    async with Database(database_url, poolclass=NullPool) as db:
        health = await db.health()
    assert health.status == "pass"
    assert [check.key for check in health.checks] == ["database:responseTime"]


async def test_a_sqlite_file_removed_under_the_app_fails_and_is_not_created_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The probe opens the file read-only: a removed file is fail, and stays removed."""
    async with Database(sqlite_url) as db:
        for path in database_files(tmp_path):
            path.unlink()
        health = await db.health()
    assert health.status == "fail"
    assert health.checks[0].output == "the database could not be reached"
    assert database_files(tmp_path) == []


# -- not hammering the server -------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_probes_within_max_age_share_one_server_connection(database_url: str) -> None:
    """Twenty probes at once and one more after them open one connection to the server."""
    async with helpers.proxied(database_url) as (proxy, url), Database(url) as db:
        before = proxy.accepted
        answers = await asyncio.gather(*(db.health(max_age=60) for _ in range(20)))
        answers.append(await db.health(max_age=60))
        opened = proxy.accepted - before
    assert opened == 1
    assert {answer.status for answer in answers} == {"pass"}


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_probe_after_max_age_asks_the_server_again(database_url: str) -> None:
    """Once the reading is older than max_age, the next probe opens a new connection."""
    async with helpers.proxied(database_url) as (proxy, url), Database(url) as db:
        before = proxy.accepted
        await db.health(max_age=0.2)
        await asyncio.sleep(0.3)
        await db.health(max_age=0.2)
        opened = proxy.accepted - before
    assert opened == 2


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_the_probe_leaves_no_server_connection_behind(database_url: str) -> None:
    """After five fresh probes, the server holds only the pool's connections of the app."""
    name = f"dbscope-test-health-{os.getpid()}"
    async with Database(database_url, application_name=name) as db:
        for _ in range(5):
            await db.health(max_age=0)
        stats = db.stats()
        held = await server_sessions(database_url, name, settle_at=stats.checked_in)
    assert held == stats.checked_in + stats.checked_out


async def server_sessions(database_url: str, name: str, *, settle_at: int) -> int:
    """How many PostgreSQL sessions bear ``application_name`` ``name``, once that number is
    ``settle_at`` or 5 s have passed (a closed connection's backend takes a moment to go)."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
    async with helpers.admin(database_url) as connection:
        deadline = time.monotonic() + 5
        while (count := int(await connection.scalar(query, {"name": name}) or 0)) != settle_at:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    return count


# -- migrations, when asked ---------------------------------------------------------------------


async def test_migrations_not_at_head_fail_until_they_are_run(
    database_url: str, migrations: Path
) -> None:
    """With migrations asked for, a database at no revision fails; upgraded, it passes."""
    async with Database(database_url) as db:
        behind = await db.health(migrations=migrations)
        await upgrade(database_url, migrations)
        at_head = await db.health(migrations=migrations, max_age=0)
    check = {c.key: c for c in behind.checks}["database:migrations"]
    assert (behind.status, check.observed_value) == ("fail", ())
    assert check.output is not None
    assert "'0001'" in check.output
    assert at_head.status == "pass"
    assert {c.key: c for c in at_head.checks}["database:migrations"].observed_value == ("0001",)


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_readyz_with_migrations_answers_503_until_they_are_run(
    database_url: str, migrations: Path
) -> None:
    """The router's migrations option makes /readyz 503 while the database is behind."""
    db = Database(database_url)
    async with serving(health_app(db, migrations=migrations, max_age=0)) as base_url:
        behind, _ = await timed_get(base_url, "/readyz")
        await upgrade(database_url, migrations)
        at_head, _ = await timed_get(base_url, "/readyz")
    assert behind.status_code == 503
    assert at_head.status_code == 200


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_an_alembic_ini_naming_no_scripts_fails_readiness_and_says_why_in_the_log(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An alembic.ini without script_location fails the probe (503 in the router), its
    reason logged once; before, every probe raised Alembic's CommandError (a 500)."""
    config = tmp_path / "alembic.ini"
    config.write_text("[alembic]\n")
    async with Database(database_url) as db:
        with caplog.at_level("WARNING", logger="dbscope"):
            first = await db.health(migrations=config)
            second = await db.health(migrations=config)
    assert (first.status, second.status) == ("fail", "fail")
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 1
    assert "names no migration scripts" in logged[0]


def test_a_probe_without_migrations_never_imports_alembic(sqlite_url: str) -> None:
    """db.health() and the router load Alembic only when migrations are asked for."""
    code = (
        "import asyncio\nimport dbscope.fastapi\nfrom dbscope import Database\n"
        "async def main():\n"
        f"    async with Database({sqlite_url!r}) as db:\n"
        "        dbscope.fastapi.health_router(db)\n"
        "        assert (await db.health()).status == 'pass'\n"
        "asyncio.run(main())\n"
    )
    assert helpers.imported_by(code, "alembic") == []


# -- the guide ------------------------------------------------------------------------------------


async def test_the_health_guide_app_serves_both_probes(database_url: str) -> None:
    """docs/health.md's app answers /livez and /readyz, pass, over HTTP."""
    namespace = run_block(python_blocks("docs/health.md")[0], database_url)
    async with serving(namespace["app"]) as base_url:
        answers = [(await timed_get(base_url, path))[0] for path in ("/livez", "/readyz")]
    assert [(r.status_code, r.json()["status"]) for r in answers] == [(200, "pass")] * 2


async def test_the_health_guide_shows_what_db_health_gives(database_url: str) -> None:
    """The commented values of docs/health.md's db.health() block are what it gives."""
    namespace = run_block(python_blocks("docs/health.md")[0], database_url)
    block = block_containing("docs/health.md", "await db.health()")
    async with namespace["db"]:
        seen = await run_async_block(block, {"db": namespace["db"]})
    assert seen
    assert [shown for shown, _ in seen] == [value for _, value in seen]


async def test_the_health_guide_migrations_line_builds_a_router(
    database_url: str, migrations: Path
) -> None:
    """docs/health.md's migrations line includes a router that checks them."""
    db = run_block(python_blocks("docs/health.md")[0], database_url)["db"]
    app = FastAPI(lifespan=db.lifespan)
    block = block_containing("docs/health.md", "migrations=")
    ini = {'"alembic.ini"': repr(str(migrations))}
    run_block(
        block, database_url, namespace={"db": db, "app": app, "dbscope": dbscope}, replace=ini
    )
    async with serving(app) as base_url:
        response, _ = await timed_get(base_url, "/readyz")
    assert response.status_code == 503
    assert "database:migrations" in response.json()["checks"]


def test_the_documented_body_has_the_checks_db_health_renders() -> None:
    """The guide's example body is a Health rendered: the same keys, in the same places."""
    shown = json.loads(block_containing("docs/health.md", '"checks"', language="json"))
    checks = tuple(
        HealthCheck(
            component=key.split(":")[0],
            measurement=key.split(":")[1],
            component_type=entry["componentType"],
            status=entry["status"],
            time=datetime.fromisoformat(entry["time"]),
            observed_value=entry["observedValue"],
            observed_unit=entry["observedUnit"],
            output=entry.get("output"),
        )
        for key, entries in shown["checks"].items()
        for entry in entries
    )
    assert Health.of(checks).to_dict() == shown
