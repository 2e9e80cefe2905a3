"""`dbscope shell`, run as a subprocess with nothing but the settings each test gives: the
client opened on the database, the password in its environment only.

The test servers trust their users, so a PostgreSQL URL with a password connects whatever the
password; on MariaDB a user of the test's own has one, which the client must be given. The
other commands are in tests/test_cli.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from dbscope import ConfigurationError, Database
from tests.cli_runs import DBSCOPE, SECRET, dbscope, nowhere, output_of
from tests.helpers import SERVER_BACKENDS, admin, without_settings

# The fixtures secret_url and mysql_user_url.
pytest_plugins = ["tests.cli_fixtures"]

CLIENTS = {"psql", "mariadb", "mysql", "sqlite3"}


async def run_shell(
    environment: Mapping[str, str], statements: str, *arguments: str
) -> tuple[list[str], dict[str, str], str, int]:
    """Run `dbscope shell` feeding ``statements``; the client's argv and environment as the
    kernel shows them (/proc), its output, and its exit code."""
    command = [DBSCOPE, "shell", *arguments]
    async with await anyio.open_process(command, env=without_settings(**environment)) as process:
        proc = Path(f"/proc/{process.pid}")
        with anyio.fail_after(30):
            while not (argv := client_argv(proc)):
                assert process.returncode is None, "dbscope shell ended before its client ran"
                await anyio.sleep(0.01)
        pairs = proc.joinpath("environ").read_bytes().decode().split("\0")[:-1]
        variables = dict(pair.split("=", 1) for pair in pairs)
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(statements.encode())
        await process.stdin.aclose()
        output = b"".join([chunk async for chunk in process.stdout]).decode()
        code = await process.wait()
    return argv, variables, output, code


def client_argv(proc: Path) -> list[str]:
    """The argument list of the process ``proc``, once it runs a database client; else [].

    The client's own, not a wrapper's (Debian's psql is a Perl script that runs the real
    one), and not read mid-exec, when the new program is there but its arguments not yet.
    """
    argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")[:-1]
    ready = proc.joinpath("exe").resolve().name in CLIENTS and argv
    return argv if ready and Path(argv[0]).name in CLIENTS else []


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_shell_gives_the_client_the_password_in_its_environment_only(
    secret_url: str,
) -> None:
    """psql or mariadb runs the statements; the password is in its environment, not argv."""
    argv, variables, output, code = await run_shell(
        {"DATABASE_URL": secret_url}, "SELECT 40 + 2 AS answer;\n"
    )
    assert code == 0, output
    assert "42" in output
    assert Path(argv[0]).name in CLIENTS
    assert not any(SECRET in argument for argument in argv)
    assert SECRET in (variables.get("PGPASSWORD"), variables.get("MYSQL_PWD"))


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_shell_connects_to_mariadb_as_the_urls_user_with_its_password(
    secret_url: str,
) -> None:
    """MariaDB checks the password: the client is in as the URL's user."""
    _, _, output, code = await run_shell({"DATABASE_URL": secret_url}, "SELECT CURRENT_USER();\n")
    assert code == 0, output
    assert f"{make_url(secret_url).username}@%" in output


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_shell_passes_what_follows_a_double_dash_to_the_client(secret_url: str) -> None:
    """`dbscope shell -- -c 'SELECT ...'` runs psql's own -c."""
    query = ("--", "-c", "SELECT 'from -c' AS said")
    done = await dbscope("shell", *query, environment={"DATABASE_URL": secret_url})
    assert done.returncode == 0, output_of(done)
    assert "from -c" in done.stdout.decode()


@pytest.mark.parametrize("db_backend", ["asyncpg"])
@pytest.mark.parametrize("schema", ["tenant_a", "Tenant_A"])
async def test_shell_targets_the_schema_the_units_target(secret_url: str, schema: str) -> None:
    """POSTGRES_SCHEMA: psql's unqualified names are the tenant's, as in the app's units
    (before, the shell read `public` while the app read the tenant's tables; then a name in
    mixed case was folded to lower case, another schema)."""
    environment = {"DATABASE_URL": secret_url, "POSTGRES_SCHEMA": schema}
    done = await dbscope("shell", "--", "-tAc", "SHOW search_path", environment=environment)
    assert done.returncode == 0, output_of(done)
    assert done.stdout.decode().strip() == f'"{schema}"'  # quoted, as the units' SET LOCAL


