"""A migration run that fails, or dies, part way: what it leaves, and that the next run works.

On PostgreSQL and SQLite the run is one transaction: nothing of it stays. On MariaDB and
MySQL, whose DDL commits by itself, each revision is a transaction of its own, recorded in
the version table as it ends (Alembic's own way there): the revisions before the one that
failed stay applied and recorded, so that the next run starts at the failed one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alembic_projects import TABLE, alembic, version_of, write_project
from tests.helpers import admin, without_tables

# Fails at its first statement, before any DDL of its own has committed anything.
FAILING_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("UPDATE ptp_no_such_table SET id = 1")
    op.create_table("ptp_second", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("ptp_second")
"""
MENDED_MIGRATION = FAILING_MIGRATION.replace(
    'op.execute("UPDATE ptp_no_such_table SET id = 1")', "pass"
)


@pytest.fixture
def clean(database_url: str) -> Iterator[str]:
    """The database URL, without this file's tables and the version table."""
    yield from without_tables(database_url, "ptp_second", TABLE, "alembic_version")


async def test_a_run_failing_in_its_second_revision_leaves_a_database_the_next_run_migrates(
    tmp_path: Path, clean: str, db_backend: str
) -> None:
    """`upgrade head` from nothing, the second revision failing: PostgreSQL and SQLite keep
    nothing of the run; MariaDB keeps the first revision's table and records it (before: the
    table stayed, unrecorded, and every later run failed creating it again). Once the second
    revision is mended, the next run brings the database to head."""
    project = write_project(tmp_path)
    second = tmp_path / "migrations" / "versions" / "0002_second.py"
    second.write_text(FAILING_MIGRATION)
    environment = {"DATABASE_URL": clean}
    failed = await alembic(project, "upgrade", "head", environment=environment)
    assert failed.returncode == 1
    assert "ptp_no_such_table" in failed.stderr.decode()
    if db_backend == "asyncmy":
        assert await version_of(clean) == ["0001"]
        assert await has_table(clean, TABLE)
    else:
        assert not await has_table(clean, TABLE)
        assert not await has_table(clean, "alembic_version")
    second.write_text(MENDED_MIGRATION)
    mended = await alembic(project, "upgrade", "head", environment=environment)
    assert mended.returncode == 0, mended.stderr.decode()
    assert await version_of(clean) == ["0002"]


async def has_table(database_url: str, table: str) -> bool:
    """Whether the database has ``table``."""
    async with admin(database_url) as connection:
        return bool(await connection.run_sync(lambda c: c.dialect.has_table(c, table)))
