"""What a unit sets for itself ends with it, bound to a test's connection as in production.

In production each unit is a transaction of its own: ``SET LOCAL`` ends with it, and
MariaDB's session variable is put back when the connection returns to the pool. Bound to a
test's connection (the pytest plugin, ``dbscope.testing.rolled_back``) a unit is a savepoint,
and a released savepoint keeps ``SET LOCAL``; the connection never returns to the pool. So a
unit's statement timeout or schema carried over to the next unit of the test, and to the
test's own connection, until dbscope put them back at the unit's end.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dbscope import Database, UnitOptions, testing
from tests import helpers

POSTGRES = ("statement_timeout", "search_path", "synchronous_commit", "application_name")


@pytest.fixture
def engine(database_url: str) -> Iterator[AsyncEngine]:
    with testing.any_loop_engine(database_url) as engine:
        yield engine


async def postgres_settings(connection: AsyncConnection) -> list[str]:
    query = "SELECT " + ", ".join(f"current_setting('{name}')" for name in POSTGRES)
    return list((await connection.execute(text(query))).one())


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_units_settings_end_with_it_on_postgresql(
    engine: AsyncEngine, database_url: str, outcome: str
) -> None:
    db = Database(database_url)
    options = UnitOptions(statement_timeout=0.5, schema="reporting", synchronous_commit="local")
    async with testing.rolled_back(db, engine) as connection:
        before = await postgres_settings(connection)
        async with db.unit_of_work(options, request_id="req-17") as unit:
            during = await postgres_settings(await unit.session.connection())
            unit.rollback_only = outcome == "rollback"
        async with db.transaction() as session:
            next_unit = await postgres_settings(await session.connection())
        after = await postgres_settings(connection)
    assert during == ["500ms", "reporting", "local", "req-17"]
    assert next_unit == before
    assert after == before


async def set_local(connection: AsyncConnection) -> None:
    """The test's own values for each setting a unit may change, in the test's transaction."""
    for statement in (
        "SET LOCAL statement_timeout = '50ms'",
        "SET LOCAL search_path = pg_catalog, public",
        "SET LOCAL synchronous_commit = off",
        "SET LOCAL application_name = 'the test'",
    ):
        await connection.exec_driver_sql(statement)


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_units_end_puts_back_what_the_test_had_set_on_postgresql(
    engine: AsyncEngine, database_url: str, outcome: str
) -> None:
    """What the test set with SET LOCAL before a unit is what it finds after it, not the
    server's defaults."""
    db = Database(database_url)
    options = UnitOptions(statement_timeout=2, schema="reporting", synchronous_commit="local")
    async with testing.rolled_back(db, engine) as connection:
        await set_local(connection)
        before = await postgres_settings(connection)
        async with db.unit_of_work(options, request_id="req-17") as unit:
            await unit.session.execute(text("SELECT 1"))
            unit.rollback_only = outcome == "rollback"
        after = await postgres_settings(connection)
    assert before == ["50ms", "pg_catalog, public", "off", "the test"]
    assert after == before


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_request_with_options_leaves_the_tests_own_settings(
    engine: AsyncEngine, database_url: str
) -> None:
    """A request through db.session_with(statement_timeout=..., schema=...) leaves the test's
    SET LOCAL values as it found them."""
    db = Database(database_url)

    async def timeout(session: AsyncSession) -> str:
        return str(await session.scalar(text("SELECT current_setting('statement_timeout')")))

    routes = {"GET /timeout": timeout}
    app = helpers.app_with(db.session_with(statement_timeout=2, schema="reporting"), routes)
    async with testing.rolled_back(db, engine) as connection:
        await set_local(connection)
        before = await postgres_settings(connection)
        response = await helpers.send(app, "GET /timeout")
        after = await postgres_settings(connection)
    assert response.json() == "2s"
    assert after == before


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_schema_chosen_on_the_way_gives_back_the_tests_search_path(
    engine: AsyncEngine, database_url: str
) -> None:
    """use_schema() in a unit that began without a schema: the test's search_path after it."""
    db = Database(database_url)
    async with testing.rolled_back(db, engine) as connection:
        await set_local(connection)
        before = await postgres_settings(connection)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))  # begun: use_schema() sets it right away
            await db.use_schema("tenant_7")
            during = await postgres_settings(await session.connection())
        after = await postgres_settings(connection)
    assert during[1] == "tenant_7"
    assert after == before


@pytest.mark.parametrize("db_backend", ["asyncmy"])
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_units_statement_timeout_ends_with_it_on_mariadb(
    engine: AsyncEngine, database_url: str, outcome: str
) -> None:
    db = Database(database_url)
    timeout = text("SELECT @@SESSION.max_statement_time")
    async with testing.rolled_back(db, engine) as connection:
        before = (await connection.execute(timeout)).scalar_one()
        async with db.unit_of_work(UnitOptions(statement_timeout=0.5)) as unit:
            during = (await unit.session.execute(timeout)).scalar_one()
            unit.rollback_only = outcome == "rollback"
        async with db.transaction() as session:
            next_unit = (await session.execute(timeout)).scalar_one()
        after = (await connection.execute(timeout)).scalar_one()
    assert float(during) == 0.5
    assert float(next_unit) == float(before) == float(after)


async def test_a_unit_inside_another_in_a_test_is_warned_of(
    engine: AsyncEngine, db: Database
) -> None:
    """Bound to a test's connection, a unit opened inside another is a savepoint of it: the
    inner one's commit undone by the outer one's rollback, and no lock between them, where in
    production it is a transaction apart that keeps its work, or waits for ever for the outer
    one's row. The test passed either way; it now says so. A unit after another is not."""
    async with testing.rolled_back(db, engine):
        async with db.transaction() as outer:
            await outer.execute(text("SELECT 1"))
            with pytest.warns(RuntimeWarning, match="in production it is a second transaction"):
                async with db.transaction() as inner:
                    await inner.execute(text("SELECT 2"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with db.transaction() as after:
                await after.execute(text("SELECT 3"))
