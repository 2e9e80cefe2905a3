"""Query counts (dbscope.testing.count_queries, assert_queries): what is counted, what is left
out, the same on every driver, and the failure message; the guide's examples without pytest.

The pytest fixture and marker are in test_pytest_plugin_queries.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, LifecycleError, testing
from dbscope.testing import QueryCountError, QueryLog, assert_queries, count_queries
from tests.documented import block_containing, run_async_block
from tests.helpers import Tables, app_with

METADATA = MetaData()
AUTHORS = Table(
    "qc_authors",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(50)),
)
NOTES = Table(
    "qc_notes",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("author_id", ForeignKey("qc_authors.id")),
)
ONE_AUTHOR = select(AUTHORS).where(AUTHORS.c.id == 1)
AUTHOR_SHAPE = "SELECT ... FROM qc_authors WHERE qc_authors.id = ?"
TIMES = "\N{MULTIPLICATION SIGN}"


def line_of(marker: str) -> int:
    """The number of the line of this file that holds ``marker``."""
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


@pytest.fixture
async def bound(database_url: str, tables: Tables) -> AsyncIterator[Database]:
    """A Database bound to a test's transaction, as the pytest plugin binds the app's, on
    the test's database with qc_authors (ids 1 to 3) and qc_notes."""
    await tables.create_all(METADATA)
    database = Database(database_url)
    with testing.any_loop_engine(database_url) as engine:
        async with testing.rolled_back(database, engine):
            async with database.transaction() as session:
                rows = [{"id": n, "name": f"author {n}"} for n in (1, 2, 3)]
                await session.execute(insert(AUTHORS), rows)
            yield database


async def authors_one_by_one(database: Database) -> None:
    """Three statements of one shape: an N+1's loop."""
    async with database.transaction() as session:
        for author_id in (1, 2, 3):
            await session.execute(select(AUTHORS).where(AUTHORS.c.id == author_id))  # by id


# -- what is counted ---------------------------------------------------------------------------


async def test_the_statements_of_a_block_are_counted_on_every_driver(bound: Database) -> None:
    """Three SELECTs in a unit of work count 3, whatever the driver sends around them."""
    async with count_queries(bound) as log:
        await authors_one_by_one(bound)

    assert len(log) == 3
    assert [statement.shape for statement in log] == [AUTHOR_SHAPE] * 3


async def test_a_request_through_the_test_client_counts(bound: Database) -> None:
    """A request the app serves in the test's transaction counts, as the test's own do."""

    async def author(session: AsyncSession) -> Any:
        return (await session.execute(ONE_AUTHOR)).one().name

    app = app_with(bound.session, {"GET /author": author}, lifespan=bound.lifespan)
    async with testing.client(app) as http, count_queries(bound) as log:
        response = await http.get("/author")
        await authors_one_by_one(bound)

    assert response.json() == "author 1"
    assert len(log) == 4


async def test_nothing_after_the_block_is_counted(bound: Database) -> None:
    """The listener goes with the block: statements run after it leave the log as it was."""
    async with count_queries(bound) as log:
        await authors_one_by_one(bound)
    await authors_one_by_one(bound)

    assert len(log) == 3


async def test_a_database_of_its_own_counts_on_its_pool(database_url: str, tables: Tables) -> None:
    """Unbound, the Database's own engine is counted: a read-only unit's engine view too."""
    await tables.create_all(METADATA)
    async with Database(database_url) as database, count_queries(database) as log:
        await authors_one_by_one(database)
        async with database.transaction(read_only=True) as session:
            await session.execute(ONE_AUTHOR)

    assert len(log) == 4


async def test_counting_a_database_that_is_not_connected_says_how(database_url: str) -> None:
    """A Database neither connected nor bound has no engine to count on: LifecycleError."""
    with pytest.raises(LifecycleError, match="not connected yet"):
        async with count_queries(Database(database_url)):
            pass


# -- what is left out --------------------------------------------------------------------------