@pytest.mark.parametrize("db_backend", ["psycopg"])
async def test_shell_reaches_a_multi_host_url_with_an_ipv6_host(database_url: str) -> None:
    """?host=[::1]:5432&host=127.0.0.1:5432 gives psql each host and port whole (before, the
    IPv6 host was split at its first colon, and psql refused the port)."""
    url = make_url(database_url)
    port = url.port or 5432
    hosts = (f"[::1]:{port}", f"127.0.0.1:{port}")
    query = {"host": hosts, "target_session_attrs": "any"}
    multi = url.set(host=None, port=None).update_query_dict(query)
    argv, _ = Database(multi).shell_command()
    assert argv[argv.index("--host") + 1] == "::1,127.0.0.1"
    assert argv[argv.index("--port") + 1] == f"{port},{port}"
    environment = {"DATABASE_URL": multi.render_as_string(hide_password=False)}
    done = await dbscope("shell", "--", "-tAc", "SELECT 'reached'", environment=environment)
    assert done.returncode == 0, output_of(done)
    assert done.stdout.decode().strip() == "reached"


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_shell_reaches_mariadb_by_the_urls_unix_socket(database_url: str) -> None:
    """?unix_socket= is given to the client as --socket, not dropped for TCP to localhost."""
    url = make_url(database_url).set(host="localhost", port=None)
    url = url.update_query_dict({"unix_socket": "/nonexistent/mysqld.sock"})
    argv, _ = Database(url).shell_command()
    assert "--socket=/nonexistent/mysqld.sock" in argv


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_shell_speaks_the_apps_character_set_to_mariadb(database_url: str) -> None:
    """The client speaks utf8mb4, what a UTF-8 terminal types and shows: a 4-byte character
    comes back whole (before: utf8mb3, and '?'); a URL's charset=latin1 is the driver's, not
    the terminal's, and does not change it (latin1 stored typed text double-encoded)."""
    environment = {"DATABASE_URL": database_url, "LANG": "C.UTF-8"}
    query = "SELECT CONCAT('note ', CHAR(0xF09F9880 USING utf8mb4))"
    done = await dbscope("shell", "--", "-N", "-B", "-e", query, environment=environment)
    assert done.returncode == 0, output_of(done)
    assert done.stdout.decode().strip() == "note \N{GRINNING FACE}"
    latin = make_url(database_url).update_query_dict({"charset": "latin1"})
    assert "--default-character-set=utf8mb4" in Database(latin).shell_command()[0]


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_shell_takes_the_mariadb_urls_tls_options(database_url: str) -> None:
    """The URL's ssl_ca, ssl_cert, ssl_key, ssl_capath and ssl_cipher reach the client as
    --ssl-ca and so on: the shell talks TLS to a server the app reaches over TLS."""
    tls = {
        "ssl_ca": "/etc/tls/ca.pem",
        "ssl_cert": "/etc/tls/client.pem",
        "ssl_key": "/etc/tls/client.key",
        "ssl_capath": "/etc/tls/cas",
        "ssl_cipher": "ECDHE-RSA-AES256-GCM-SHA384",
    }
    argv, _ = Database(make_url(database_url).update_query_dict(tls)).shell_command()
    given = [argument for argument in argv if argument.startswith("--ssl")]
    assert given == [f"--{name.replace('_', '-')}={value}" for name, value in tls.items()]


async def test_shell_opens_sqlite3_on_the_database_file(sqlite_url: str, tmp_path: Path) -> None:
    """A SQLite URL opens sqlite3 on its file."""
    file = make_url(sqlite_url).database or ""
    async with admin(sqlite_url) as connection:
        await connection.execute(text("CREATE TABLE t (x INTEGER)"))
        await connection.execute(text("INSERT INTO t VALUES (7)"))
    argv, _, output, code = await run_shell({"DATABASE_URL": sqlite_url}, "SELECT x * 6 FROM t;\n")
    assert code == 0, output
    assert output.strip() == "42"
    assert argv[1:] == [file]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_the_shell_command_from_code_has_the_password_in_its_variables_only(
    secret_url: str,
) -> None:
    """db.shell_command(), what `dbscope shell` runs: the client first, the arguments given
    last, the password only in the variables to add to its environment."""
    argv, variables = Database(secret_url).shell_command("--", "given")
    assert Path(argv[0]).name in CLIENTS
    assert argv[-2:] == ["--", "given"]
    assert not any(SECRET in argument for argument in argv)
    assert SECRET in variables.values()


def test_shell_gives_names_as_names_never_as_connection_strings_or_options() -> None:
    """A database named like a libpq connection string goes to psql as PGDATABASE (libpq
    reads --dbname's 'k=v' as one, host and all); a SQLite path beginning with '-' is no
    option to sqlite3."""
    hostile = "dbname=postgres host=evil.example application_name=x"
    url = URL.create("postgresql+asyncpg", username="app", host="db.example", database=hostile)
    argv, variables = Database(url).shell_command()
    assert variables["PGDATABASE"] == hostile
    assert not any("evil" in argument for argument in argv)
    sqlite_argv, _ = Database("sqlite+aiosqlite:///-version").shell_command()
    assert sqlite_argv[1:] == ["./-version"]


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_shell_of_an_in_memory_database_exits_2(url: str) -> None:
    """An in-memory SQLite database has no shell: exit 2, saying why, and naming the URL as
    written (not SQLAlchemy's '%3Amemory%3A', as dbscope check does)."""
    done = await dbscope("shell", environment={"DATABASE_URL": url})
    assert done.returncode == 2
    assert f"No client can open {url!r}: an in-memory SQLite database" in done.stderr.decode()


async def test_shell_without_the_client_installed_exits_2_with_how_to_install_it() -> None:
    """No psql on the PATH: exit 2 naming the package to install."""
    environment = {"DATABASE_URL": nowhere(), "PATH": "/nonexistent"}
    done = await dbscope("shell", environment=environment)
    assert done.returncode == 2
    assert "runs psql, and none is on the PATH" in done.stderr.decode()
    assert "postgresql-client" in done.stderr.decode()


@pytest.mark.parametrize("given", [5, None, ["-c", "SELECT 1"]])
def test_the_shell_command_takes_strings_only(sqlite_url: str, given: object) -> None:
    """Anything else went into the client's argv, failing in the subprocess."""
    with pytest.raises(ConfigurationError, match="shell_command\\(\\) takes strings"):
        Database(sqlite_url).shell_command(given)  # type: ignore[arg-type]
