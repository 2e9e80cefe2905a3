"""SQL tagged with its route (the ``sql_comments`` setting): the text a driver receives,
on every driver and entry point, the settings and tags refused, and docs/sql-tags.md's app and
script.

The exact text a driver receives is read with SQLAlchemy's ``after_cursor_execute`` event,
which sees the statement after dbscope's listener changed it. Where operators read the tags
and the request id (pg_stat_activity, MariaDB's processlist): tests/test_sql_tags_server.py.
"""

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database
from tests import helpers
from tests.documented import block_containing, run_block
from tests.sql_tag_routes import FRAMEWORK, one

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
    """The statements but those dbscope sends itself on SQLite (tagged or not): its BEGIN, and
    a read-only unit's query-only mode."""
    return [s for s in sent if "BEGIN" not in s and not s.startswith("PRAGMA query_only")]


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
