"""A project made with Alembic's pyproject templates (`alembic init -t pyproject_async`): the
scripts' settings (``script_location``...) in pyproject.toml's ``[tool.alembic]``, beside an
alembic.ini of the URL and logging only. Alembic's command line reads both; so do
``upgrade()``, ``status()``, ``at_head()`` and ``dbscope check``.
"""

from __future__ import annotations

from pathlib import Path

from dbscope import Database
from dbscope.alembic import MigrationStatus, status, upgrade
from tests.alembic_projects import write_project
from tests.cli_runs import dbscope, output_of

pytest_plugins = ["tests.alembic_fixtures"]

PYPROJECT = """
[project]
name = "notes"
version = "0.1"

[tool.alembic]
script_location = "%(here)s/migrations"
prepend_sys_path = [
    "."
]
"""


def pyproject_project(directory: Path) -> Path:
    """The alembic.ini of a project whose [alembic] section is empty, its scripts named by
    the pyproject.toml beside it."""
    path = write_project(directory)
    path.write_text("[alembic]\n")
    (directory / "pyproject.toml").write_text(PYPROJECT)
    return path


async def test_upgrade_and_at_head_read_the_scripts_named_in_pyproject_toml(
    tmp_path: Path, clean: str
) -> None:
    """upgrade(db) and at_head(db) of such an alembic.ini find the scripts through
    pyproject.toml (before: 'No script_location key found in configuration')."""
    project = pyproject_project(tmp_path)
    async with Database(clean) as db:
        await upgrade(db, config=project)
        found = await status(db, config=project)
    assert found == MigrationStatus(current=("0001",), heads=("0001",))


async def test_check_of_a_pyproject_project_says_at_head(tmp_path: Path, clean: str) -> None:
    """`dbscope migrate upgrade head` then `dbscope check` in such a project's directory: at
    head, exit code 0 (before: a setting error, exit code 2, after a migration that worked)."""
    pyproject_project(tmp_path)
    environment = {"DATABASE_URL": clean}
    migrated = await dbscope("migrate", "upgrade", "head", environment=environment, cwd=tmp_path)
    assert migrated.returncode == 0, output_of(migrated)
    checked = await dbscope("check", environment=environment, cwd=tmp_path)
    assert checked.returncode == 0, output_of(checked)
    assert "migrations: at head (0001; alembic.ini)" in checked.stdout.decode()


async def test_migrate_takes_pyproject_toml_named_with_c_as_alembic_does(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`dbscope migrate -c pyproject.toml -c alembic.ini` runs, as `alembic` does with them
    (before: pyproject.toml refused as no INI file, exit code 2)."""
    project = pyproject_project(tmp_path)
    named = ("-c", str(tmp_path / "pyproject.toml"), "-c", str(project))
    environment = {"DATABASE_URL": sqlite_url}
    migrated = await dbscope("migrate", *named, "upgrade", "head", environment=environment)
    assert migrated.returncode == 0, output_of(migrated)
    current = await dbscope("migrate", *named, "current", environment=environment)
    assert "0001 (head)" in current.stdout.decode(), output_of(current)
