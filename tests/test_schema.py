"""PostgreSQL schemas: set per unit of work with SET LOCAL, never leaked, never injected.

Each schema holds a ``schema_marker`` table whose one row names it, so ``SELECT name FROM
schema_marker`` tells which schema a statement really targets; ``public`` has one too. With
``pool_size=1`` every request runs on the same connection, which the tests check by its
backend pid, so a schema left on the connection would reach the next request.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbscope import ConfigurationError, Database
from dbscope.fastapi import add_exception_handlers
from tests.helpers import Tables, admin, app_with, client_for

SCHEMA_A = "schema_test_a"
SCHEMA_B = "schema_test_b"
INJECTION = "x; DROP TABLE schema_victim; --"
SMALL_POOL: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
SERIALIZATION_FAILURE = (
    "DO $$BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END$$"
)


@pytest.fixture
async def default_search_path(postgres_url: str) -> AsyncIterator[str]:
    """Create the schemas, markers and victim table; give the server's default search_path."""
    tables = Tables(postgres_url)
    async with admin(postgres_url) as connection:
        for place in (SCHEMA_A, SCHEMA_B):
            await connection.execute(text(f"DROP SCHEMA IF EXISTS {place} CASCADE"))
            await connection.execute(text(f"CREATE SCHEMA {place}"))
    for place in (SCHEMA_A, SCHEMA_B, "public"):
        await tables.create(f"{place}.schema_marker", "name TEXT")
    await tables.create("public.schema_victim", "id INTEGER")
    async with admin(postgres_url) as connection:
        for place, name in ((SCHEMA_A, "a"), (SCHEMA_B, "b"), ("public", "public")):
            insert = f"INSERT INTO {place}.schema_marker (name) VALUES (:name)"
            await connection.execute(text(insert), {"name": name})
        default = str((await connection.execute(text("SHOW search_path"))).scalar_one())
    yield default
    await tables.drop_all()
    async with admin(postgres_url) as connection:
        for place in (SCHEMA_A, SCHEMA_B):
            await connection.execute(text(f"DROP SCHEMA {place} CASCADE"))


