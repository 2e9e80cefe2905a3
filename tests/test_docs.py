"""The code in README.md and docs/ runs as written."""

import asyncio
import contextlib
import logging
import re
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from uvicorn.logging import DefaultFormatter

from dbscope import Database
from tests.documented import (
    DOCS_URL,
    block_containing,
    python_blocks,
    run_async_block,
    run_block,
    serving,
)
from tests.helpers import admin, count_rows, send


# The quick start uses INSERT ... RETURNING, which MariaDB 10.11 lacks.
@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])
async def test_readme_quick_start_commits_a_note(database_url: str) -> None:
    """The README's quick start answers POST /notes and the note is stored."""
    namespace = run_block(python_blocks("README.md")[0], database_url)
    db, app = namespace["db"], namespace["app"]
    async with db.lifespan(app):
        async with db.transaction() as session:
            await session.execute(text("DROP TABLE IF EXISTS notes"))
            await session.execute(
                text("CREATE TABLE notes (id INTEGER PRIMARY KEY, text VARCHAR(200))")
                if "sqlite" in database_url
                else text("CREATE TABLE notes (id SERIAL PRIMARY KEY, text VARCHAR(200))")
            )
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://docs") as client:
            response = await client.post("/notes", json={"text": "hello"})
        async with db.transaction() as session:
            stored = (await session.execute(text("SELECT text FROM notes"))).scalars().all()
            await session.execute(text("DROP TABLE notes"))
    assert response.status_code == 200
    assert response.json()["text"] == "hello"
    assert stored == ["hello"]


