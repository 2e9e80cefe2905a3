"""Whether the tables in a test database kept by an earlier run are still the app's.

A run that makes the app's tables from its metadata keeps their fingerprint with dbscope's
mark on the database (``dbscope._dialects``: a comment, an SQLite header field): a hash of
the DDL the metadata compiles to on that dialect, every CREATE TABLE (columns, types,
constraints) and CREATE INDEX, and each column's type as SQLAlchemy writes it (an enum's
values, which PostgreSQL keeps in a type of its own). A later run that would reuse the
database compares the fingerprint with its own metadata's, which costs no statement (the
mark is read anyway); only when they differ does it reflect the tables, to say what changed,
before the database is made anew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, MetaData, Table, inspect
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeEngine

from dbscope import _dialects


def changed_tables(
    found: _dialects.Found,
    expected: MetaData,
    url: URL,
    rules: _dialects.Backend,
    on_connection: Callable[[Callable[[Connection], str]], str],
) -> str | None:
    """What changed in ``expected``'s tables since an earlier run made them in the kept
    database at ``url``, whose mark it ``found``; None if they are the same."""
    if found.tables == fingerprint(expected, url, rules.fingerprint_digits):
        return None
    if found.tables is None:
        # Kept by a dbscope that kept none, or left before its tables were made.
        return "it keeps no fingerprint of the tables made in it"
    return on_connection(lambda connection: first_difference(connection, expected))


def mark_tables(
    metadata: MetaData,
    url: URL,
    rules: _dialects.Backend,
    on_connection: Callable[[Callable[[Connection], None]], None],
) -> None:
    """Keep the fingerprint of ``metadata``'s tables, just made in the run's database at
    ``url``, with its mark, for the next run that would reuse it (:func:`changed_tables`)."""
    digest = fingerprint(metadata, url, rules.fingerprint_digits)
    on_connection(lambda connection: rules.mark_tables(connection, digest))


def fingerprint(metadata: MetaData, url: URL, digits: int) -> str:
    """``digits`` hex digits of the hash of the DDL ``metadata`` compiles to on ``url``'s
    dialect: any change to a table's columns, types, constraints or indexes changes it."""
    dialect: Dialect = url.get_dialect()()
    digest = hashlib.sha256()
    # By key, not metadata.sorted_tables, which warns of foreign keys in a cycle.
    for table in sorted(metadata.tables.values(), key=lambda table: table.key):
        for part in _definition(table, dialect):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:digits]


def _definition(table: Table, dialect: Dialect) -> Iterator[str]:
    yield str(CreateTable(table).compile(dialect=dialect))
    for index in sorted(table.indexes, key=lambda index: str(index.name)):
        yield str(CreateIndex(index).compile(dialect=dialect))
    for column in table.columns:
        yield repr(column.type)


def first_difference(connection: Connection, metadata: MetaData) -> str:
    """What the tables on ``connection`` differ from ``metadata``'s in, first, in words:
    by Alembic's comparison where Alembic is installed (types, nullability, constraints,
    indexes), else by the tables' and columns' names; if those match, that their types,
    constraints or indexes do not."""
    try:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
    except ImportError:  # an extra: the names alone, by SQLAlchemy's inspector
        found = _by_names(connection, metadata)
    else:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
        found = next(_described(differences, connection.dialect), None)
        found = found or _by_names(connection, metadata)
    return found or "a column's type, a constraint or an index"


def _by_names(connection: Connection, metadata: MetaData) -> str | None:
    inspector = inspect(connection)
    schemas = {table.schema for table in metadata.tables.values()}
    present = {(schema, name) for schema in schemas for name in inspector.get_table_names(schema)}
    for table in sorted(metadata.tables.values(), key=lambda table: table.key):
        if (table.schema, table.name) not in present:
            return f"table {table.key} added"
        kept = {column["name"] for column in inspector.get_columns(table.name, table.schema)}
        added = sorted(set(table.columns.keys()) - kept)
        removed = sorted(kept - set(table.columns.keys()))
        if added or removed:
            what = [f"column {name} added" for name in added]
            what += [f"column {name} removed" for name in removed]
            return f"{table.key}: {', '.join(what)}"
    return None


def _described(differences: Sequence[Any], dialect: Dialect) -> Iterator[str]:
    """Alembic's differences (tuples, or lists of tuples for a column's changes) in words."""
    for difference in differences:
        change = difference[0] if isinstance(difference, list) else difference
        kind, *rest = change
        if kind.startswith("modify_"):  # (kind, schema, table, column, info, old, new)
            _, table, column, _, old, new = rest
            was, now = (_shown(value, dialect) for value in (old, new))
            yield f"{table}.{column}: {kind.removeprefix('modify_')} {was} -> {now}"
        elif kind in ("add_column", "remove_column"):  # (kind, schema, table, column)
            yield f"{rest[1]}: column {rest[2].name} {_done(kind)}"
        elif kind in ("add_table", "remove_table"):
            yield f"table {rest[0].key} {_done(kind)}"
        else:  # add_index, remove_constraint, add_fk...: (kind, the schema item)
            item = rest[0]
            what = _KINDS.get(type(item).__name__, type(item).__name__)
            columns = ", ".join(column.name for column in getattr(item, "columns", ()))
            yield f"{item.table.key}: {what} on ({columns}) {_done(kind)}"


_KINDS = {
    "Index": "index",
    "UniqueConstraint": "unique constraint",
    "ForeignKeyConstraint": "foreign key",
    "CheckConstraint": "check constraint",
}


def _done(kind: str) -> str:
    return "added" if kind.startswith("add_") else "removed"


def _shown(value: object, dialect: Dialect) -> str:
    return value.compile(dialect=dialect) if isinstance(value, TypeEngine) else repr(value)
