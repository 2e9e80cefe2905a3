"""Options that are no value are refused where they are written, as ConfigurationError.

A unit option (``statement_timeout=nan``, ``schema=5``) fails when the entry point is called,
before any connection is taken: the tests hold the pool's only connection, so a call that
reached for one would wait out ``pool_timeout`` instead. A retry option fails when the
RetryPolicy is made, by ``db.retrying()`` and by ``db.retry()`` at decoration time. A stream's
options fail in the endpoint, never as a 200 cut short. Each message names the argument as it
was given, then the fix. Last, what a retried function takes for a conflict is the verdict of
the rules of the unit it runs in.
"""

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from dbscope import ConfigurationError, Database, RetryPolicy
from dbscope.fastapi import add_exception_handlers
from tests import helpers

# One connection, soon given up on: a call that took one would fail on the pool instead.
ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 1}
# The longest statement_timeout each server's setting takes, in seconds, and what it shows.
LONGEST = {"postgresql": 2147483.647, "mysql": 31536000}
SHOWN = {"postgresql": "2147483647ms", "mysql": "31536000.0"}

Call = Callable[[Database, dict[str, Any]], Awaitable[object]]


async def select_one(session: AsyncSession) -> object:
    """A query for db.parallel()."""
    return await session.scalar(text("SELECT 1"))


async def one_row(session: AsyncSession) -> AsyncIterator[str]:
    """A streamed body for db.stream()."""
    yield str(await session.scalar(text("SELECT 1")))


async def in_transaction(db: Database, options: dict[str, Any]) -> object:
    async with db.transaction(**options):
        pass
    return None


async def in_session_with(db: Database, options: dict[str, Any]) -> object:
    return db.session_with(**options)


async def in_parallel(db: Database, options: dict[str, Any]) -> object:
    return await db.parallel(select_one, **options)


async def in_stream(db: Database, options: dict[str, Any]) -> object:
    return db.stream(one_row, **options)  # called, never iterated


async def in_retrying(db: Database, options: dict[str, Any]) -> object:
    return db.retrying(**options)


ENTRY_POINTS: dict[str, Call] = {
    "transaction": in_transaction,
    "session_with": in_session_with,
    "parallel": in_parallel,
    "stream": in_stream,
    "retrying": in_retrying,
}

NOT_VALUES = [
    pytest.param({"statement_timeout": math.nan}, "statement_timeout=nan", id="timeout-nan"),
    pytest.param({"statement_timeout": math.inf}, "statement_timeout=inf", id="timeout-inf"),
    pytest.param({"statement_timeout": 1e12}, "statement_timeout=1000000000000.0", id="1e12"),
    pytest.param({"statement_timeout": "5"}, "statement_timeout='5'", id="timeout-str"),
    pytest.param({"statement_timeout": True}, "statement_timeout=True", id="timeout-bool"),
    pytest.param({"schema": "a;b"}, "schema='a;b'", id="schema-sql"),
    pytest.param({"schema": 5}, "schema=5", id="schema-int"),
    pytest.param({"read_only": "no"}, "read_only='no'", id="read_only-str"),
]


@contextlib.asynccontextmanager
async def pool_taken(database_url: str) -> AsyncIterator[Database]:
    """A connected Database whose only connection is held meanwhile."""
    async with Database(database_url, **ONE_CONNECTION) as db, db.lease():
        assert db.stats().checked_out == 1
        yield db


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize(("options", "given"), NOT_VALUES)
async def test_a_unit_option_that_is_no_value_is_refused_at_the_call_naming_it(
    database_url: str, entry_point: str, options: dict[str, Any], given: str
) -> None:
    """Each entry point raises ConfigurationError naming the argument as given, and the
    fix, without reaching for a connection."""
    async with pool_taken(database_url) as db:
        with pytest.raises(ConfigurationError) as info:
            await ENTRY_POINTS[entry_point](db, options)
    message = str(info.value)
    assert message.startswith(f"{given} "), message
    assert "; use " in message


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_the_longest_statement_timeout_the_server_takes_is_the_bound(
    database_url: str,
) -> None:
    """At the server's bound a unit runs with it; a millisecond above, the call refuses it
    and says the bound."""
    async with Database(database_url) as db:
        name = db.url.get_backend_name()
        longest = LONGEST[name]
        query = "SHOW statement_timeout" if name == "postgresql" else "SELECT @@max_statement_time"
        async with db.transaction(statement_timeout=longest) as session:
            in_force = await session.scalar(text(query))
        with pytest.raises(ConfigurationError) as info:
            db.session_with(statement_timeout=longest + 0.001)
    assert str(in_force) == SHOWN[name]
    assert f"use a positive number of seconds up to {longest!r}" in str(info.value)