async def test_savepoints_and_begin_are_left_out_unless_everything_is_asked(
    bound: Database,
) -> None:
    """A unit in the test's transaction is a savepoint: left out, kept with everything=True."""
    async with (
        count_queries(bound) as counted,
        count_queries(bound, everything=True) as all_,
        bound.transaction() as session,
    ):
        await session.execute(ONE_AUTHOR)
        async with session.begin_nested():
            await session.execute(ONE_AUTHOR)

    assert len(counted) == 2
    control = [s.sql.split()[0] for s in all_ if s.shape != AUTHOR_SHAPE]
    assert control == ["SAVEPOINT", "SAVEPOINT", "RELEASE", "RELEASE"]


async def test_dbscope_own_statements_are_left_out_unless_everything_is_asked(
    bound: Database, db_backend: str
) -> None:
    """SET LOCAL, SET TRANSACTION READ ONLY, max_statement_time, the search_path and the
    request's application_name cost no count, nor what reads them before and puts them back
    at the end of a unit bound to the test's connection: the same code counts the same
    everywhere."""
    if db_backend == "sqlite":
        options: dict[str, Any] = {"read_only": True}
    elif db_backend == "asyncmy":
        options = {"read_only": True, "statement_timeout": 5}
    else:
        options = {"read_only": True, "statement_timeout": 5, "schema": "public"}
    async with count_queries(bound) as counted, count_queries(bound, everything=True) as all_:
        async with bound.transaction(**options) as session:
            await session.execute(ONE_AUTHOR)
        async with bound.unit_of_work(request_id="req-1") as unit:
            await unit.session.execute(ONE_AUTHOR)

    assert [statement.shape for statement in counted] == [AUTHOR_SHAPE] * 2
    own = [s.sql for s in all_ if s.shape != AUTHOR_SHAPE and "SAVEPOINT" not in s.sql]

    # Bound to the test's connection, what a unit changes is read first and put back after.
    def postgresql(timeout: str, path: str, name: str, put_back_name: str) -> list[str]:
        return [
            "SELECT current_setting('statement_timeout'), current_setting('search_path')",
            "SET TRANSACTION READ ONLY",
            "SET LOCAL statement_timeout = 5000",
            "SET LOCAL search_path TO public",
            f"SELECT set_config('statement_timeout', {timeout}, true), "
            f"set_config('search_path', {path}, true)",
            "SELECT current_setting('application_name')",
            f"SELECT set_config('application_name', {name}, true)",
            f"SELECT set_config('application_name', {put_back_name}, true)",
        ]

    expected = {
        "sqlite": ["PRAGMA query_only = ON", "PRAGMA query_only = OFF"],
        "asyncmy": [
            "SET @dbscope_statement_time = @@session.max_statement_time, "
            "SESSION max_statement_time = 5.0",
            "SET SESSION max_statement_time = @dbscope_statement_time",
        ],
        "asyncpg": postgresql("$1", "$2", "$1", "$1"),
        "psycopg": postgresql(
            "%(statement_timeout)s", "%(search_path)s", "%(name)s", "%(application_name)s"
        ),
    }
    assert own == expected[db_backend]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_sqlites_begin_is_left_out(database_url: str, tables: Tables) -> None:
    """dbscope sends SQLite's BEGIN itself (for savepoints; IMMEDIATE for a unit that may
    write): it costs no count."""
    await tables.create_all(METADATA)
    async with (
        Database(database_url) as database,
        count_queries(database) as counted,
        count_queries(database, everything=True) as all_,
    ):
        await authors_one_by_one(database)

    assert len(counted) == 3
    assert all_[0].sql == "BEGIN IMMEDIATE"


async def test_pings_before_use_are_never_counted(database_url: str, tables: Tables) -> None:
    """A liveness ping goes to the driver directly: even everything=True never sees one."""
    await tables.create_all(METADATA)
    database = Database(database_url, pool_pre_ping=True, pool_pre_ping_after=0)
    async with database, count_queries(database, everything=True) as log:
        for _ in range(3):
            async with database.transaction() as session:
                await session.execute(ONE_AUTHOR)
        pinged = database.stats().pinged

    assert pinged >= 2
    assert [statement.shape for statement in log if not statement.sql.startswith("BEGIN")] == [
        AUTHOR_SHAPE
    ] * 3


