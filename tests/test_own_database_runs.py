"""dbscope.testing.own_database and own_tables across runs: a second run at once, and the
tables a run keeps in a database dbscope did not make."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table

from dbscope import ConfigurationError, testing

from .run_databases import (
    column_types,
    create_database,
    database_exists,
    drop_database,
    drop_tables,
    run_database,
    table_names,
)

notes = MetaData()
Table("tr_notes", notes, Column("id", Integer, primary_key=True))


@pytest.fixture
def named(database_url: str) -> Iterator[str]:
    """The database URL, with no tr_notes table, and no run database of it."""

    def clean() -> None:
        drop_tables(database_url, "tr_notes")
        drop_database(run_database(database_url))

    clean()
    yield database_url
    clean()


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_a_second_run_stops_while_the_first_uses_the_database_between_its_tests(
    named: str,
) -> None:
    """The first run holds no connection of its tests' (each test opens and closes one): the
    second, on the same URL, still finds the database in use and stops, leaving it whole."""
    with testing.own_database(named, metadata=notes) as url:
        with (
            pytest.raises(testing.DatabaseSetupError, match="another test run uses it"),
            testing.own_database(named, metadata=notes),
        ):
            pass
        still = table_names(url, "tr_")

    assert still == {"tr_notes"}
    assert not database_exists(run_database(named))


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy", "sqlite"])
def test_reuse_alone_in_a_database_it_did_not_make_drops_its_tables_saying_why(
    named: str,
) -> None:
    """reuse=True in a database made by hand: nothing would tell the next run the tables are
    dbscope's, so they go at the end and the run says how to keep them; run after run passes.
    """
    own = run_database(named)
    create_database(own)
    said: list[str] = []

    for _ in range(2):
        with testing.own_database(named, metadata=notes, reuse=True, report=said.append) as url:
            inside = table_names(url, "tr_")
        assert inside == {"tr_notes"}

    assert table_names(own, "tr_") == set()
    dropped = [line for line in said if line.startswith("dropped the tables tr_notes")]
    assert len(dropped) == 2
    assert "add use_existing_tables=True" in dropped[0]


@pytest.mark.parametrize("db_backend", ["asyncpg", "sqlite"])
def test_tables_kept_in_a_database_it_did_not_make_are_said_and_then_refused_truly(
    named: str,
) -> None:
    """keep=True keeps them and says the next run needs use_existing_tables; the next run's
    refusal says it cannot tell them from anyone else's, never that dbscope did not make them.
    """
    own = run_database(named)
    create_database(own)
    said: list[str] = []

    with testing.own_tables(own, metadata=notes, keep=True, report=said.append):
        pass
    with (
        pytest.raises(testing.DatabaseSetupError) as refused,
        testing.own_tables(own, metadata=notes),
    ):
        pass

    assert table_names(own, "tr_") == {"tr_notes"}
    assert len(said) == 1
    assert said[0].startswith("kept the tables tr_notes (keep=True); the next run cannot tell")
    assert said[0].endswith("runs on them only with use_existing_tables=True")
    assert "cannot tell them from anyone else's" in str(refused.value)
    assert "which dbscope did not make" not in str(refused.value)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"reuse": "no"}, "reuse='no' is not a bool"),
        ({"keep": "false"}, "keep='false' is not a bool"),
        ({"use_existing_tables": "no"}, "use_existing_tables='no' is not a bool"),
        ({"report": 5}, "report=5 is no function"),
        ({"metadata": 5}, "metadata=5 is no MetaData"),
    ],
)
def test_an_argument_that_is_no_value_for_it_is_refused_before_anything_is_made(
    sqlite_url: str, given: dict[str, object], said: str
) -> None:
    """A flag given as text was true: the run kept, reused or used the app's tables it was
    told not to; the others failed inside, after the database was made."""
    options: Any = {"metadata": notes, **given}
    for helper in (testing.own_database, testing.own_tables):
        with pytest.raises(ConfigurationError, match=said):
            helper(sqlite_url, **options).__enter__()
    assert not database_exists(run_database(sqlite_url))


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncmy"])
def test_a_kept_database_whose_tables_changed_is_made_anew_naming_them_without_alembic(
    named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reuse=True with a column added to the metadata in between: the kept database is made
    anew, with the column; without Alembic (an extra) the line names the table and column by
    SQLAlchemy's inspector. The same metadata again reuses it."""
    monkeypatch.setitem(sys.modules, "alembic.autogenerate", None)  # not installed
    changed = MetaData()
    Table("tr_notes", changed, Column("id", Integer, primary_key=True), Column("title", String(20)))
    said: list[str] = []

    for metadata in (notes, changed, changed):
        with testing.own_database(named, metadata=metadata, reuse=True, report=said.append):
            pass

    assert column_types(run_database(named), "tr_notes").keys() == {"id", "title"}
    remade = [line for line in said if line.startswith("made the test database")]
    assert len(remade) == 1
    assert remade[0].endswith("no longer match the metadata (tr_notes: column title added)")
    assert said[-2].startswith("reusing the test database")


def test_pgbouncer_on_a_run_that_is_not_postgresql_is_refused_before_anything_is_made(
    sqlite_url: str,
) -> None:
    """own_database(sqlite_url, pgbouncer="transaction") was taken, as was any value: no
    Database was made with it on SQLite. Refused as the app's Database refuses it."""
    with pytest.raises(ConfigurationError, match="pgbouncer='transaction': PgBouncer pools Po"):
        testing.own_database(sqlite_url, pgbouncer="transaction").__enter__()
    bogus: Any = "session"
    with pytest.raises(ConfigurationError, match="pgbouncer='session': must be 'transaction'"):
        testing.own_database(sqlite_url, pgbouncer=bogus).__enter__()
    assert not database_exists(run_database(sqlite_url))