# -- retry options ----------------------------------------------------------------------------

POLICY_NOT_VALUES = [
    pytest.param({"attempts": math.inf}, "attempts=inf", id="attempts-inf"),
    pytest.param({"attempts": 2.5}, "attempts=2.5", id="attempts-float"),
    pytest.param({"attempts": "3"}, "attempts='3'", id="attempts-str"),
    pytest.param({"attempts": True}, "attempts=True", id="attempts-bool"),
    pytest.param({"attempts": 0}, "attempts=0", id="attempts-0"),
    pytest.param({"backoff": math.nan}, "backoff=nan", id="backoff-nan"),
    pytest.param({"backoff": -1}, "backoff=-1", id="backoff-negative"),
    pytest.param({"max_backoff": math.inf}, "max_backoff=inf", id="max_backoff-inf"),
    pytest.param({"max_backoff": "1"}, "max_backoff='1'", id="max_backoff-str"),
    # Below backoff, it capped every wait: backoff=2 waited at most 1 s, and never doubled.
    pytest.param({"backoff": 2, "max_backoff": 1}, "max_backoff=1", id="max_backoff-below"),
    pytest.param({"max_backoff": 0.01}, "max_backoff=0.01", id="max_backoff-below-default"),
    pytest.param({"lock_timeouts": "no"}, "lock_timeouts='no'", id="lock_timeouts-str"),
]


@pytest.mark.parametrize(("fields", "given"), POLICY_NOT_VALUES)
def test_a_retry_policy_field_that_is_no_value_is_refused_naming_it(
    sqlite_url: str, fields: dict[str, Any], given: str
) -> None:
    """RetryPolicy(...), db.retrying(...) and db.retry(...) (when it decorates) all raise
    ConfigurationError naming the field as given, and the fix."""
    db = Database(sqlite_url)
    makers: list[Callable[[], object]] = [
        lambda: RetryPolicy(**fields),
        lambda: db.retrying(**fields),
        lambda: db.retry(**fields),
    ]
    for make in makers:
        with pytest.raises(ConfigurationError) as info:
            make()
        message = str(info.value)
        assert message.startswith(f"{given} "), message
        assert "; use " in message


def test_a_policy_that_is_no_retry_policy_is_refused_naming_it(sqlite_url: str) -> None:
    """policy='x' is refused by db.retrying() and db.retry(), saying what to pass."""
    db = Database(sqlite_url)
    policy: Any = "x"
    for make in (lambda: db.retrying(policy=policy), lambda: db.retry(policy=policy)):
        with pytest.raises(ConfigurationError, match=r"^policy='x' is not a RetryPolicy; pass"):
            make()


def test_an_unknown_retry_option_is_refused_with_the_known_ones(sqlite_url: str) -> None:
    """A misspelt field names itself and the four there are."""
    db = Database(sqlite_url)
    with pytest.raises(ConfigurationError) as info:
        db.retrying(atempts=5)  # type: ignore[call-arg]  # what a checker refuses too
    assert str(info.value).startswith(
        "atempts=5 is not a retry option; use attempts, backoff, max_backoff, lock_timeouts"
    )


# -- a stream's options -----------------------------------------------------------------------


