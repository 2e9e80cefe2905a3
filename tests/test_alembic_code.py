"""dbscope.alembic from code, inside the test's running event loop: upgrade(), at_head()
and status() on a Database's own connection, Alembic's commands called from async code, what
the module exports and leaves unimported; and docs/alembic.md's env.py and functions, as
written.

Each test's project (tmp_path, tests/alembic_projects.py) has one migration, which makes
``ptp_migrated``; on SQLite, PostgreSQL (both drivers) and MariaDB. Under Alembic's own
command line: tests/test_alembic.py.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

import dbscope.alembic
from dbscope import ConfigurationError, Database
from tests.alembic_projects import TABLE, tables_in, upgrade_head, version_of, write_project
from tests.documented import block_containing, run_block
from tests.helpers import imported_by

pytest_plugins = ["tests.alembic_fixtures"]


# -- from code, inside the running loop --------------------------------------------------------


async def test_upgrade_inside_a_running_loop_brings_the_database_to_head(
    project: Path, clean: str
) -> None:
    """await upgrade(db) migrates on db's connection; at_head() is False before, True after."""
    async with Database(clean) as db:
        before = await dbscope.alembic.at_head(db, config=project)
        await dbscope.alembic.upgrade(db, config=project)
        after = await dbscope.alembic.status(db, config=project)
    assert before is False
    assert after == dbscope.alembic.MigrationStatus(current=("0001",), heads=("0001",))
    assert after.at_head


async def test_upgrade_of_a_database_with_a_schema_migrates_in_that_schema(
    project: Path, postgres_url: str, schema: str
) -> None:
    """Database(url, schema=...) gets its version table and tables in that schema."""
    async with Database(postgres_url, schema=schema) as db:
        await dbscope.alembic.upgrade(db, config=project)
        at_head = await dbscope.alembic.at_head(db, config=project)
    assert at_head
    assert await tables_in(postgres_url, schema) == {"alembic_version", TABLE}