async def test_scripts_guide_example_deletes_the_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge script of docs/scripts.md deletes the rows it names, on every backend (it
    used PostgreSQL's ANY)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    namespace = run_block(python_blocks("docs/scripts.md")[0], database_url)
    db = namespace["db"]
    async with db, db.transaction() as session:
        await session.execute(text("DROP TABLE IF EXISTS notes"))
        await session.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
        await session.execute(text("INSERT INTO notes VALUES (1), (2), (3), (4)"))
    await namespace["purge"]([1, 2, 3])
    async with db, db.transaction() as session:
        left = (await session.execute(text("SELECT id FROM notes"))).scalars().all()
        await session.execute(text("DROP TABLE notes"))
    assert left == [4]


def shown_server(shown: str) -> str:
    """A ServerInfo repr with its version numbers left out: they are the server's own."""
    return re.sub(r"version=\([0-9, ]+\)", "version=(...)", shown)


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_pool_figures_in_the_scripts_guide_are_what_db_stats_gives(
    database_url: str,
) -> None:
    """Each PoolStats, ServerInfo and URL the scripts guide shows is what the code gives."""
    code = block_containing("docs/scripts.md", "db.stats()")
    namespace: dict[str, Any] = {}
    code = code.replace(DOCS_URL, repr(database_url))
    seen = await run_async_block(code, namespace)
    claims = [
        (shown_server(comment), shown_server(shown))
        if comment.startswith("ServerInfo(")
        else (comment, shown)
        for comment, shown in seen
        if comment.startswith(("PoolStats(", "ServerInfo(", "postgresql"))
    ]
    assert len(claims) == 5
    for comment, shown in claims:
        assert shown == comment


# -- units-of-work.md: a SERIALIZABLE endpoint retried by @db.retry --------------------------

RETRIED_BLOCK = ("docs/units-of-work.md", "SerializableSession = Annotated")
LOCK_WAIT_TIMEOUT = 10.0


def log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """The records of ``logger``, as the docs show them: ``LEVEL logger: message``."""
    return [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name == logger
    ]


@contextlib.asynccontextmanager
async def ledger(database_url: str) -> AsyncIterator[AsyncConnection]:
    """A fresh ``ledger`` holding 100; yields an autocommit connection of the test's own."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS ledger"))
            columns = "owner INTEGER NOT NULL DEFAULT 1, amount INTEGER NOT NULL"
            await connection.execute(text(f"CREATE TABLE ledger ({columns})"))
            await connection.execute(text("INSERT INTO ledger (amount) VALUES (100)"))
            yield connection
            await connection.execute(text("DROP TABLE ledger"))
    finally:
        await engine.dispose()


async def withdraw_together(
    database_url: str, base_url: str, path: str = "/withdrawals", **options: Any
) -> list[httpx.Response]:
    """POST two withdrawals of 30 that both read the balance before either inserts
    (``options``: the request's, such as headers).

    A transaction of the test's own holds ``ledger`` in SHARE mode, which lets the requests
    read and stops their INSERTs; once both wait for it, it lets them go.
    """
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as holder, httpx.AsyncClient(base_url=base_url) as client:
            await holder.execute(text("LOCK TABLE ledger IN SHARE MODE"))
            requests = [
                asyncio.ensure_future(client.post(path, params={"amount": 30}, **options))
                for _ in range(2)
            ]
            waiting = text(
                "SELECT count(*) FROM pg_locks WHERE relation = 'ledger'::regclass AND NOT granted"
            )
            async with asyncio.timeout(LOCK_WAIT_TIMEOUT):
                # The server's lock table is the only signal: nothing to wait on but a poll.
                while await holder.scalar(waiting) != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await holder.commit()
            return list(await asyncio.gather(*requests))
    finally:
        await engine.dispose()


async def test_a_retried_serializable_endpoint_commits_both_conflicting_requests(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented SERIALIZABLE withdrawal: two in a write skew both 200, one retry."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    namespace = run_block(block_containing(*RETRIED_BLOCK), postgres_url)
    async with ledger(postgres_url) as connection:
        async with serving(namespace["app"]) as base_url:
            responses = await withdraw_together(postgres_url, base_url)
        balance = await connection.scalar(text("SELECT SUM(amount) FROM ledger"))
    lines = log_lines(caplog, "dbscope")
    documented = block_containing("docs/units-of-work.md", "Retrying withdraw", "text")
    assert [response.status_code for response in responses] == [200, 200]
    assert sorted(response.json()["balance"] for response in responses) == [40, 70]
    assert balance == 40
    # A retry that reads before the winner commits conflicts again, now and then (the docs
    # say so): the first retry is logged as shown, any further one in the same form.
    assert 1 <= len(lines) <= 4
    assert lines[0] == documented.rstrip("\n")
    as_first = [re.sub(r"attempt \d of", "attempt 1 of", line) for line in lines]
    assert as_first == [lines[0]] * len(lines)


async def test_a_signed_in_users_withdrawals_are_retried_with_the_user_loaded_anew(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The signed-in withdrawal: the user's id from a header, the rows read in the retried
    endpoint; two in a write skew both 200, one retried."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    namespace = run_block(block_containing(*RETRIED_BLOCK), postgres_url)
    signed_in = block_containing("docs/units-of-work.md", "def current_user_id")
    namespace = run_block(signed_in, postgres_url, namespace=namespace)
    headers = {"X-User-Id": "1"}
    async with ledger(postgres_url) as connection:
        async with serving(namespace["app"]) as base_url:
            path = "/accounts/me/withdrawals"
            responses = await withdraw_together(postgres_url, base_url, path, headers=headers)
        balance = await connection.scalar(text("SELECT SUM(amount) FROM ledger WHERE owner = 1"))
    assert [response.status_code for response in responses] == [200, 200]
    assert balance == 40
    assert 1 <= len(log_lines(caplog, "dbscope")) <= 4


async def test_the_serializable_endpoint_without_retry_answers_500_to_the_loser(
    postgres_url: str,
) -> None:
    """The same write skew without @db.retry: one 200, one 500, one withdrawal stored."""
    without_retry = {"@db.retry(attempts=5)  # below the route decorator\n": ""}
    code = block_containing(*RETRIED_BLOCK)
    namespace = run_block(code, postgres_url, replace=without_retry)
    async with ledger(postgres_url) as connection:
        async with serving(namespace["app"]) as base_url:
            responses = await withdraw_together(postgres_url, base_url)
        balance = await connection.scalar(text("SELECT SUM(amount) FROM ledger"))
    assert sorted(response.status_code for response in responses) == [200, 500]
    assert balance == 70


# -- units-of-work.md: the timeout middleware --------------------------------------------------

SLEEP = {"postgresql": "SELECT pg_sleep(2)", "mysql": "SELECT SLEEP(2)"}


def slow_app(db: Database) -> FastAPI:
    """``GET /slow`` writes a row, then runs a 2 s query: far past a 0.3 s timeout."""
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/slow", dependencies=[Depends(db.session)])
    async def slow() -> dict[str, str]:
        session = db.current_session()
        await session.execute(text("INSERT INTO slow_rows (value) VALUES (1)"))
        await session.execute(text(SLEEP[db.url.get_backend_name()]))
        return {"status": "slept"}

    return app


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])
async def test_a_request_past_the_documented_timeout_gets_504_and_gives_its_connection_back(
    database_url: str,
) -> None:
    """The timeout middleware answers 504 with nothing stored and nothing checked out."""
    db = Database(database_url)
    app = slow_app(db)
    code = block_containing("docs/units-of-work.md", "class TimeoutMiddleware")
    run_block(code, database_url, namespace={"app": app}, replace={"seconds=10": "seconds=0.3"})
    async with admin(database_url) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS slow_rows"))
        await connection.execute(text("CREATE TABLE slow_rows (value INTEGER)"))
        async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/slow")
            stats = db.stats()
        stored = await connection.scalar(text("SELECT count(*) FROM slow_rows"))
        await connection.execute(text("DROP TABLE slow_rows"))
    assert (response.status_code, response.text) == (504, "Gateway Timeout")
    assert stats.checked_out == 0
    assert stats.invalidated == 1
    assert stored == 0


async def test_a_router_that_lists_the_session_makes_each_of_its_routes_a_unit(
    sqlite_url: str,
) -> None:
    """fastapi.md's ``APIRouter(dependencies=[Depends(db.session)])``: a route that takes no
    session commits what it wrote through db.current_session(); one that raises keeps
    nothing."""
    async with Database(sqlite_url) as db:
        router = APIRouter(dependencies=[Depends(db.session)])

        @router.post("/rows/{value}")
        async def add(value: int) -> dict[str, int]:
            insert = text("INSERT INTO router_rows (value) VALUES (:value)")
            await db.current_session().execute(insert, {"value": value})
            if value < 0:
                raise HTTPException(409, "negative")
            return {"value": value}

        app = FastAPI()
        app.include_router(router)
        async with admin(sqlite_url) as connection:
            await connection.execute(text("CREATE TABLE router_rows (value INTEGER)"))
        statuses = [(await send(app, f"POST /rows/{value}")).status_code for value in (1, -1)]
        stored = await count_rows(sqlite_url, "router_rows")
    assert statuses == [200, 409]
    assert stored == 1


# -- units-of-work.md: a LazyLoadError in a response model, as the client and the log see it ---


def as_uvicorn_prints(record: logging.LogRecord) -> str:
    """A log record in uvicorn's default console format, its traceback's frames left out."""
    formatted = DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False).format(record)
    shown: list[str] = []
    in_frames = False
    for line in formatted.splitlines():
        if line == "Traceback (most recent call last):":
            shown += [line, "  ..."]
            in_frames = True
        elif in_frames and line.startswith(" "):
            continue
        else:
            in_frames = False
            shown.append(line)
    return "\n".join(shown)


def without_addresses(shown: str) -> str:
    """Output with object addresses left out: they differ from run to run."""
    return re.sub(r" at 0x[0-9a-f]+>", " at 0x...>", shown)


async def test_a_lazy_load_in_a_response_model_shows_as_the_docs_say(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented 500 and uvicorn's log record for an unloaded relationship, verbatim."""
    caplog.set_level(logging.ERROR, logger="uvicorn.error")
    code = block_containing("docs/units-of-work.md", "response_model=NoteOut")
    namespace = run_block(code, sqlite_url, module_name="app")
    db, base = namespace["db"], namespace["Base"]
    async with serving(namespace["app"]) as base_url:
        async with db.transaction() as session:
            connection = await session.connection()
            await connection.run_sync(base.metadata.create_all)
            session.add(namespace["Author"](id=1, name="ann"))
            await session.flush()
            session.add(namespace["Note"](id=1, title="first", author_id=1))
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/notes/1")
    records = [record for record in caplog.records if record.name == "uvicorn.error"]
    documented_response = block_containing("docs/units-of-work.md", "HTTP/1.1 500", "text")
    documented_log = block_containing("docs/units-of-work.md", "ASGI application", "text")
    status_line, content_type, _, body = documented_response.splitlines()
    assert f"HTTP/1.1 {response.status_code} {response.reason_phrase}" == status_line
    assert f"content-type: {response.headers['content-type']}" == content_type
    assert response.text == body
    assert len(records) == 1
    assert without_addresses(as_uvicorn_prints(records[0])) == without_addresses(
        documented_log.rstrip("\n")
    )


# -- migration.md: the app's other yield dependencies -----------------------------------------


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_the_migration_guides_function_scoped_audit_session_answers_a_failed_commit(
    database_url: str,
) -> None:
    """The guide's AuditSession, scope="function": a commit that fails is a 500, not a 200."""
    db = Database(database_url)
    code = block_containing("docs/migration.md", "async def audit_session")
    audit_session = run_block(code, database_url, namespace={"db": db})["AuditSession"]
    app = FastAPI(lifespan=db.lifespan)

    @app.post("/children/{parent_id}")
    async def add_child(parent_id: int, audit: audit_session) -> None:  # type: ignore[valid-type]
        statement = text("INSERT INTO children (parent_id) VALUES (:parent_id)")
        await audit.execute(statement, {"parent_id": parent_id})  # type: ignore[attr-defined]

    async with admin(database_url) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS children"))
        await connection.execute(text("DROP TABLE IF EXISTS parents"))
        await connection.execute(text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
        await connection.execute(
            text(
                "CREATE TABLE children (parent_id INTEGER NOT NULL REFERENCES parents (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post("/children/2")
        stored = await connection.scalar(text("SELECT count(*) FROM children"))
        await connection.execute(text("DROP TABLE children"))
        await connection.execute(text("DROP TABLE parents"))
    assert response.status_code == 500
    assert stored == 0


async def test_a_shared_retry_policy_runs_as_the_units_guide_shows(sqlite_url: str) -> None:
    """The RetryPolicy block of docs/units-of-work.md runs, with the policy it names."""
    code = textwrap.dedent(block_containing("docs/units-of-work.md", "policy=CONTENDED"))
    async with Database(sqlite_url) as db:
        namespace: dict[str, Any] = {"db": db}
        seen = await run_async_block(code, namespace)
    assert seen == [("0", "0")]
    assert namespace["retrying"].policy is namespace["CONTENDED"]
    assert namespace["CONTENDED"].attempts == 5