# -- shapes, origins and the failure -----------------------------------------------------------


async def test_the_failure_leads_with_the_repeated_shape_and_the_line_that_ran_it(
    bound: Database,
) -> None:
    """The message: 'ran 4 statements, at most 2; 3 (times) `shape` from file:line', then
    every statement, numbered; the same on every driver."""

    async def four_statements() -> None:
        async with assert_queries(bound, at_most=2):
            await authors_one_by_one(bound)
            async with bound.transaction() as session:
                await session.execute(select(NOTES))

    with pytest.raises(QueryCountError) as failure:
        await four_statements()

    head, *listed = str(failure.value).splitlines()
    line = line_of("# by id")
    assert head == f"ran 4 statements, at most 2; 3 {TIMES} `{AUTHOR_SHAPE}` from {where(line)}"
    assert len(listed) == 4
    assert listed[0].endswith(f"({where(line)})")
    assert listed[3].startswith("   4. SELECT qc_notes.id, qc_notes.author_id FROM qc_notes")


async def test_exactly_fails_on_fewer_statements_as_well(bound: Database) -> None:
    """exactly=4 with 3 statements fails, saying what was expected."""
    expected = rf"^ran 3 statements, expected exactly 4; 3 {TIMES} "
    with pytest.raises(QueryCountError, match=expected):
        async with assert_queries(bound, exactly=4):
            await authors_one_by_one(bound)


async def test_a_count_within_its_bound_passes(bound: Database) -> None:
    """at_most=3 and exactly=3 with 3 statements pass and give the log."""
    async with assert_queries(bound, at_most=3) as within, assert_queries(bound, exactly=3) as log:
        await authors_one_by_one(bound)

    assert len(within) == len(log) == 3


async def test_a_block_that_raises_goes_on_with_its_own_error(bound: Database) -> None:
    """The block's own exception propagates unchanged; the count is not checked."""

    async def failing() -> None:
        async with assert_queries(bound, exactly=0):
            await authors_one_by_one(bound)
            raise KeyError("its own")

    with pytest.raises(KeyError, match="its own"):
        await failing()


async def test_several_origins_are_named_by_the_most_frequent(bound: Database) -> None:
    """A shape run from two lines names the one that ran it most, and the count of others."""
    async with bound.transaction() as session, count_queries(bound) as log:
        for _ in range(2):
            await session.execute(ONE_AUTHOR)  # twice
        await session.execute(ONE_AUTHOR)  # once

    assert log.report().splitlines()[0] == (
        f"ran 3 statements; 3 {TIMES} `{AUTHOR_SHAPE}` from {where(line_of('# twice'))} "
        "and 1 other place"
    )


async def test_shapes_hide_values_lists_and_columns_the_same_on_every_driver(
    bound: Database,
) -> None:
    """Placeholders, casts, literals, IN lists and the SELECT list become ?, (...) and ...;
    names lose their quotes and comments go."""
    in_list = select(AUTHORS.c.id).where(AUTHORS.c.id.in_([1, 2, 3]), AUTHORS.c.name != "x")
    quoted = bound.engine.dialect.identifier_preparer.quote_identifier("qc_authors")
    literal = f"SELECT count(*) /* counted */ FROM {quoted} WHERE name <> 'it''s' AND id > 1.5"
    rows = [{"id": 1, "author_id": 1}, {"id": 2, "author_id": 2}]
    async with bound.transaction() as session, count_queries(bound) as log:
        await session.execute(in_list)
        await session.execute(text(literal))
        await session.execute(insert(NOTES).values(rows))

    assert [statement.shape for statement in log] == [
        "SELECT ... FROM qc_authors WHERE qc_authors.id IN (...) AND qc_authors.name != ?",
        "SELECT ... FROM qc_authors WHERE name <> ? AND id > ?",
        "INSERT INTO qc_notes (id, author_id) VALUES (...)",
    ]


