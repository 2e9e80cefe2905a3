"""The files a `dbscope` command line names: an alembic.ini (`-c`) or a dotenv file
(`--env-file`) that is not there or not readable as what it must be (an INI file, UTF-8
text), and an alembic.ini whose URL configparser cannot read.

Each fails before anything runs, with one line and exit code 2, naming the file as given and
the fix, never a password (encoded or not). Run as subprocesses with nothing but the settings
each test gives (tests/cli_runs.py); the rest of the command in tests/test_cli.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.alembic_projects import write_project
from tests.cli_runs import SECRET, dbscope, nowhere, output_of
from tests.server import free_port

# A password with '#', '@', ':' and '/', percent-encoded in the URL as the docs advise.
ENCODED: Final = "Zq9%23pW%40rd%3A1%2Fx"
# What must never be printed: the password, decoded or encoded, and pieces of either.
PASSWORD_PIECES: Final = ("Zq9", "pW%40rd", "pW@rd", "%23pW", "rd%3A1", "rd:1/x")


def encoded_url(port: int) -> str:
    """A PostgreSQL URL with the percent-encoded password, at ``port``."""
    return f"postgresql+asyncpg://u:{ENCODED}@127.0.0.1:{port}/db"


def assert_no_password(output: str) -> None:
    """No piece of the encoded password, nor of the decoded one, is in ``output``."""
    assert not [piece for piece in PASSWORD_PIECES if piece in output], output


def one_error_line(done: subprocess.CompletedProcess[bytes], start: str) -> str:
    """The one line on stderr of a run that exited 2, which begins with ``start``."""
    assert done.returncode == 2, output_of(done)
    errors = done.stderr.decode().splitlines()
    assert len(errors) == 1, errors
    assert errors[0].startswith(start), errors[0]
    return errors[0]


# -- a '%' in alembic.ini's sqlalchemy.url -----------------------------------------------------


async def test_migrate_with_an_unescaped_percent_in_sqlalchemy_url_exits_2_naming_file_and_key(
    tmp_path: Path,
) -> None:
    """An encoded password's '%' in alembic.ini: one line saying to write '%%', no value."""
    write_project(tmp_path, ini=f"sqlalchemy.url = {encoded_url(5432)}\n")
    done = await dbscope("migrate", "-c", "alembic.ini", "current", environment={}, cwd=tmp_path)
    error = one_error_line(done, "dbscope: error: 'alembic.ini': sqlalchemy.url in [alembic]")
    assert "each '%' of the URL" in error
    assert "must be written '%%'" in error
    assert "Traceback" not in output_of(done)
    assert "InterpolationSyntaxError" not in output_of(done)
    assert_no_password(output_of(done))


async def test_migrate_with_each_percent_doubled_reads_the_url_and_hides_the_password(
    tmp_path: Path,
) -> None:
    """The fix the message gives works: '%%' read as '%', the server's absence reported."""
    port = free_port()
    doubled = encoded_url(port).replace("%", "%%")
    write_project(tmp_path, ini=f"sqlalchemy.url = {doubled}\n")
    done = await dbscope("migrate", "-c", "alembic.ini", "current", environment={}, cwd=tmp_path)
    assert done.returncode == 1, output_of(done)
    assert f"Could not connect to postgresql at 127.0.0.1:{port}" in done.stderr.decode()
    assert_no_password(output_of(done))


