"""The app's tables in the test database: made once per run, and never someone else's.

Before it makes the tables, the plugin looks for the app's tables (those of
``dbscope_metadata``; with Alembic migrations alone, any table) already in the test
database. Unless an earlier run of dbscope made them and kept them for this one
(``--dbscope-reuse-db``), it did not make them, so it refuses to run on them: the tests
would read and write their rows. ``--dbscope-use-existing-tables`` lets it run on them all
the same. Either way it drops only the tables it made itself, and only when it does not drop
the whole database instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema

from dbscope import Database, testing
from dbscope._pytest_plugin._servers import in_new_loop

T = TypeVar("T")


@dataclass(frozen=True)
class Tables:
    """The app's tables, as the settings define them, in the database at ``url``."""

    url: str
    metadata: MetaData | None
    alembic_config: Path | None

    def existing(self) -> list[str]:
        """The app's tables the database has already, sorted."""
        present = self.names()
        if self.metadata is None:
            return sorted(present)
        return sorted(present & set(self.metadata.tables))

    def names(self) -> set[str]:
        """Every table of the database in the schemas the app uses, as MetaData keys them."""
        schemas: set[str | None] = {None}
        if self.metadata is not None:
            schemas = _schemas(self.metadata.tables.values())
        return self._on_connection(lambda connection: _table_names(connection, schemas))

    def create(self, *, with_schemas: bool) -> set[str]:
        """Make the tables that are missing (and, if asked, their schemas); return their names.

        Schemas are made on PostgreSQL only, where a schema lives inside the database.
        """
        before = self.names()
        if with_schemas and self.metadata is not None:
            self._on_connection(lambda connection: _create_schemas(connection, self.metadata))
        testing.create_tables(self.url, metadata=self.metadata, alembic_config=self.alembic_config)
        return self.names() - before

    def drop(self, made: set[str]) -> bool:
        """Drop the tables in ``made``; False if they must stay (made by migrations).

        Alembic migrations cannot be undone table by table, and a downgrade to ``base``
        would drop tables this run did not make, so their tables are kept.
        """
        metadata = self.metadata
        if self.alembic_config is not None or metadata is None:
            return False
        tables = [table for key, table in metadata.tables.items() if key in made]
        if tables:
            self._on_connection(lambda connection: metadata.drop_all(connection, tables=tables))
        return True

    def _on_connection(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction on the database, in a loop and thread of its own."""

        async def run() -> T:
            database = Database(self.url, poolclass=NullPool, pool_pre_ping=False)
            async with database, database.engine.begin() as connection:
                return await connection.run_sync(work)

        return in_new_loop(run)


def refusal(label: str, found: list[str]) -> str:
    """Why the plugin will not run on ``found``, tables of the app it did not make."""
    return (
        f"the test database {label} already has the app's tables {', '.join(found)}, which "
        "dbscope did not make; the tests would read and write their rows. Drop those tables "
        "(or the database), or point dbscope_url elsewhere; or, to run on them all the same, "
        "pass --dbscope-use-existing-tables (dbscope_use_existing_tables = true): dbscope "
        "never drops a table it did not make."
    )


def _schemas(tables: Iterable[Any]) -> set[str | None]:
    return {table.schema for table in tables}


def _table_names(connection: Connection, schemas: set[str | None]) -> set[str]:
    inspector = inspect(connection)
    known = set(inspector.get_schema_names())
    names: set[str] = set()
    for schema in schemas:
        if schema is None:
            names.update(inspector.get_table_names())
        elif schema in known:
            names.update(f"{schema}.{name}" for name in inspector.get_table_names(schema))
    return names


def _create_schemas(connection: Connection, metadata: MetaData | None) -> None:
    if connection.dialect.name != "postgresql" or metadata is None:
        return
    for schema in sorted(filter(None, _schemas(metadata.tables.values()))):
        connection.execute(CreateSchema(schema, if_not_exists=True))
