"""SQL tagged with its route (the ``sql_comments`` setting), read where operators read it:
the tags in ``pg_stat_activity`` and MariaDB's processlist, the request id as the
connection's ``application_name``, and what asyncpg leaves prepared on the server.

The comments are read by a second connection from ``pg_stat_activity`` and MariaDB's
processlist while a request served by uvicorn sleeps in the database; the request id from
``pg_stat_activity.application_name``; asyncpg's prepared statements from
``pg_prepared_statements`` on the connection that ran a thousand requests. The text a driver
receives, the mistakes and the guide: tests/test_sql_tags.py.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbscope import Database
from tests import helpers
from tests.documented import serving
from tests.sql_tag_routes import FRAMEWORK, one

APPLICATION = "sqltags"
ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
LONG_LITERAL = "x" * 1100  # past the 1024 bytes pg_stat_activity keeps of a query


# -- helpers ----------------------------------------------------------------------------------


async def nap(seconds: float, session: AsyncSession) -> dict[str, str]:
    """Sleep in the database (PostgreSQL)."""
    await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})
    return {"slept": "yes"}


async def long_nap(session: AsyncSession) -> dict[str, str]:
    """Sleep in the database in a query longer than what pg_stat_activity keeps."""
    await session.execute(text(f"SELECT pg_sleep(1), '{LONG_LITERAL}'"))
    return {"slept": "yes"}


async def maria_nap(session: AsyncSession) -> dict[str, str]:
    """Sleep in the database (MariaDB)."""
    await session.execute(text("SELECT SLEEP(1)"))
    return {"slept": "yes"}


async def while_running(watcher: AsyncConnection, query: str, marker: str) -> tuple[Any, ...]:
    """The row ``query`` (run by ``watcher``, with ``:marker``) finds first: a session of
    another connection running a statement that contains ``marker``."""
    with anyio.fail_after(10):
        while True:
            row = (await watcher.execute(text(query), {"marker": f"%{marker}%"})).first()
            if row is not None:
                return tuple(row)
            await anyio.sleep(0.02)


PG_ACTIVE = (
    "SELECT pid, query, application_name FROM pg_stat_activity WHERE datname = "
    "current_database() AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE :marker"
)
MARIADB_ACTIVE = (
    "SELECT id, info FROM information_schema.processlist "
    "WHERE id <> CONNECTION_ID() AND info LIKE :marker"
)


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` served by uvicorn over HTTP."""
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        yield client


async def seen_while_requesting(
    database_url: str,
    app: FastAPI,
    path: str,
    query: str,
    marker: str,
    headers: dict[str, str] | None = None,
) -> tuple[Any, ...]:
    """Request ``path`` over HTTP and, while it runs, what ``query`` (see while_running) sees
    of its statement; the request must succeed."""
    async with served(app) as client, helpers.admin(database_url) as watcher:
        request = asyncio.ensure_future(client.get(path, headers=headers))
        try:
            seen = await while_running(watcher, query, marker)
        finally:
            response = await request
    assert response.status_code == 200, response.text
    return seen


# -- what a server shows ----------------------------------------------------------------------


async def test_pg_stat_activity_shows_the_route_of_a_sleeping_request(postgres_url: str) -> None:
    """A second connection reads the request's statement with its tags from pg_stat_activity,
    exactly, on asyncpg and psycopg."""
    db = Database(postgres_url, sql_comments="append", application_name=APPLICATION)
    driver = db.url.get_driver_name()
    async with db:
        app = helpers.app_with(db.session, {"GET /nap/{seconds}": nap})
        _, query, _ = await seen_while_requesting(
            postgres_url, app, "/nap/1.5", PG_ACTIVE, "pg_sleep"
        )
    assert query == (
        f"SELECT pg_sleep($1) /*application='{APPLICATION}',controller='nap',"
        f"db_driver='{driver}',framework='{FRAMEWORK}',route='%2Fnap%2F%7Bseconds%7D'*/"
    )


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_prepended_tags_stay_in_pg_stat_activity_on_a_long_query(database_url: str) -> None:
    """pg_stat_activity cuts a long query at 1024 bytes; a prepended comment is in what it
    keeps."""
    async with Database(database_url, sql_comments="prepend") as db:
        app = helpers.app_with(db.session, {"GET /long": long_nap})
        _, query, _ = await seen_while_requesting(database_url, app, "/long", PG_ACTIVE, "pg_sleep")
    comment = (
        f"/*controller='long_nap',db_driver='asyncpg',framework='{FRAMEWORK}',route='%2Flong'*/"
    )
    assert query.startswith(f"{comment} SELECT pg_sleep(1), 'xxx")
    assert len(query.encode()) < len(LONG_LITERAL)


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_appended_tags_are_cut_from_a_long_query_in_pg_stat_activity(
    database_url: str,
) -> None:
    """The trade-off prepend exists for: an appended comment is beyond the 1024 bytes."""
    async with Database(database_url, sql_comments="append") as db:
        app = helpers.app_with(db.session, {"GET /long": long_nap})
        _, query, _ = await seen_while_requesting(database_url, app, "/long", PG_ACTIVE, "pg_sleep")
    assert query.startswith("SELECT pg_sleep(1), 'xxx")
    assert "/*" not in query