async def test_check_of_an_alembic_ini_with_an_encoded_password_shows_none_of_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`dbscope check -c` of alembic.ini's URL with a single '%': its migrations line says
    to write '%%' (migrate could not read it either), naming no part of the password."""
    write_project(tmp_path, ini=f"sqlalchemy.url = {encoded_url(5432)}\n")
    environment = {"DATABASE_URL": sqlite_url}
    done = await dbscope("check", "-c", "alembic.ini", environment=environment, cwd=tmp_path)
    without_url = await dbscope("check", "-c", "alembic.ini", environment={}, cwd=tmp_path)
    assert done.returncode == 1, output_of(done)
    assert "migrations: FAIL 'alembic.ini': sqlalchemy.url in [alembic]" in done.stdout.decode()
    assert_no_password(output_of(done))
    one_error_line(without_url, "dbscope: error: Invalid database settings: No database")
    assert_no_password(output_of(without_url))


# -- an alembic.ini that is not there ----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("migrate", "-c", "/nonexistent.ini", "current"), ("check", "-c", "/nonexistent.ini")],
)
async def test_a_missing_alembic_ini_exits_2_with_one_message_for_migrate_and_check(
    command: tuple[str, ...],
) -> None:
    """-c naming no file: the same line for both, before connecting to the server."""
    done = await dbscope(*command, environment={"DATABASE_URL": nowhere()})
    error = one_error_line(
        done, "dbscope: error: The Alembic configuration '/nonexistent.ini' does not exist"
    )
    assert error.endswith(
        "give the path of your alembic.ini (create one with 'alembic init -t async migrations')."
    )
    assert done.stdout == b""
    assert SECRET not in output_of(done)


@pytest.mark.parametrize("command", [("migrate", "current"), ("check",)])
async def test_an_alembic_ini_named_by_alembic_config_that_is_missing_exits_2_naming_it(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """$ALEMBIC_CONFIG naming no file: refused by both, the variable named. Before, `check`
    said "no alembic.ini here" and passed, and `migrate` printed Alembic's missing key."""
    environment = {"DATABASE_URL": nowhere(), "ALEMBIC_CONFIG": "/nonexistent.ini"}
    done = await dbscope(*command, environment=environment, cwd=tmp_path)
    error = one_error_line(
        done,
        "dbscope: error: The Alembic configuration '/nonexistent.ini' that ALEMBIC_CONFIG "
        "names does not exist",
    )
    assert error.endswith("set ALEMBIC_CONFIG to the path of your alembic.ini, or unset it.")
    assert SECRET not in output_of(done)


@pytest.mark.parametrize(
    "command",
    [
        ("check", "-c", "garbage.ini"),
        ("migrate", "-c", "garbage.ini", "current"),
        ("check",),  # ./alembic.ini, found without -c
        ("migrate", "current"),
    ],
)
async def test_an_alembic_ini_that_is_not_an_ini_file_exits_2_naming_it_and_not_its_lines(
    command: tuple[str, ...], tmp_path: Path, sqlite_url: str
) -> None:
    """No section header: one line naming the file and the line's number, never its text.
    Before, configparser's MissingSectionHeaderError in a traceback, quoting the line."""
    name = "garbage.ini" if "-c" in command else "alembic.ini"
    (tmp_path / name).write_text(f"sqlalchemy.url = {encoded_url(5432)}\n[alembic]\n")
    done = await dbscope(*command, environment={"DATABASE_URL": sqlite_url}, cwd=tmp_path)
    error = one_error_line(
        done,
        f"dbscope: error: The Alembic configuration {name!r} cannot be read as an INI file: "
        "line 1 comes before any section header such as [alembic]; correct it, or give the path",
    )
    assert "Traceback" not in error
    assert done.stdout == b""
    assert_no_password(output_of(done))


