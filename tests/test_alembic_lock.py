"""One migration run at a time per database: two `dbscope migrate upgrade head` at once apply
a data migration once, on SQLite, PostgreSQL (both drivers) and MariaDB; a lock not had in
time is an error naming the wait.

The project (tests/alembic_projects.py) gets a second migration that inserts a row, waits a
little for another run to enter it too, then changes the schema (on MariaDB, that DDL commits
the row by itself).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from alembic.util import CommandError
from sqlalchemy.engine import make_url

from dbscope import Database
from dbscope._migration_lock import migrating
from tests.alembic_projects import TABLE, version_of, write_project
from tests.cli_runs import dbscope, output_of
from tests.helpers import count_rows, without_tables
from tests.pgbouncer_service import Bouncers

# Inserts one row; waits up to 3 s for another run to enter this migration too (each run
# leaves a file here), so that two runs not kept apart are in it at once; then DDL.
DATA_MIGRATION = """
import os
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

HERE = Path(__file__).parent


def upgrade():
    op.execute(sa.insert(sa.table("ptp_migrated")))
    (HERE / f"entered-{os.getpid()}").touch()
    deadline = time.monotonic() + 3
    while len(list(HERE.glob("entered-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    op.create_table("ptp_lock_done", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("ptp_lock_done")
"""


@pytest.fixture
def clean(database_url: str) -> Iterator[str]:
    """The database URL, without this file's tables and the version table."""
    yield from without_tables(database_url, "ptp_lock_done", TABLE, "alembic_version")


async def test_two_migrate_runs_at_once_apply_a_data_migration_once(
    tmp_path: Path, clean: str
) -> None:
    """Two `dbscope migrate upgrade head` at once from 0001: one migrates, the other waits for
    its lock, finds the database at head and does nothing; both exit 0, one row inserted."""
    await migrate_twice_at_once(tmp_path, clean, {"DATABASE_URL": clean})


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_two_migrate_runs_through_pgbouncer_apply_a_data_migration_once(
    tmp_path: Path, clean: str, pgbouncer: Bouncers
) -> None:
    """The same through PgBouncer in transaction mode, where a session's lock would stay on
    whichever server connection took it, and another client's session could be that one."""
    driver = make_url(clean).get_driver_name()
    url = pgbouncer.url("transaction", driver, clean)
    await migrate_twice_at_once(tmp_path, clean, {"DATABASE_URL": url, "PGBOUNCER": "transaction"})


# upgrade(db) of a Database whose transactions are REPEATABLE READ: argv[1] the URL, argv[2]
# the alembic.ini.
UPGRADE_AT_REPEATABLE_READ = """
import asyncio, sys
from dbscope import Database
from dbscope.alembic import upgrade

async def main():
    async with Database(sys.argv[1], isolation_level="REPEATABLE READ") as db:
        await upgrade(db, config=sys.argv[2])

asyncio.run(main())
"""


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_two_upgrades_at_repeatable_read_apply_a_data_migration_once(
    tmp_path: Path, clean: str
) -> None:
    """upgrade(db) twice at once, each Database's transactions REPEATABLE READ: the second
    reads the version after the first committed (the lock's transaction is READ COMMITTED)
    and does nothing (before: its snapshot was taken as it asked for the lock, and it failed
    on the first's work)."""
    project = write_project(tmp_path)
    (tmp_path / "migrations" / "versions" / "0002_data.py").write_text(DATA_MIGRATION)
    config = ("-c", str(project))
    first = await dbscope(
        "migrate", *config, "upgrade", "0001", environment={"DATABASE_URL": clean}
    )
    assert first.returncode == 0, output_of(first)
    runs = []

    async def upgrade() -> None:
        command = [sys.executable, "-c", UPGRADE_AT_REPEATABLE_READ, clean, str(project)]
        runs.append(await anyio.run_process(command, check=False))

    async with anyio.create_task_group() as group:
        group.start_soon(upgrade)
        group.start_soon(upgrade)
    assert [run.returncode for run in runs] == [0, 0], [run.stderr.decode() for run in runs]
    assert await count_rows(clean, TABLE) == 1
    assert await version_of(clean) == ["0002"]


async def migrate_twice_at_once(tmp_path: Path, clean: str, environment: dict[str, str]) -> None:
    """Migrate to 0001, then run two `upgrade head` at once with ``environment``: both exit 0,
    the data migration ran once (its row, its file), the database is at 0002."""
    project = write_project(tmp_path)
    (tmp_path / "migrations" / "versions" / "0002_data.py").write_text(DATA_MIGRATION)
    config = ("-c", str(project))
    first = await dbscope("migrate", *config, "upgrade", "0001", environment=environment)
    assert first.returncode == 0, output_of(first)
    runs = []

    async def upgrade() -> None:
        done = await dbscope("migrate", *config, "upgrade", "head", environment=environment)
        runs.append(done)

    async with anyio.create_task_group() as group:
        group.start_soon(upgrade)
        group.start_soon(upgrade)
    assert [run.returncode for run in runs] == [0, 0], [output_of(run) for run in runs]
    assert await count_rows(clean, TABLE) == 1
    assert await version_of(clean) == ["0002"]
    entered = list((tmp_path / "migrations" / "versions").glob("entered-*"))
    assert len(entered) == 1  # the other run found the database at head


async def test_a_migration_lock_held_past_the_wait_is_an_error_naming_the_wait(
    database_url: str,
) -> None:
    """While one run holds the lock, another that waits 0.2 s fails saying it waited for the
    lock another session holds, and migrates nothing; once it is released, it is had."""
    async with Database(database_url) as db:
        async with (
            db.engine.connect() as holder,
            migrating(holder),
            db.engine.connect() as waiter,
        ):
            with pytest.raises(CommandError) as refused:
                async with migrating(waiter, seconds=0.2):
                    pytest.fail("the lock was had while another session held it")
        async with db.engine.connect() as waiter, migrating(waiter, seconds=0.2):
            pass
    message = str(refused.value)
    assert message.startswith("Waited 0.2 s for the lock that keeps two migrations of this")
    assert "another session still holds it" in message


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_migrations_of_two_schemas_take_locks_of_their_own(database_url: str) -> None:
    """POSTGRES_SCHEMA: two schemas of one database migrate side by side, each its lock."""
    async with (
        Database(database_url) as db,
        db.engine.connect() as one,
        migrating(one, schema="tenant_a"),
    ):
        async with db.engine.connect() as other, migrating(other, schema="tenant_b"):
            pass
        async with db.engine.connect() as other:
            with pytest.raises(CommandError):
                async with migrating(other, schema="tenant_a", seconds=0.2):
                    pass
