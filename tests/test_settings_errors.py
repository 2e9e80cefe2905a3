"""Settings that fail: each misconfiguration at construction, each unusable server at connect.

A wrong value fails when the Database is made, with a ConfigurationError naming the value as
the caller gave it (keyword argument or variable) and the fix; a server that cannot be reached,
or refuses the user, fails ``connect()`` saying where and why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, QueuePool

from dbscope import ConfigurationError, Database, DatabaseSettings, DatabaseUnavailableError
from tests.conftest import url_for
from tests.helpers import SERVER_BACKENDS, SERVER_DRIVERNAMES, connect_to_nothing
from tests.server import free_port


def from_env_error(env: pytest.MonkeyPatch, prefix: str = "", **variables: str) -> str:
    """Set the environment ``variables``, then the message of the ConfigurationError that
    ``Database.from_env(prefix)`` raises."""
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env(prefix)
    return str(info.value)


# -- the environment --------------------------------------------------------------------------


def test_an_unreadable_boolean_variable_is_rejected_naming_it(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """ECHO=maybe fails at construction naming the variable and the value."""
    message = from_env_error(clean_env, DATABASE_URL=sqlite_url, ECHO="maybe")
    assert "ECHO" in message
    assert "'maybe'" in message


def test_a_setting_read_from_the_environment_is_named_as_its_prefixed_variable(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """APP_POOL_SIZE=-1 read by from_env("APP_") is named with its prefix and its value."""
    message = from_env_error(clean_env, "APP_", APP_DATABASE_URL=sqlite_url, APP_POOL_SIZE="-1")
    assert "environment variable APP_POOL_SIZE='-1': must be at least 1" in message


@pytest.mark.parametrize("prefix", ["", "APP_"])
def test_a_misspelled_variable_is_named_when_no_database_is_configured(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, prefix: str
) -> None:
    """With only DATABSE_URL set, "no database is configured" asks about DATABASE_URL."""
    message = from_env_error(clean_env, prefix, **{f"{prefix}DATABSE_URL": sqlite_url})
    assert "No database is configured" in message
    assert f"{prefix}DATABSE_URL is set: did you mean {prefix}DATABASE_URL?" in message


def test_a_dotenv_file_not_read_is_named_when_no_database_is_configured(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The app's settings in ./.env, from_env() given no env_file: "no database is configured"
    says the file was not read and how to read it; with env_file='.env' it is read."""
    (tmp_path / ".env").write_text(f"DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'app.db'}\n")
    clean_env.chdir(tmp_path)
    message = from_env_error(clean_env)
    assert "A .env file is in the working directory but was not read" in message
    assert "Database.from_env(env_file='.env')" in message
    assert Database.from_env(env_file=".env").settings.url.database == str(tmp_path / "app.db")


@pytest.mark.parametrize("prefix", ["", "APP_"])
def test_a_misspelled_variable_beside_a_database_is_warned_of_once(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, sqlite_url: str, prefix: str
) -> None:
    """PG_BOUNCER for PGBOUNCER is never read, and the app would run without it: from_env()
    says so, naming both. A variable that lacks only the prefix, or has a prefix of its own
    before a setting's name, is another Database's."""
    clean_env.setenv(f"{prefix}DATABASE_URL", sqlite_url)
    clean_env.setenv(f"{prefix}PG_BOUNCER", "transaction")
    clean_env.setenv("POOL_SIZE", "3")  # with the prefix APP_: another Database's setting
    clean_env.setenv("RO_DATABASE_URL", sqlite_url)  # another's, under a prefix of its own
    with caplog.at_level("WARNING", logger="dbscope"):
        settings = Database.from_env(prefix).settings
    warnings = [record.getMessage() for record in caplog.records]
    assert settings.pgbouncer is None
    assert warnings == [
        f"{prefix}PG_BOUNCER is set: did you mean {prefix}PGBOUNCER? It is not one of "
        "dbscope's settings, and was not read."
    ]


