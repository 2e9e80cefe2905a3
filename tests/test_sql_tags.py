"""SQL tagged with its route (the ``sql_comments`` setting), read where operators read it.

The comments are read by a second connection from ``pg_stat_activity`` and MariaDB's
processlist while a request served by uvicorn sleeps in the database; the request id from
``pg_stat_activity.application_name``; asyncpg's prepared statements from
``pg_prepared_statements`` on the connection that ran a thousand requests. The exact text a
driver receives is read with SQLAlchemy's ``after_cursor_execute`` event, which sees the
statement after dbscope's listener changed it.
"""

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import fastapi
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbscope import ConfigurationError, Database
from tests import helpers
from tests.documented import block_containing, run_block, serving

FRAMEWORK = f"fastapi%3A{fastapi.__version__}"
APPLICATION = "sqltags"
ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
LONG_LITERAL = "x" * 1100  # past the 1024 bytes pg_stat_activity keeps of a query


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def sent_statements(db: Database) -> Iterator[list[str]]:
    """The statements ``db``'s engine sends meanwhile, as its driver receives them."""
    sent: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        sent.append(statement)

    engine = db.engine.sync_engine
    event.listen(engine, "after_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "after_cursor_execute", record)


def without_begin(sent: list[str]) -> list[str]:
    """The statements but SQLite's BEGIN (tagged or not), which dbscope sends itself."""
    return [statement for statement in sent if "BEGIN" not in statement]


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


async def one(session: AsyncSession) -> dict[str, int]:
    """A request that runs one statement."""
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


def note_router_app(db: Database) -> FastAPI:
    """``GET /v1/notes/{note_id}``: a router with a prefix, included with another."""
    router = APIRouter(prefix="/notes")

    @router.get("/{note_id}")
    async def read_note(
        note_id: int, session: Annotated[AsyncSession, Depends(db.session)]
    ) -> dict[str, int]:
        return {"id": int(await session.scalar(text("SELECT :id"), {"id": note_id}) or 0)}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    return app


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


# -- the text a driver receives ---------------------------------------------------------------


async def test_a_percent_in_a_literal_and_a_pattern_survives_with_tags_on(
    database_url: str,
) -> None:
    """'%' in a literal, a LIKE pattern and a tag value is right on all four drivers."""
    db = Database(database_url, sql_comments="append")
    async with db, db.transaction(tags={"job": "100%"}) as session:
        query = text("SELECT 'a%b', CASE WHEN 'a%b' LIKE :pattern THEN 1 ELSE 0 END")
        row = (await session.execute(query, {"pattern": "a%"})).one()
    assert tuple(row) == ("a%b", 1)


async def test_rows_inserted_many_at_once_are_all_stored_with_tags_on(
    database_url: str, tables: helpers.Tables
) -> None:
    """An executemany INSERT (one statement, many parameter sets) stores every row."""
    await tables.create("tag_rows", "a INTEGER, b VARCHAR(20)")
    rows = [{"a": number, "b": f"{number}%"} for number in range(5)]
    db = Database(database_url, sql_comments="append")
    async with db, db.transaction(tags={"job": "many"}) as session:
        await session.execute(text("INSERT INTO tag_rows (a, b) VALUES (:a, :b)"), rows)
    async with db, db.transaction() as session:
        stored = (await session.execute(text("SELECT a, b FROM tag_rows ORDER BY a"))).all()
    assert [tuple(row) for row in stored] == [(row["a"], row["b"]) for row in rows]


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_asyncmy_still_sends_rows_inserted_many_at_once_as_one_insert(
    database_url: str, tables: helpers.Tables
) -> None:
    """asyncmy batches an executemany INSERT only if its text ends with VALUES (...): the
    statement is left untagged, and the server counts one INSERT for five rows."""
    await tables.create("tag_rows", "a INTEGER")
    inserts = text("SHOW SESSION STATUS LIKE 'Com_insert'")
    db = Database(database_url, sql_comments="append")
    async with db, db.transaction(tags={"job": "many"}) as session:
        before = int((await session.execute(inserts)).one()[1])
        with sent_statements(db) as sent:
            await session.execute(
                text("INSERT INTO tag_rows (a) VALUES (:a)"), [{"a": n} for n in range(5)]
            )
        after = int((await session.execute(inserts)).one()[1])
    assert after - before == 1
    assert sent == ["INSERT INTO tag_rows (a) VALUES (%s)"]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_the_comment_follows_the_sqlcommenter_format(database_url: str) -> None:
    """Keys sorted, keys and values URL-encoded, values quoted, a quote never bare."""
    tags = {"z key": "a/b*/", "a": "O'Brien"}
    async with Database(database_url, sql_comments="append") as db:
        with sent_statements(db) as sent:
            async with db.transaction(tags=tags) as session:
                await session.execute(text("SELECT 1"))
    assert without_begin(sent) == [
        "SELECT 1 /*a='O%27Brien',db_driver='aiosqlite',z%20key='a%2Fb%2A%2F'*/"
    ]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_the_comment_goes_before_a_final_semicolon(database_url: str) -> None:
    """An appended comment stays inside the statement it tags."""
    async with Database(database_url, sql_comments="append") as db:
        with sent_statements(db) as sent:
            async with db.transaction(tags={"job": "j"}) as session:
                await session.execute(text("SELECT 1;"))
    assert without_begin(sent) == ["SELECT 1 /*db_driver='aiosqlite',job='j'*/;"]


@pytest.mark.parametrize("own", ["SELECT 1 /* mine */", "SELECT 1 -- mine"])
@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_statement_with_its_own_comment_is_left_alone(database_url: str, own: str) -> None:
    """sqlcommenter: a statement that carries a comment is not changed."""
    async with Database(database_url, sql_comments="prepend") as db:
        with sent_statements(db) as sent:
            async with db.transaction(tags={"job": "j"}) as session:
                await session.execute(text(own))
    assert without_begin(sent) == [own]


async def test_with_tags_off_a_request_sends_its_sql_unchanged(database_url: str) -> None:
    """The default: no comment, on every driver, even with a request id."""
    async with Database(database_url) as db:
        app = helpers.app_with(db.session, {"GET /one": one})
        with sent_statements(db) as sent:
            async with helpers.client_for(app) as client:
                response = await client.get("/one", headers={"X-Request-ID": "r-1"})
    assert response.status_code == 200
    assert without_begin(sent) == ["SELECT 1"]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_the_route_is_the_template_with_the_routers_prefixes(database_url: str) -> None:
    """/v1/notes/42 is tagged /v1/notes/{note_id}: the template, prefixes included, never
    the concrete path."""
    async with Database(database_url, sql_comments="append") as db:
        with sent_statements(db) as sent:
            async with helpers.client_for(note_router_app(db)) as client:
                response = await client.get("/v1/notes/42")
    assert response.json() == {"id": 42}
    assert without_begin(sent) == [
        "SELECT ? /*controller='read_note',db_driver='aiosqlite',"
        f"framework='{FRAMEWORK}',route='%2Fv1%2Fnotes%2F%7Bnote_id%7D'*/"
    ]


@pytest.mark.parametrize("entry_point", ["transaction", "retrying", "parallel", "stream"])
@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_every_entry_point_that_opens_units_takes_tags(
    database_url: str, entry_point: str
) -> None:
    """transaction, retrying, parallel and stream tag their units' statements."""
    tags = {"job": entry_point}

    async def select_one(session: AsyncSession) -> Any:
        return await session.scalar(text("SELECT 1"))

    async def rows(session: AsyncSession) -> AsyncIterator[Any]:
        yield await select_one(session)

    async with Database(database_url, sql_comments="append") as db:
        with sent_statements(db) as sent:
            if entry_point == "transaction":
                async with db.transaction(tags=tags) as session:
                    await select_one(session)
            elif entry_point == "retrying":
                async for attempt in db.retrying(tags=tags):
                    async with attempt as session:
                        await select_one(session)
            elif entry_point == "parallel":
                await db.parallel(select_one, tags=tags)
            else:
                [item async for item in db.stream(rows, tags=tags)]
    assert without_begin(sent) == [f"SELECT 1 /*db_driver='aiosqlite',job='{entry_point}'*/"]


# -- mistakes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_an_unknown_sql_comments_value_is_refused_with_the_choices(database_url: str) -> None:
    """sql_comments='on' fails when the Database is made, naming the value and the three
    choices."""
    with pytest.raises(ConfigurationError) as info:
        Database(database_url, sql_comments="on")
    message = str(info.value)
    assert "keyword argument sql_comments='on'" in message
    assert "'off', 'append' or 'prepend'" in message


def test_sql_comments_from_the_environment_is_checked_and_read(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """SQL_COMMENTS is read like the other settings (any case); a wrong one names the
    variable."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    clean_env.setenv("SQL_COMMENTS", "yes")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    clean_env.setenv("SQL_COMMENTS", "Prepend")
    assert "environment variable SQL_COMMENTS='yes'" in str(info.value)
    assert Database.from_env().settings.sql_comments == "prepend"


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_request_id_header_that_is_no_header_name_is_refused(database_url: str) -> None:
    """request_id_header='X Request' fails when the Database is made, saying what to use."""
    with pytest.raises(ConfigurationError) as info:
        Database(database_url, request_id_header="X Request")
    assert "keyword argument request_id_header='X Request'" in str(info.value)
    assert "'none' to read no request id" in str(info.value)


@pytest.mark.parametrize("sql_comments", ["off", "append"])
@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_tags_that_are_not_text_are_refused(database_url: str, sql_comments: str) -> None:
    """tags={'run': 3} fails naming the value, whether comments are on or off."""
    async with Database(database_url, sql_comments=sql_comments) as db:
        with pytest.raises(ConfigurationError, match=r"the value 3 for 'run'"):
            async with db.transaction(tags={"run": 3}):  # type: ignore[dict-item]
                pass


# -- the guide --------------------------------------------------------------------------------


def guide_text(needle: str) -> str:
    """The one text block of docs/sql-tags.md containing ``needle``, with this FastAPI's
    version in place of the one written there."""
    shown = block_containing("docs/sql-tags.md", needle, "text").strip()
    return re.sub(r"fastapi%3A[0-9.]+", FRAMEWORK, shown)


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_guides_app_sends_the_comment_the_guide_shows(
    database_url: str, tables: helpers.Tables
) -> None:
    """docs/sql-tags.md's app, asked for /notes/42, sends the statement its text block shows."""
    await tables.create("notes", "id INTEGER PRIMARY KEY, body TEXT")
    async with helpers.admin(database_url) as connection:
        await connection.execute(text("INSERT INTO notes VALUES (42, 'hello')"))
    namespace = run_block(block_containing("docs/sql-tags.md", "@app.get"), database_url)
    db, app = namespace["db"], namespace["app"]
    async with db.lifespan(app), helpers.client_for(app) as client:
        with sent_statements(db) as sent:
            response = await client.get("/notes/42")
    assert response.json() == {"body": "hello"}
    assert sent == [guide_text("get_note")]


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_guides_script_sends_the_comment_the_guide_shows(
    database_url: str, tables: helpers.Tables, clean_env: pytest.MonkeyPatch
) -> None:
    """docs/sql-tags.md's purge script, with SQL_COMMENTS=append, tags its DELETE with its
    job."""
    await tables.create("notes", "id INTEGER PRIMARY KEY, body TEXT")
    clean_env.setenv("DATABASE_URL", database_url)
    clean_env.setenv("SQL_COMMENTS", "append")
    namespace = run_block(block_containing("docs/sql-tags.md", "tags="), database_url)
    sent: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        sent.append(statement)

    # The script connects its own Database: every engine is watched meanwhile.
    event.listen(Engine, "after_cursor_execute", record)
    try:
        await namespace["purge_old_notes"]()
    finally:
        event.remove(Engine, "after_cursor_execute", record)
    assert guide_text("purge-old-notes") in sent