def stream_app(db: Database) -> FastAPI:
    """``/export`` streams rows in a unit asking for a level that does not exist."""
    app = FastAPI()
    add_exception_handlers(app)

    async def rows(session: AsyncSession) -> AsyncIterator[str]:
        yield "header\n"
        yield f"{await session.scalar(text('SELECT 1'))}\n"

    async def export() -> StreamingResponse:
        return StreamingResponse(db.stream(rows, isolation_level="SERIALISABLE"))  # type: ignore[arg-type]

    app.add_api_route("/export", export, methods=["GET"])
    return app


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_streams_wrong_option_is_refused_when_called_not_when_iterated(
    database_url: str,
) -> None:
    """db.stream(body, isolation_level='SERIALISABLE') raises at the call; so do wrong tags
    and a wrong write token."""
    async with pool_taken(database_url) as db:
        with pytest.raises(ConfigurationError, match="isolation_level='SERIALISABLE'"):
            db.stream(one_row, isolation_level="SERIALISABLE")  # type: ignore[arg-type]
        tags: Any = {"job": 5}
        with pytest.raises(ConfigurationError):
            db.stream(one_row, tags=tags)
        with pytest.raises(ConfigurationError, match="after='nope'"):
            db.stream(one_row, after="nope")


def test_a_stream_of_no_body_or_a_wrong_status_is_refused_at_the_call(sqlite_url: str) -> None:
    """db.stream(5), db.stream_response(5) and status_code='x': ConfigurationError at the call
    (before: accepted, then a TypeError at the first chunk, after a 200, or a response never
    sent); from_settings() of something else than settings, too (an AttributeError)."""
    db = Database(sqlite_url)

    async def no_yield(session: AsyncSession) -> int:  # a coroutine, no async iterator
        return 1

    for given in (5, no_yield):
        for call in (db.stream, db.stream_response):
            with pytest.raises(ConfigurationError, match="takes the body as a function of"):
                call(given)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="status_code='x' is no HTTP status"):
        db.stream_response(one_row, status_code="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="takes a DatabaseSettings, not str"):
        Database.from_settings(sqlite_url)  # type: ignore[arg-type]


def test_a_plain_generator_body_or_a_status_past_599_is_refused_at_the_call(
    sqlite_url: str,
) -> None:
    """A `def` body with `yield` was taken, then failed at the first request with Python's
    "'async for' requires an object with __aiter__"; status_code=99 or 600 was taken, and the
    server then sent no response at all (Starlette's KeyError)."""
    db = Database(sqlite_url)

    def rows(session: AsyncSession) -> Iterator[str]:  # no async: its queries cannot be awaited
        yield "a"

    for call in (db.stream, db.stream_response):
        with pytest.raises(ConfigurationError, match=r"rows .* is a plain generator function"):
            call(rows)  # type: ignore[arg-type]
    for status in (99, 600):
        with pytest.raises(ConfigurationError, match=f"status_code={status} is no HTTP status"):
            db.stream_response(one_row, status_code=status)
    assert db.stream_response(one_row, status_code=599).status_code == 599


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_streams_wrong_option_answers_500_from_the_endpoint_never_a_cut_200(
    database_url: str,
) -> None:
    """Over ASGI, the endpoint fails before the response starts: a whole 500, no 200 with a
    body cut short; and no connection was taken."""
    async with Database(database_url) as db:
        async with helpers.client_for(stream_app(db)) as client:
            response = await client.get("/export")
        checked_out = db.stats().checked_out
    assert response.status_code == 500, (response.status_code, response.text)
    assert response.text == "Internal Server Error"
    assert checked_out == 0


# -- the rules a retry judges by --------------------------------------------------------------

# A real serialization failure (SQLSTATE 40001), raised by the server on request.
SERIALIZATION_FAILURE = (
    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
)


async def test_a_retried_function_takes_a_conflict_by_the_rules_of_the_unit_it_runs_in(
    postgres_url: str,
) -> None:
    """A MariaDB-ruled Database bound to a PostgreSQL connection, its unit on PostgreSQL's
    rules: @db.retry() retries the server's 40001 by the unit's rules, not the Database's
    (by which it is no conflict)."""
    db = Database("mysql+asyncmy://root@127.0.0.1:3306/never_connected")
    runs: list[int] = []

    @db.retry(attempts=3, backoff=0)
    async def conflicting_once() -> str:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            await db.current_session().execute(text(SERIALIZATION_FAILURE))
        return "done"

    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            await connection.begin()
            with db.bind_to(connection):
                async with db.unit_of_work() as unit:  # on PostgreSQL's rules: the binding's
                    unit.endpoint = conflicting_once  # it owns the unit, as an endpoint
                    result = await conflicting_once()
            await connection.rollback()
    finally:
        await engine.dispose()
    assert (result, runs) == ("done", [1, 2])
