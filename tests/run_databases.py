"""The test run's own database, seen from outside: its name, whether it exists, its rows.

Shared by the tests of ``dbscope.testing.own_database`` and of the pytest plugin. Each
helper works on its own engine (SQLAlchemy's, not dbscope's), so that what it sees is the
server's word and not the code under test's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine


def run_database(url: str) -> str:
    """The URL of the database the plugin runs the tests in: ``url``'s name, then ``_test``."""
    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        path = Path(name)
        name = str(path.with_name(f"{path.stem}_test{path.suffix}"))
    else:
        name += "_test"
    return parsed.set(database=name).render_as_string(hide_password=False)


def beside(url: str, name: str) -> str:
    """The URL of the database ``name`` on ``url``'s server, or of the file ``name.db`` beside."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = str(Path(parsed.database or "").with_name(f"{name}.db"))
    return parsed.set(database=name).render_as_string(hide_password=False)


def on_server(url: str, statement: str) -> list[Any]:
    """Run ``statement`` in autocommit on the server of ``url``, outside any database of it.

    PostgreSQL: on its ``postgres`` database; MariaDB/MySQL: on a connection naming none.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        server = parsed.set(database="postgres")
    else:
        server = parsed._replace(database=None)

    async def execute() -> list[Any]:
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(statement))
                return list(result) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(execute())


def database_exists(url: str) -> bool:
    """Whether the database (or SQLite file) ``url`` names exists, seen from outside."""
    parsed = make_url(url)
    name = parsed.database or ""
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return Path(name).exists()
    if backend == "postgresql":
        query = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
    else:
        query = f"SELECT 1 FROM information_schema.schemata WHERE schema_name = '{name}'"
    return bool(on_server(url, query))


def create_database(url: str) -> None:
    """Make the database ``url`` names, as someone other than dbscope would."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").touch()
    else:
        on_server(url, f"CREATE DATABASE {parsed.database}")


def drop_database(url: str) -> None:
    """Remove the database (or the SQLite file and its journals) ``url`` names, if it exists."""
    parsed = make_url(url)
    name = parsed.database or ""
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(name + suffix).unlink(missing_ok=True)
    elif backend == "postgresql":
        on_server(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    else:
        on_server(url, f"DROP DATABASE IF EXISTS {name}")


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in one transaction in the database at ``url``, and commit."""

    async def run_all() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run_all())


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in the database at ``url``, in id order."""

    async def select_all() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))
                return [tuple(row) for row in result]
        finally:
            await engine.dispose()

    return asyncio.run(select_all())


def table_names(url: str, prefix: str = "ptp_") -> set[str]:
    """The tables named ``prefix*`` in the database at ``url``, seen from our own connection."""

    async def names() -> set[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                found = await connection.run_sync(lambda c: inspect(c).get_table_names())
        finally:
            await engine.dispose()
        return {name for name in found if name.startswith(prefix)}

    return asyncio.run(names())


def drop_tables(url: str, *names: str) -> None:
    """Drop the given tables if they exist (a kept or half-made project's)."""
    execute(url, *(f"DROP TABLE IF EXISTS {name}" for name in names))


# The app's table of items, with a row of its own, as in a database that holds data.
ITEMS_WITH_A_ROW = (
    "CREATE TABLE ptp_items (id INTEGER PRIMARY KEY, name VARCHAR(50))",
    "INSERT INTO ptp_items (id, name) VALUES (1, 'kept')",
)


def run_database_made_elsewhere(url: str) -> str:
    """The URL of ``url``'s run database, made as someone other than dbscope would, holding
    the app's table ``ptp_items`` with its one row."""
    own = run_database(url)
    create_database(own)
    execute(own, *ITEMS_WITH_A_ROW)
    return own


def column_types(url: str, table: str) -> dict[str, str]:
    """Each column of ``table`` in the database at ``url`` and its type, as the server
    reports it (``VARCHAR(80)``), seen from our own connection."""

    async def types() -> dict[str, str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                columns = await connection.run_sync(lambda c: inspect(c).get_columns(table))
                dialect = connection.dialect
        finally:
            await engine.dispose()
        return {column["name"]: column["type"].compile(dialect) for column in columns}

    return asyncio.run(types())