def test_no_url_in_the_environment_is_rejected_naming_database_url(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """from_env() with nothing set fails saying to set DATABASE_URL."""
    assert "set DATABASE_URL" in from_env_error(clean_env)


def test_a_missing_env_file_is_rejected_naming_it_and_the_fix(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """from_env(env_file=...) naming no file fails, even though the environment names a
    database: a misspelled file would otherwise be skipped without a word."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env(env_file="/nonexistent.env")
    assert str(info.value).startswith(
        "The env file '/nonexistent.env' does not exist: give the path of an existing dotenv "
        "file, or name none"
    )


def test_a_missing_env_file_named_by_a_relative_path_says_where_it_was_looked_for(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A relative env file is read from the working directory, which the message names."""
    clean_env.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env(env_file=".env.local")
    assert str(info.value).startswith(
        f"The env file '.env.local' does not exist (looked for from {tmp_path}): give the path"
    )


def test_an_env_file_that_is_a_directory_is_rejected(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    """from_env(env_file=<a directory>) says it is not a file."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    with pytest.raises(ConfigurationError, match="is not a file"):
        Database.from_env(env_file=str(tmp_path))


def test_an_env_file_that_is_not_utf8_is_rejected_naming_it_and_not_its_content(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """from_env(env_file=<Latin-1 bytes>) fails naming the file and the byte, not a value."""
    (tmp_path / "latin1.env").write_bytes(b"DATABASE_URL=sqlite:///a.db\nSECRET=Pa\xdf\n")
    clean_env.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env(env_file="latin1.env")
    assert str(info.value) == (
        "The env file 'latin1.env' is not UTF-8 text (byte 37 cannot be decoded): save it as "
        "UTF-8, or name none to read the environment alone."
    )


def test_an_env_file_that_is_there_is_read_and_none_named_reads_the_environment(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    """An existing env file is read; without one, from_env() reads the environment alone."""
    (tmp_path / "app.env").write_text(f"DATABASE_URL={sqlite_url}\nPOOL_SIZE=7\n")
    from_file = Database.from_env(env_file=str(tmp_path / "app.env"))
    clean_env.setenv("DATABASE_URL", sqlite_url)
    without = Database.from_env()
    assert from_file.settings.pool_size == 7
    assert without.settings.pool_size == 5


def test_an_env_file_shared_with_the_apps_other_settings_is_read_for_dbscopes_own(
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """Variables of the app's own in the env file (SECRET_KEY, DEBUG) are left alone, as in
    the environment, with or without a prefix; dbscope's are read, and a near miss of one
    (PG_BOUNCER) is named."""
    others = "SECRET_KEY=not-dbscopes\nDEBUG=true\nPG_BOUNCER=transaction\n"
    (tmp_path / "app.env").write_text(f"{others}DATABASE_URL={sqlite_url}\nPOOL_SIZE=7\n")
    (tmp_path / "prefixed.env").write_text(f"{others}APP_DATABASE_URL={sqlite_url}\n")
    with caplog.at_level("WARNING", logger="dbscope"):
        plain = Database.from_env(env_file=str(tmp_path / "app.env"))
    prefixed = Database.from_env("APP_", env_file=str(tmp_path / "prefixed.env"))
    settings = DatabaseSettings(_env_file=str(tmp_path / "app.env"))
    assert plain.settings.pool_size == 7
    assert plain.settings.pgbouncer is None
    assert [record.getMessage() for record in caplog.records] == [
        "PG_BOUNCER is set: did you mean PGBOUNCER? It is not one of dbscope's settings, and was "
        "not read."
    ]
    assert str(prefixed.url) == sqlite_url
    assert settings.pool_size == 7


def test_a_postgres_host_with_a_port_is_rejected_naming_both(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """POSTGRES_HOST=db:5432 fails at once saying to set POSTGRES_PORT; an IPv6 host stands."""
    clean_env.setenv("POSTGRES_USER", "app")
    clean_env.setenv("POSTGRES_DB", "app")
    clean_env.setenv("POSTGRES_HOST", "db.internal:5433")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    assert "environment variable POSTGRES_HOST: must be the host alone" in str(info.value)
    assert "POSTGRES_PORT=5433" in str(info.value)
    assert "'db.internal'" in str(info.value)
    clean_env.setenv("POSTGRES_HOST", "::1")
    assert Database.from_env().url.host == "::1"


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver", "suggestion"),
    [
        ("postgresql+psycopg2://app@localhost/app", "psycopg2", "'postgresql+asyncpg://'"),
        ("mysql+pymysql://app@localhost/app", "pymysql", "'mysql+asyncmy://'"),
        ("sqlite+pysqlite:///app.db", "pysqlite", "'sqlite+aiosqlite://'"),
    ],
    ids=["psycopg2", "pymysql", "pysqlite"],
)
def test_a_synchronous_driver_is_rejected_with_the_async_url(
    url: str, driver: str, suggestion: str
) -> None:
    """A sync driver fails at construction, naming it and the async URL to use instead."""
    with pytest.raises(ConfigurationError) as info:
        Database(url)
    assert f"'{driver}'" in str(info.value)
    assert suggestion in str(info.value)


def test_a_synchronous_queue_pool_is_rejected_naming_the_async_one(sqlite_url: str) -> None:
    """poolclass=QueuePool fails with a ConfigurationError that points to AsyncAdaptedQueuePool."""
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, poolclass=QueuePool)
    assert "poolclass=QueuePool" in str(info.value)
    assert "AsyncAdaptedQueuePool" in str(info.value)


@pytest.mark.parametrize(
    ("option", "meant"), [("pool_class", "poolclass"), ("replica", "replicas")]
)
def test_a_misspelled_option_is_rejected_with_the_right_spelling(
    sqlite_url: str, option: str, meant: str
) -> None:
    """pool_class=... fails suggesting poolclass; replica=... suggests replicas, an argument
    of Database's own (it suggested replica_wait)."""
    given: dict[str, Any] = {option: NullPool}
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, **given)
    assert f"unknown option {option!r}: did you mean {meant!r}?" in str(info.value)
    assert not str(info.value).endswith("?.")


@pytest.mark.parametrize(
    ("option", "fix"),
    [
        ("class_", "pass session_class="),
        ("expire_on_commit", "never expire what they loaded at a commit; remove it"),
        ("autoflush", "do not flush before each query (autoflush=False)"),
    ],
)
def test_a_sessionmaker_option_is_rejected_saying_what_dbscope_does(
    sqlite_url: str, option: str, fix: str
) -> None:
    """The blog's async_sessionmaker(expire_on_commit=False, autoflush=False, class_=...)
    arguments, given to Database: the message says the sessionmaker is dbscope's and what to
    do (before: class_ was "did you mean 'poolclass'?", the others "see the list")."""
    given: dict[str, Any] = {option: False}
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, **given)
    message = str(info.value)
    assert f"{option!r} is an option of async_sessionmaker, which dbscope builds" in message
    assert fix in message


def test_an_engine_option_value_sqlalchemy_lacks_is_named(sqlite_url: str) -> None:
    """echo_pool="bogus": a ConfigurationError naming the option and its value (before: a
    KeyError out of SQLAlchemy)."""
    with pytest.raises(ConfigurationError, match="Invalid engine option echo_pool='bogus'"):
        Database(sqlite_url, echo_pool="bogus")


@pytest.mark.parametrize(("option", "value"), [("pool_size", -3), ("max_overflow", -4)])
def test_a_negative_pool_bound_is_rejected_with_its_value(
    sqlite_url: str, option: str, value: int
) -> None:
    """A negative pool_size or max_overflow fails naming the option and the value given."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, **options)
    assert option in str(info.value)
    assert f"got {value}" in str(info.value)


def test_pool_size_with_a_null_pool_is_rejected_with_the_fix(sqlite_url: str) -> None:
    """poolclass=NullPool with pool_size=5 fails saying NullPool takes no pool_size."""
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, poolclass=NullPool, pool_size=5)
    assert "pool_size=5" in str(info.value)
    assert "NullPool" in str(info.value)
    assert "remove pool_size" in str(info.value)


def test_pool_size_for_in_memory_sqlite_is_rejected_with_the_fix() -> None:
    """An in-memory SQLite database with pool_size=5 fails suggesting a file database."""
    with pytest.raises(ConfigurationError) as info:
        Database("sqlite+aiosqlite:///:memory:", pool_size=5)
    assert "pool_size=5" in str(info.value)
    assert "sqlite+aiosqlite:///app.db" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///app.db?timeout=abc",
        "mysql+asyncmy://app@localhost/app?read_timeout=abc",
        "postgresql+asyncpg://app@localhost/app?prepared_statement_cache_size=abc",
    ],
    ids=["sqlite", "asyncmy", "asyncpg"],
)
def test_a_url_option_that_is_no_number_is_rejected_naming_it(url: str) -> None:
    """?timeout=abc fails at construction naming the options given, not with int()'s words
    alone."""
    with pytest.raises(ConfigurationError) as info:
        Database(url)
    assert "The database URL's options could not be read" in str(info.value)
    assert "=abc" in str(info.value)


def test_an_in_memory_sqlite_uri_is_an_in_memory_database() -> None:
    """file::memory:?uri=true is SQLite's URI for memory: a pool_size is refused, as for
    :memory:."""
    url = "sqlite+aiosqlite:///file::memory:?cache=shared&uri=true"
    with pytest.raises(ConfigurationError, match="pool_size=5"):
        Database(url, pool_size=5)


@pytest.mark.parametrize(
    "url",
    ["not a url", "postgresql+asyncpg//app@localhost/app", "postgresql+asyncpg://app@db:five/app"],
    ids=["words", "missing-colon", "non-numeric-port"],
)
def test_an_unparseable_url_is_rejected_showing_the_expected_form(url: str) -> None:
    """A URL that cannot be parsed fails naming DATABASE_URL and the form a URL takes."""
    with pytest.raises(ConfigurationError) as info:
        Database(url)
    assert "could not be parsed" in str(info.value)
    assert "dialect+driver://user:password@host:port/database" in str(info.value)


SettingsInCode = Callable[[str], object]
IN_CODE: dict[str, SettingsInCode] = {
    "Database": lambda url: Database(url, pool_size=-1),
    "DatabaseSettings": lambda url: DatabaseSettings(database_url=url, pool_size=-1),
}


@pytest.mark.parametrize("make", list(IN_CODE))
def test_a_setting_given_in_code_is_named_as_its_keyword_argument(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, make: str
) -> None:
    """pool_size=-1 passed to Database(...) or DatabaseSettings(...) is named so, not POOL_SIZE."""
    with pytest.raises(ConfigurationError) as info:
        IN_CODE[make](sqlite_url)
    assert "keyword argument pool_size=-1: must be at least 1" in str(info.value)
    assert "POOL_SIZE" not in str(info.value)


def test_a_schema_on_sqlite_is_rejected_saying_only_postgresql_has_schemas(
    sqlite_url: str,
) -> None:
    """schema="app" on SQLite names the argument as given and says SQLite has no schemas."""
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, schema="app")
    assert "keyword argument schema='app': only PostgreSQL has schemas" in str(info.value)
    assert "a SQLite file is a database of its own" in str(info.value)
    assert "postgres_schema" not in str(info.value)


def test_no_url_argument_is_rejected_naming_database_url(clean_env: pytest.MonkeyPatch) -> None:
    """Database() without a URL fails saying how to give one."""
    with pytest.raises(ConfigurationError) as info:
        Database()
    assert "DATABASE_URL" in str(info.value)
    assert "pass the URL to Database(...)" in str(info.value)


# -- connecting -------------------------------------------------------------------------------


@pytest.mark.parametrize("drivername", SERVER_DRIVERNAMES)
async def test_an_unreachable_server_fails_connect_naming_host_and_port(drivername: str) -> None:
    """connect() to a port nothing listens on raises DatabaseUnavailableError with host:port."""
    db, port, error = await connect_to_nothing(drivername, "pw")
    assert f"127.0.0.1:{port}" in str(error)
    assert error.cause == "unreachable"
    assert db.state == "new"


MULTI_HOST_FORMS = {
    "host=h:p&host=h:p": "?host=127.0.0.1:{0}&host=127.0.0.1:{1}",
    "host=h,h&port=p,p": "?host=127.0.0.1,127.0.0.1&port={0},{1}",
}


@pytest.mark.parametrize("form", list(MULTI_HOST_FORMS))
@pytest.mark.parametrize("drivername", ["postgresql+asyncpg", "postgresql+psycopg"])
async def test_a_multi_host_url_reaching_no_host_fails_connect_naming_every_host(
    drivername: str, form: str
) -> None:
    """connect() to two hosts that nothing listens on raises an error naming both host:ports."""
    first = free_port()
    second = next(port for port in iter(free_port, None) if port != first)
    hosts = MULTI_HOST_FORMS[form].format(first, second)
    db = Database(f"{drivername}://app@/app{hosts}&target_session_attrs=read-write")
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert f"at 127.0.0.1:{first}, 127.0.0.1:{second}, database 'app'" in str(info.value)


async def test_hosts_listed_with_their_ports_in_one_value_are_named_with_them() -> None:
    """``?host=h1:p1,h2:p2`` (psycopg's; SQLAlchemy refuses it for asyncpg): the message
    named port 5432 for both."""
    first = free_port()
    second = next(port for port in iter(free_port, None) if port != first)
    query = f"?host=127.0.0.1:{first},127.0.0.1:{second}&target_session_attrs=read-write"
    db = Database(f"postgresql+psycopg://app@/app{query}")
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert f"at 127.0.0.1:{first}, 127.0.0.1:{second}, database 'app'" in str(info.value)


@pytest.mark.parametrize("form", list(MULTI_HOST_FORMS))
@pytest.mark.parametrize("drivername", ["postgresql+asyncpg", "postgresql+psycopg"])
def test_a_multi_host_url_without_target_session_attrs_is_refused(
    drivername: str, form: str
) -> None:
    """Each connection would go to the first host that answers, a standby after a failover,
    where every write fails (measured: 503s without end after a switchover). Refused naming
    the fix; target_session_attrs=any takes the first that answers, as asked."""
    url = f"{drivername}://app:S3cret@/app" + MULTI_HOST_FORMS[form].format(5432, 5433)
    with pytest.raises(ConfigurationError) as refused:
        Database(url)
    message = str(refused.value)
    assert "names several hosts and no target_session_attrs" in message
    assert "Add target_session_attrs=read-write" in message
    assert "S3cret" not in message
    assert Database(url + "&target_session_attrs=any").name == "127.0.0.1:5432,127.0.0.1:5433/app"


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
async def test_a_wrong_user_fails_connect_with_a_configuration_error(
    backend: str, tmp_path: Path
) -> None:
    """A user the server does not know is a ConfigurationError naming the user, not an outage."""
    url = make_url(url_for(backend, tmp_path)).set(username="dbscope_no_such_user")
    db = Database(url.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError) as info:
        await db.connect()
    assert "'dbscope_no_such_user'" in str(info.value)
    assert "check the user" in str(info.value).lower()