async def where_am_i(session: AsyncSession | AsyncConnection) -> dict[str, Any]:
    """The search_path, the marker it resolves to and the backend pid behind ``session``."""
    return {
        "search_path": (await session.execute(text("SHOW search_path"))).scalar_one(),
        "marker": (await session.execute(text("SELECT name FROM schema_marker"))).scalar_one(),
        "pid": (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one(),
    }


def build_app(db: Database) -> FastAPI:
    """``/where`` reports where statements go, after ``use_schema(schema)`` if given (after a
    first query when ``late``)."""

    async def where(
        session: AsyncSession, schema: str | None = None, late: bool = False
    ) -> dict[str, Any]:
        if late:  # switch in a transaction that has already begun
            await session.execute(text("SELECT 1"))
        if schema is not None:
            await db.use_schema(schema)
        return await where_am_i(session)

    async def where_then_fail(session: AsyncSession, schema: str) -> None:
        await db.use_schema(schema)
        raise HTTPException(status_code=409, detail=await where_am_i(session))

    async def commit_midway(session: AsyncSession) -> dict[str, Any]:
        before = await where_am_i(session)
        await session.commit()
        return {"before": before, "after": await where_am_i(session)}

    return app_with(
        db.session,
        {
            "GET /where": where,
            "GET /where-then-fail": where_then_fail,
            "POST /commit-midway": commit_midway,
        },
    )


async def victim_exists(postgres_url: str) -> bool:
    """Whether the table ``public.schema_victim`` is still there."""
    async with admin(postgres_url) as connection:
        query = text("SELECT to_regclass('public.schema_victim') IS NOT NULL")
        return bool((await connection.execute(query)).scalar_one())


async def on_schema_a_then_default(
    postgres_url: str, path: str, **params: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    """On a pool of one connection: GET ``path`` on schema a, then ``/where`` with no schema.

    Returns the first response, and where the second request's statements went.
    """
    async with Database(postgres_url, **SMALL_POOL) as db, client_for(build_app(db)) as client:
        first = await client.get(path, params={"schema": SCHEMA_A, **params})
        second = (await client.get("/where")).json()
    return first, second


def assert_back_to_the_default(
    first: dict[str, Any], second: dict[str, Any], default_search_path: str
) -> None:
    """``second`` ran on ``first``'s connection, with the server's default search_path."""
    assert second["pid"] == first["pid"]
    assert second["search_path"] == default_search_path
    assert second["marker"] == "public"


@pytest.mark.parametrize("late", [False, True], ids=["first-thing", "after-a-query"])
async def test_a_schema_used_by_a_committed_request_does_not_reach_the_next_one(
    postgres_url: str, default_search_path: str, late: bool
) -> None:
    """After a request on schema a commits, the next one on that connection has the default;
    also when the request switched after its first query, in a transaction already begun."""
    response, second = await on_schema_a_then_default(postgres_url, "/where", late=late)
    first = response.json()
    assert first["marker"] == "a"
    assert first["search_path"] == SCHEMA_A
    assert_back_to_the_default(first, second, default_search_path)


async def test_a_schema_used_by_a_failed_request_does_not_reach_the_next_one(
    postgres_url: str, default_search_path: str
) -> None:
    """After a request on schema a raises, the next one on that connection has the default."""
    response, second = await on_schema_a_then_default(postgres_url, "/where-then-fail")
    assert response.status_code == 409
    first = response.json()["detail"]
    assert first["marker"] == "a"
    assert_back_to_the_default(first, second, default_search_path)


async def test_the_schema_option_applies_to_every_unit_of_work(
    postgres_url: str, default_search_path: str
) -> None:
    """With Database(schema=a), every request and transaction on the connection targets a."""
    async with Database(postgres_url, schema=SCHEMA_A, **SMALL_POOL) as db:
        async with client_for(build_app(db)) as client:
            requests = [(await client.get("/where")).json() for _ in range(3)]
        async with db.transaction() as session:
            transaction = await where_am_i(session)
    seen = [*requests, transaction]
    assert [place["marker"] for place in seen] == ["a"] * 4
    assert len({place["pid"] for place in seen}) == 1


async def test_the_schema_option_is_not_left_on_the_pooled_connection(
    postgres_url: str, default_search_path: str
) -> None:
    """Outside dbscope's units, the connection a unit on schema a used has the default."""
    async with Database(postgres_url, schema=SCHEMA_A, **SMALL_POOL) as db:
        async with db.transaction() as session:
            inside = await where_am_i(session)
        async with db.engine.connect() as connection:
            outside = await where_am_i(connection)
    assert inside["marker"] == "a"
    assert outside["pid"] == inside["pid"]
    assert outside["search_path"] == default_search_path


async def test_the_schema_option_survives_a_commit_in_the_middle_of_a_request(
    postgres_url: str, default_search_path: str
) -> None:
    """After ``await session.commit()`` in an endpoint, statements still target schema a."""
    db = Database(postgres_url, schema=SCHEMA_A, **SMALL_POOL)
    async with db, client_for(build_app(db)) as client:
        response = await client.post("/commit-midway")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["before"]["marker"] == "a"
    assert body["after"]["marker"] == "a"
    assert body["after"]["search_path"] == SCHEMA_A


async def test_use_schema_overrides_the_schema_option_for_one_unit_only(
    postgres_url: str, default_search_path: str
) -> None:
    """With Database(schema=a), a unit on schema b is followed by units on a again."""
    db = Database(postgres_url, schema=SCHEMA_A, **SMALL_POOL)
    async with db, client_for(build_app(db)) as client:
        switched = (await client.get("/where", params={"schema": SCHEMA_B})).json()
        after = (await client.get("/where")).json()
    assert switched["marker"] == "b"
    assert after["marker"] == "a"
    assert after["pid"] == switched["pid"]


async def test_use_schema_rejects_a_name_that_is_not_an_identifier(
    postgres_url: str, default_search_path: str
) -> None:
    """``use_schema("x; DROP TABLE ...")`` raises ValueError and runs no SQL from it."""
    async with Database(postgres_url) as db:
        with pytest.raises(ValueError, match="not a plain identifier"):
            async with db.transaction():
                await db.use_schema(INJECTION)
    assert await victim_exists(postgres_url)


@pytest.mark.parametrize("db_backend", ["asyncmy", "sqlite"])
async def test_use_schema_is_refused_where_there_are_no_schemas(database_url: str) -> None:
    """MariaDB and SQLite have no schemas to switch between: use_schema() says so, as the
    schema option does (before: accepted and ignored before the first statement, and a
    NotImplementedError after it)."""
    async with Database(database_url) as db, db.transaction() as session:
        for _ in range(2):  # before the unit's first statement, and after it
            with pytest.raises(ConfigurationError, match="no schemas to switch between"):
                await db.use_schema("reporting")
            await session.execute(text("SELECT 1"))


async def test_use_schema_of_a_name_that_is_no_str_is_a_configuration_error(
    postgres_url: str,
) -> None:
    """use_schema(5): the ConfigurationError it documents, not a TypeError of the regex."""
    async with Database(postgres_url) as db, db.transaction():
        with pytest.raises(ConfigurationError, match="not a plain identifier"):
            await db.use_schema(5)  # type: ignore[arg-type]


async def test_the_schema_option_rejects_a_name_that_is_not_an_identifier(
    postgres_url: str, default_search_path: str
) -> None:
    """``Database(url, schema="x; DROP TABLE ...")`` fails at construction."""
    with pytest.raises(ConfigurationError, match="not a plain identifier"):
        Database(postgres_url, schema=INJECTION)
    assert await victim_exists(postgres_url)


async def test_a_savepoints_rollback_undoes_the_schema_it_switched_to(
    postgres_url: str, default_search_path: str
) -> None:
    """A use_schema() in a savepoint that rolls back is undone with it, as PostgreSQL undoes
    its SET LOCAL; asking for that schema again then switches to it (it was a no-op: the
    unit's writes went to the schema of before)."""
    db = Database(postgres_url, schema=SCHEMA_A, **SMALL_POOL)
    async with db, db.transaction() as session:
        await session.execute(text("SELECT 1"))
        savepoint = await session.begin_nested()
        await db.use_schema(SCHEMA_B)
        inside = await where_am_i(session)
        await savepoint.rollback()
        undone = await where_am_i(session)
        await db.use_schema(SCHEMA_B)
        again = await where_am_i(session)
        await session.commit()  # the next transaction begins on what the unit targets
        after_commit = await where_am_i(session)
    markers = [place["marker"] for place in (inside, undone, again, after_commit)]
    assert markers == ["b", "a", "b", "b"]


async def test_a_retried_endpoint_behind_a_schema_dependency_is_retried(
    postgres_url: str, default_search_path: str
) -> None:
    """The docs' tenant dependency calls use_schema() before the endpoint: that began the
    transaction, and a conflict was answered 409 ("statements before it began") instead of
    retried. Each attempt targets the tenant's schema."""
    db = Database(postgres_url, **SMALL_POOL)
    seen: list[str] = []

    async def tenant_session(session: Annotated[AsyncSession, Depends(db.session)]) -> AsyncSession:
        await db.use_schema(SCHEMA_B)
        return session

    app = FastAPI()
    add_exception_handlers(app)

    @app.post("/conflicting")
    @db.retry(attempts=3, backoff=0)
    async def conflicting(session: Annotated[AsyncSession, Depends(tenant_session)]) -> list[str]:
        seen.append((await where_am_i(session))["marker"])
        if len(seen) == 1:
            await session.execute(text(SERIALIZATION_FAILURE))
        return seen

    async with db, client_for(app) as client:
        response = await client.post("/conflicting")
    assert (response.status_code, response.json()) == (200, ["b", "b"])


async def test_a_schema_the_database_lacks_fails_at_connect_naming_it(postgres_url: str) -> None:
    """The server takes any name in search_path: every request answered 500 ("relation ...
    does not exist"), never naming the schema. Now connect() refuses, saying how to make it."""
    db = Database(postgres_url, schema="Nowhere_yet")
    with pytest.raises(ConfigurationError, match=r"'Nowhere_yet'.*CREATE SCHEMA \"Nowhere_yet\""):
        await db.connect()
    assert db.state != "connected"