@pytest.mark.parametrize("command", [("check", "-c", "."), ("migrate", "-c", ".", "current")])
async def test_an_alembic_ini_that_is_a_directory_exits_2_saying_so(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """-c naming a directory: said to be a directory, not "does not exist"."""
    done = await dbscope(*command, environment={"DATABASE_URL": nowhere()}, cwd=tmp_path)
    one_error_line(
        done, "dbscope: error: The Alembic configuration '.' is a directory, not a file; give"
    )


@pytest.mark.parametrize("location", ["", "script_location = nowhere\n"])
async def test_check_of_an_alembic_ini_without_its_scripts_exits_2_in_one_line(
    location: str, tmp_path: Path, sqlite_url: str
) -> None:
    """No script_location, or one naming no directory: one line in Alembic's words and the
    fix, exit 2 (before, Alembic's CommandError in a traceback, exit 1)."""
    (tmp_path / "alembic.ini").write_text(f"[alembic]\n{location}")
    environment = {"DATABASE_URL": sqlite_url}
    done = await dbscope("check", "-c", "alembic.ini", environment=environment, cwd=tmp_path)
    error = one_error_line(
        done, "dbscope: error: The Alembic configuration 'alembic.ini' names no migration scripts"
    )
    assert "Set script_location" in error


async def test_migrate_init_may_name_an_alembic_ini_that_is_not_there_yet(tmp_path: Path) -> None:
    """`init` writes the file -c names: it is not refused for being missing."""
    arguments = ("-c", "alembic.ini", "init", "-t", "async", "migrations")
    done = await dbscope("migrate", *arguments, environment={}, cwd=tmp_path)
    assert done.returncode == 0, output_of(done)
    assert (tmp_path / "alembic.ini").is_file()
    assert (tmp_path / "migrations" / "env.py").is_file()


async def test_migrate_without_an_alembic_ini_exits_2_saying_where_it_looked_and_how_to_make_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    """No -c, no $ALEMBIC_CONFIG, no ./alembic.ini: the file looked for, the directory, and
    `alembic init`. Before, Alembic's "No 'script_location' key found in configuration"."""
    done = await dbscope(
        "migrate", "current", environment={"DATABASE_URL": sqlite_url}, cwd=tmp_path
    )
    error = one_error_line(
        done,
        f"dbscope: error: No Alembic configuration: there is no 'alembic.ini' (looked for in "
        f"{tmp_path}), nor a [tool.alembic] table in 'pyproject.toml'. Name your alembic.ini "
        "with -c",
    )
    assert "'alembic init -t async migrations'" in error
    assert "script_location' key found" not in error


async def test_migrate_with_an_alembic_ini_without_script_location_exits_2_saying_so(
    tmp_path: Path, sqlite_url: str
) -> None:
    """An alembic.ini without script_location: named, with the line to add."""
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    done = await dbscope(
        "migrate", "current", environment={"DATABASE_URL": sqlite_url}, cwd=tmp_path
    )
    one_error_line(
        done,
        "dbscope: error: 'alembic.ini' sets no script_location in its [alembic] section, the "
        "directory of the migrations' env.py: add one ('script_location = %(here)s/migrations')",
    )


# -- a dotenv file that is not there -----------------------------------------------------------


@pytest.mark.parametrize("command", [("check",), ("migrate", "current")])
async def test_a_missing_env_file_exits_2_naming_it(command: tuple[str, ...]) -> None:
    """--env-file naming no file is refused, not read as an empty file."""
    name, *rest = command
    done = await dbscope(name, "--env-file", "/nonexistent.env", *rest, environment={})
    error = one_error_line(done, "dbscope: error: The env file '/nonexistent.env' does not exist")
    assert "give the path of an existing dotenv file, or name none" in error


async def test_an_env_file_that_is_a_directory_exits_2(tmp_path: Path) -> None:
    """--env-file naming a directory: not a file, said so."""
    done = await dbscope("check", "--env-file", str(tmp_path), environment={})
    one_error_line(done, f"dbscope: error: The env file {str(tmp_path)!r} is not a file")


@pytest.mark.parametrize("command", [("check",), ("migrate", "current")])
async def test_an_env_file_that_is_not_utf8_exits_2_naming_it(
    command: tuple[str, ...], tmp_path: Path, sqlite_url: str
) -> None:
    """--env-file with a Latin-1 byte: one line, not UnicodeDecodeError's traceback."""
    (tmp_path / "latin1.env").write_bytes(f"DATABASE_URL={sqlite_url}\nX=\xff\n".encode("latin-1"))
    name, *rest = command
    done = await dbscope(name, "--env-file", "latin1.env", *rest, environment={}, cwd=tmp_path)
    error = one_error_line(done, "dbscope: error: The env file 'latin1.env' is not UTF-8 text")
    assert error.endswith("save it as UTF-8, or name none to read the environment alone.")


async def test_an_env_file_that_is_there_is_read(tmp_path: Path, sqlite_url: str) -> None:
    """--env-file with DATABASE_URL in it: the check runs on that database."""
    (tmp_path / "app.env").write_text(f"DATABASE_URL={sqlite_url}\n")
    done = await dbscope("check", "--env-file", "app.env", environment={}, cwd=tmp_path)
    assert done.returncode == 0, output_of(done)
    assert "SQLite" in done.stdout.decode()