async def test_a_limit_and_an_offset_have_one_shape_on_every_driver(bound: Database) -> None:
    """.limit(5) is LIMIT ? (SQLite sends it with OFFSET 0), an offset LIMIT ? OFFSET ?,
    alone (PostgreSQL's LIMIT ALL) or after a limit (MariaDB's LIMIT ?, ?)."""
    by_id = select(AUTHORS.c.id).order_by(AUTHORS.c.id)
    async with bound.transaction() as session, count_queries(bound) as log:
        await session.execute(by_id.limit(5))
        await session.execute(by_id.offset(1))
        await session.execute(by_id.limit(5).offset(1))
        first_two = by_id.limit(2).subquery("first_two")
        await session.execute(select(first_two.c.id))

    assert [statement.shape for statement in log] == [
        "SELECT ... FROM qc_authors ORDER BY qc_authors.id LIMIT ?",
        "SELECT ... FROM qc_authors ORDER BY qc_authors.id LIMIT ? OFFSET ?",
        "SELECT ... FROM qc_authors ORDER BY qc_authors.id LIMIT ? OFFSET ?",
        "SELECT ... FROM (SELECT ... FROM qc_authors ORDER BY qc_authors.id LIMIT ?) AS first_two",
    ]


async def test_named_placeholders_and_subqueries_have_shapes_too(bound: Database) -> None:
    """:name placeholders become ?; a subquery's SELECT keeps its own FROM."""
    statement = (
        "SELECT id FROM qc_authors "
        "WHERE id IN (SELECT author_id FROM qc_notes WHERE qc_notes.id = :id)"
    )
    async with bound.transaction() as session, count_queries(bound) as log:
        if bound.url.get_backend_name() == "sqlite":  # the one driver that reads :name
            connection = await session.connection()
            await connection.exec_driver_sql(statement, {"id": 1})
        else:
            await session.execute(text(statement), {"id": 1})

    assert log[0].shape == (
        "SELECT ... FROM qc_authors WHERE id IN (SELECT ... FROM qc_notes WHERE qc_notes.id = ?)"
    )


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({}, "Give one bound of the statements, exactly= or at_most="),
        ({"exactly": 1, "at_most": 2}, "got exactly=1, at_most=2"),
        ({"at_most": -1}, "at_most=-1 is not a number of statements"),
        ({"exactly": True}, "exactly=True is not a number of statements"),
        ({"exactly": "2"}, "exactly='2' is not a number of statements"),
        ({"at_most": 1.5}, "at_most=1.5 is not a number of statements"),
        ({"exactly": 1, "everything": "yes"}, "everything='yes' is not a bool"),
    ],
)
def test_bounds_a_count_cannot_have_are_refused_at_once(
    bounds: dict[str, Any], message: str
) -> None:
    """Missing, contradictory or non-count bounds fail when the block is made, saying why."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        assert_queries(Database("sqlite+aiosqlite:///never.db"), **bounds)


def test_a_url_instead_of_a_database_is_refused_without_its_password() -> None:
    """count_queries(url) names what it got by its type only: a URL may hold a password."""
    with pytest.raises(ConfigurationError, match="was given a str") as refused:
        count_queries("postgresql://app:s3cret@db/app")  # type: ignore[arg-type]

    assert "s3cret" not in str(refused.value)


# -- the guide ---------------------------------------------------------------------------------


async def test_the_guides_example_without_pytest_counts_as_it_says(bound: Database) -> None:
    """docs/testing.md's count_queries/assert_queries block gives the counts its comments say."""
    code = block_containing("docs/testing.md", "from dbscope.testing import assert_queries")
    namespace: dict[str, Any] = {"db": bound, "Author": AUTHORS}
    seen = await run_async_block(code, namespace)

    assert seen
    assert all(comment == shown for comment, shown in seen)
    assert isinstance(namespace["log"], QueryLog)


def where(line: int) -> str:
    """How a log names a line of this file: its path from the current directory."""
    return f"{os.path.relpath(__file__)}:{line}"