async def test_without_config_the_functions_use_the_working_directorys_alembic_ini(
    project: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without config= (and no $ALEMBIC_CONFIG), ./alembic.ini is the one migrated."""
    monkeypatch.chdir(project.parent)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    async with Database(sqlite_url) as db:
        await dbscope.alembic.upgrade(db)
        at_head = await dbscope.alembic.at_head(db)
        status = await dbscope.alembic.status(db)
    assert at_head
    assert status.current == ("0001",)


async def test_status_reads_the_migration_scripts_off_the_event_loop(
    project: Path, sqlite_url: str
) -> None:
    """status() and at_head() import each script once per call, in a thread, not the loop's
    (200 scripts held the loop 52-62 ms a call)."""
    readers = project.parent / "readers"
    (project.parent / "migrations" / "versions" / "0002_reader.py").write_text(
        "import threading\n"
        "from pathlib import Path\n\n"
        'revision = "0002"\n'
        'down_revision = "0001"\n'
        f"with Path({str(readers)!r}).open('a') as readers:\n"
        "    readers.write(f'{threading.get_ident()}\\n')\n"
    )
    async with Database(sqlite_url) as db:
        status = await dbscope.alembic.status(db, config=project)
        at_head = await dbscope.alembic.at_head(db, config=project)
    loaded_in = readers.read_text().split()
    assert (status.heads, at_head) == (("0002",), False)
    assert len(loaded_in) == 2
    assert str(threading.get_ident()) not in loaded_in


async def test_a_missing_alembic_ini_is_a_configuration_error_naming_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    """upgrade() with an alembic.ini that is not there names the path given."""
    missing = tmp_path / "nowhere" / "alembic.ini"
    async with Database(sqlite_url) as db:
        with pytest.raises(ConfigurationError, match=r"nowhere/alembic\.ini' does not exist"):
            await dbscope.alembic.upgrade(db, config=missing)


def test_config_path_required_gives_a_file_that_is_there_and_refuses_one_that_is_not(
    project: Path, tmp_path: Path
) -> None:
    """config_path(path, required=True): the path of a file; else the functions' message."""
    missing = tmp_path / "missing.ini"
    assert dbscope.alembic.config_path(project, required=True) == project
    assert dbscope.alembic.config_path(missing) == missing  # not required: not checked
    with pytest.raises(ConfigurationError, match=r"missing\.ini' does not exist; give the path"):
        dbscope.alembic.config_path(missing, required=True)


def test_command_line_refuses_an_alembic_ini_that_is_not_there(tmp_path: Path) -> None:
    """command_line(["-c", missing, ...]) names the file, instead of Alembic's missing key."""
    missing = str(tmp_path / "missing.ini")
    with pytest.raises(ConfigurationError) as refused:
        dbscope.alembic.command_line(["-c", missing, "current"])
    assert str(refused.value).startswith(
        f"The Alembic configuration {missing!r} does not exist; give the path of your alembic.ini"
    )


async def test_a_synchronous_alembic_command_called_inside_the_loop_runs(
    project: Path, clean: str
) -> None:
    """command.upgrade() from async code (no shared connection) runs its migrations."""
    config = Config(str(project))
    config.set_main_option("sqlalchemy.url", clean)
    command.upgrade(config, "head")
    assert await version_of(clean) == ["0001"]


async def test_the_cookbooks_shared_connection_runs_in_the_callers_transaction(
    project: Path, postgres_url: str
) -> None:
    """On a shared connection in a transaction, the caller's rollback undoes the migration."""

    def upgrade_on(connection: Connection) -> None:
        config = Config(str(project))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with Database(postgres_url) as db, db.engine.connect() as connection:
        await connection.begin()
        await connection.run_sync(upgrade_on)
        inside = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        await connection.rollback()
    assert inside == "0001"
    assert TABLE not in await tables_in(postgres_url, "public")


async def test_an_async_connection_shared_is_refused_with_the_way_to_share_it(
    project: Path, sqlite_url: str
) -> None:
    """An AsyncConnection in config.attributes gets a message naming run_sync."""
    async with Database(sqlite_url) as db, db.engine.connect() as connection:
        config = Config(str(project))
        config.attributes["connection"] = connection
        with pytest.raises(ConfigurationError, match="run_sync"):
            command.upgrade(config, "head")


async def test_upgrade_from_code_leaves_the_applications_logging_alone(
    tmp_path: Path, sqlite_url: str
) -> None:
    """An alembic.ini with logging sections does not replace the root logger's handlers."""
    logging_ini = (
        "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n"
        "[logger_root]\nlevel = DEBUG\nhandlers = console\n"
        "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nformatter = generic\n"
        "[formatter_generic]\nformat = %(message)s\n"
    )
    project = write_project(tmp_path, ini=logging_ini)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    async with Database(sqlite_url) as db:
        await dbscope.alembic.upgrade(db, config=project)
    assert (root.handlers, root.level) == (handlers, level)


async def test_without_alembic_the_functions_name_the_install_command(
    project: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Alembic not importable, upgrade() says: pip install 'dbscope[alembic]'."""
    monkeypatch.setitem(sys.modules, "alembic", None)
    async with Database(sqlite_url) as db:
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'dbscope\[alembic\]'"):
            await dbscope.alembic.upgrade(db, config=project)


def test_dbscope_alembic_exports_exactly_its_documented_names() -> None:
    """dbscope.alembic's __all__ is pinned; each name is documented."""
    assert dbscope.alembic.__all__ == [
        "MigrationStatus",
        "at_head",
        "command_line",
        "config_path",
        "other_database",
        "run_migrations",
        "status",
        "upgrade",
    ]
    assert all(getattr(dbscope.alembic, name).__doc__ for name in dbscope.alembic.__all__)


def test_importing_dbscope_and_its_alembic_module_does_not_import_alembic() -> None:
    """`import dbscope`, dbscope.alembic and the command leave Alembic unimported."""
    assert imported_by("import dbscope, dbscope.alembic, dbscope._cli", "alembic") == []


# -- the docs ----------------------------------------------------------------------------------


@pytest.fixture
def documented_project(tmp_path: Path) -> Iterator[Path]:
    """A project whose env.py is the guide's, with a ``myapp.models`` beside it."""
    env = block_containing("docs/alembic.md", "run_migrations(Base.metadata)")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    models = (
        "from sqlalchemy.orm import DeclarativeBase\n\n\nclass Base(DeclarativeBase):\n    pass\n"
    )
    (tmp_path / "myapp" / "models.py").write_text(models)
    yield write_project(tmp_path, env=env)
    for name in [name for name in sys.modules if name.split(".")[0] == "myapp"]:
        del sys.modules[name]


async def test_the_guides_env_py_migrates_with_only_database_url(
    documented_project: Path, clean: str
) -> None:
    """docs/alembic.md's env.py, as written, under `alembic upgrade head`."""
    await upgrade_head(documented_project, {"DATABASE_URL": clean})
    assert await version_of(clean) == ["0001"]


async def test_the_guides_migrate_function_upgrades_and_says_at_head(
    documented_project: Path, clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/alembic.md's migrate() from code, in the project's directory."""
    monkeypatch.chdir(documented_project.parent)
    monkeypatch.setenv("DATABASE_URL", clean)
    namespace = run_block(block_containing("docs/alembic.md", "async def migrate"), clean)
    assert await namespace["migrate"]() is True
    assert await version_of(clean) == ["0001"]


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
async def test_the_guides_shared_connection_upgrades_in_the_callers_transaction(
    documented_project: Path, clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/alembic.md's upgrade_in(connection) migrates; the caller commits."""
    monkeypatch.chdir(documented_project.parent)
    namespace = run_block(block_containing("docs/alembic.md", "def upgrade_in"), clean)
    async with Database(clean) as db, db.engine.begin() as connection:
        assert isinstance(connection, AsyncConnection)
        await namespace["upgrade_in"](connection)
    assert await version_of(clean) == ["0001"]


@pytest.mark.parametrize(
    ("app", "ini", "another"),
    [
        ("postgresql+asyncpg://u:p@127.0.0.1/db", "postgresql://u:p@localhost:5432/db", False),
        (
            "postgresql+asyncpg://u@127.0.0.1:5432/db",
            "postgresql+psycopg://u@/db?host=127.0.0.1",
            False,
        ),
        ("mysql+asyncmy://root@127.0.0.1:3306/db", "mariadb+asyncmy://root@localhost/db", False),
        ("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite:///./app.db", False),
        ("postgresql+asyncpg://u@127.0.0.1/db", "postgresql://u@127.0.0.1:6543/db", True),
        ("mysql+asyncmy://root@127.0.0.1/db", "mysql+asyncmy://root@127.0.0.1:3307/db", True),
        ("postgresql+asyncpg://u@127.0.0.1/db", "postgresql://u@127.0.0.1/other", True),
        ("postgresql+asyncpg://u@127.0.0.1/db", "postgresql://u@10.0.0.7/db", True),
    ],
)
def test_other_database_is_none_for_the_apps_own_however_spelled(
    tmp_path: Path, app: str, ini: str, another: bool
) -> None:
    """alembic.ini's sqlalchemy.url is the app's database whatever its spelling (localhost
    for 127.0.0.1, the default port written or not, ?host=, mariadb:// for mysql://, a path
    through ./); another port, database or host is another database (before: the first four
    were failed, and an app URL without a port matched any port)."""
    project = write_project(tmp_path, ini=f"sqlalchemy.url = {ini}\n")
    found = dbscope.alembic.other_database(Database(app), config=project)
    assert (found is not None) is another


def test_command_line_refuses_settings_that_are_none_and_one_string(sqlite_url: str) -> None:
    """A Database for its settings was ignored, and env.py migrated whatever the environment
    named; one string was read letter by letter ("invalid choice: 'c'")."""
    db = Database(sqlite_url)
    given: object = db
    with pytest.raises(ConfigurationError, match=r"takes a DatabaseSettings \(db\.settings\)"):
        dbscope.alembic.command_line(["current"], settings=given)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"as a list, e\.g\. \['current'\]"):
        dbscope.alembic.command_line("current")