async def test_mariadb_processlist_shows_the_route_of_a_sleeping_request(mysql_url: str) -> None:
    """information_schema.processlist's INFO holds the request's statement with its tags."""
    async with Database(mysql_url, sql_comments="append", application_name=APPLICATION) as db:
        app = helpers.app_with(db.session, {"GET /maria-nap": maria_nap})
        _, info = await seen_while_requesting(
            mysql_url, app, "/maria-nap", MARIADB_ACTIVE, "SELECT SLEEP("
        )
    assert info == (
        f"SELECT SLEEP(1) /*application='{APPLICATION}',controller='maria_nap',"
        f"db_driver='asyncmy',framework='{FRAMEWORK}',route='%2Fmaria-nap'*/"
    )


async def test_the_request_id_is_the_application_name_during_the_request_only(
    postgres_url: str,
) -> None:
    """X-Request-ID is the connection's application_name while the request runs, never in
    the SQL text, and the connection is back to the pool's name after it."""
    request_id = f"req-{uuid.uuid4()}"
    settings: dict[str, Any] = {"sql_comments": "append", "application_name": APPLICATION}
    async with Database(postgres_url, **settings, **ONE_CONNECTION) as db:
        app = helpers.app_with(db.session, {"GET /nap/{seconds}": nap})
        pid, query, during = await seen_while_requesting(
            postgres_url, app, "/nap/1", PG_ACTIVE, "pg_sleep", {"X-Request-ID": request_id}
        )
        async with helpers.admin(postgres_url) as watcher:
            after = await watcher.scalar(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
    assert (during, after) == (request_id, APPLICATION)
    assert request_id not in query


async def test_a_worker_names_its_unit_with_a_request_id(postgres_url: str) -> None:
    """db.unit_of_work(request_id=...) is the application_name inside the unit only."""
    query = text("SELECT current_setting('application_name')")
    async with Database(postgres_url, application_name=APPLICATION, **ONE_CONNECTION) as db:
        async with db.unit_of_work(request_id="job-7") as unit:
            inside = await unit.session.scalar(query)
        async with db.transaction() as session:
            after = await session.scalar(query)
    assert (inside, after) == ("job-7", APPLICATION)


async def test_a_request_id_with_a_nul_names_the_unit_without_it(postgres_url: str) -> None:
    """A NUL in a request id (a header some ASGI servers pass on, a job's id) is left out of
    the application_name; before, the unit failed at its BEGIN (the request a 500)."""
    query = text("SELECT current_setting('application_name')")
    db = Database(postgres_url, application_name=APPLICATION, **ONE_CONNECTION)
    async with db, db.unit_of_work(request_id="job\x00-7") as unit:
        inside = await unit.session.scalar(query)
    assert inside == "job-7"


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_asyncpg_prepares_a_handful_of_statements_for_a_thousand_request_ids(
    database_url: str,
) -> None:
    """After 1,000 requests with distinct ids on one connection, the server holds only the
    few statements of the route, not one per id (asyncpg's cache would hold 100)."""
    async with Database(database_url, sql_comments="append", **ONE_CONNECTION) as db:
        app = helpers.app_with(db.session, {"GET /one": one})
        async with helpers.client_for(app) as client:
            for number in range(1000):
                response = await client.get("/one", headers={"X-Request-ID": f"id-{number}"})
                assert response.status_code == 200
        async with db.lease() as connection:
            prepared = await connection.fetch("SELECT statement FROM pg_prepared_statements")
    statements = [row["statement"] for row in prepared]
    of_the_route = sorted(statement for statement in statements if "%2Fone" in statement)
    assert of_the_route == [
        f"SELECT 1 /*controller='one',db_driver='asyncpg',framework='{FRAMEWORK}',route='%2Fone'*/",
        "SELECT set_config('application_name', $1, true) /*controller='one',"
        f"db_driver='asyncpg',framework='{FRAMEWORK}',route='%2Fone'*/",
    ]
    assert len(statements) < 20, statements  # the connection's own few besides
    assert not any("id-" in statement for statement in statements)


@pytest.mark.parametrize(
    ("setting", "headers", "names"),
    [
        ("X-Correlation-ID", {"X-Correlation-ID": "c-1", "X-Request-ID": "r-1"}, [("c-1",)]),
        ("none", {"X-Request-ID": "r-1"}, []),
    ],
)
@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_request_id_header_is_a_setting(
    database_url: str, setting: str, headers: dict[str, str], names: list[tuple[str]]
) -> None:
    """request_id_header names the header read; 'none' reads none and sends no set_config."""
    named: list[tuple[str]] = []

    def record(connection: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if "set_config('application_name'" in statement:
            named.append(tuple(parameters))

    db = Database(database_url, sql_comments="append", request_id_header=setting)
    async with db, helpers.client_for(helpers.app_with(db.session, {"GET /one": one})) as client:
        event.listen(db.engine.sync_engine, "after_cursor_execute", record)
        response = await client.get("/one", headers=headers)
    assert response.status_code == 200
    assert named == names
