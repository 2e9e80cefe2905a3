"""Settings: from the environment or from arguments, validated when the Database is made.

Values are checked where they end up: the engine and pool that ``connect()`` builds against a
real server, not only the settings object. Every misconfiguration fails at construction with a
ConfigurationError naming the value and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool, QueuePool

from dbscope import ConfigurationError, Database, DatabaseSettings, DatabaseUnavailableError
from tests.conftest import POSTGRES_URL, require_server, url_for
from tests.documented import block_containing, run_block
from tests.server import free_port

SERVER_BACKENDS = ("asyncpg", "psycopg", "asyncmy")


async def pings_in_three_units(db: Database) -> int:
    """How many pings three units of work, one after another, cost."""
    for _ in range(3):
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
    return db.stats().pinged


def queue_pool(db: Database) -> QueuePool:
    """The connected engine's pool, which must be a queue pool."""
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool


async def select_one(db: Database) -> int:
    """Run ``SELECT 1`` in a transaction: proof that the Database really connected."""
    async with db.transaction() as session:
        return int((await session.execute(text("SELECT 1"))).scalar_one())


def local_postgres() -> URL:
    """The test PostgreSQL server's URL, skipping the test if it is down."""
    require_server(POSTGRES_URL)
    return make_url(POSTGRES_URL)


# -- reading the environment ------------------------------------------------------------------


async def test_from_env_reads_database_url(
    clean_env: pytest.MonkeyPatch, database_url: str
) -> None:
    """DATABASE_URL names the database from_env() connects to."""
    clean_env.setenv("DATABASE_URL", database_url)
    db = Database.from_env()
    assert db.url.render_as_string(hide_password=False) == database_url
    async with db:
        assert await select_one(db) == 1


async def test_from_env_builds_the_url_from_the_postgres_variables(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """POSTGRES_USER/PASSWORD/HOST/PORT/DB make a URL that reaches the real server."""
    server = local_postgres()
    clean_env.setenv("POSTGRES_USER", str(server.username))
    clean_env.setenv("POSTGRES_PASSWORD", "any-password-trust-auth-ignores")
    clean_env.setenv("POSTGRES_HOST", str(server.host))
    clean_env.setenv("POSTGRES_PORT", str(server.port or 5432))
    clean_env.setenv("POSTGRES_DB", str(server.database))
    db = Database.from_env()
    async with db, db.transaction() as session:
        row = (
            await session.execute(
                text("SELECT current_user, current_database(), inet_server_port()")
            )
        ).one()
    assert tuple(row) == (server.username, server.database, server.port or 5432)
    assert db.url.drivername == "postgresql+asyncpg"


PoolProbe = Callable[[Database], object]
POOL_VARIABLES: dict[str, tuple[str, PoolProbe, object]] = {
    "POOL_SIZE": ("3", lambda db: queue_pool(db).size(), 3),
    "MAX_OVERFLOW": ("2", lambda db: queue_pool(db)._max_overflow, 2),
    "POOL_TIMEOUT": ("1.5", lambda db: queue_pool(db).timeout(), 1.5),
    "POOL_RECYCLE": ("120", lambda db: queue_pool(db)._recycle, 120),
    "ECHO": ("true", lambda db: db.engine.echo, True),
}


@pytest.mark.parametrize("variable", list(POOL_VARIABLES))
async def test_from_env_pool_variables_reach_the_engine(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, variable: str
) -> None:
    """Each pool variable read by from_env() is the value the connected engine's pool uses."""
    value, probe, expected = POOL_VARIABLES[variable]
    clean_env.setenv("DATABASE_URL", sqlite_url)
    clean_env.setenv(variable, value)
    db = Database.from_env()
    assert getattr(db.settings, variable.lower()) == expected
    async with db:
        assert probe(db) == expected


@pytest.mark.parametrize(
    ("variable", "text_value", "expected"),
    [
        (variable, text_value, expected)
        for variable in ("POOL_PRE_PING", "ECHO")
        for text_value, expected in (("false", False), ("0", False), ("true", True), ("1", True))
    ],
)
async def test_boolean_variables_parse_as_booleans(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, variable: str, text_value: str, expected: bool
) -> None:
    """'false' and '0' turn a flag off, 'true' and '1' turn it on, in settings and engine."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    clean_env.setenv(variable, text_value)
    clean_env.setenv("POOL_PRE_PING_AFTER", "0")  # ping at every use, if checked at all
    db = Database.from_env()
    async with db:
        if variable == "ECHO":
            assert db.settings.echo is expected
            assert db.engine.echo is expected
        else:
            assert db.settings.pool_pre_ping is expected
            assert await pings_in_three_units(db) == (2 if expected else 0)


def test_an_unreadable_boolean_variable_is_rejected_naming_it(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """ECHO=maybe fails at construction naming the variable and the value."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    clean_env.setenv("ECHO", "maybe")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    assert "ECHO" in str(info.value)
    assert "'maybe'" in str(info.value)


async def test_from_env_with_a_prefix_reads_only_the_prefixed_variables(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """from_env("APP_") reads APP_DATABASE_URL and APP_POOL_SIZE, not the plain names."""
    clean_env.setenv("APP_DATABASE_URL", sqlite_url)
    clean_env.setenv("APP_POOL_SIZE", "4")
    clean_env.setenv("DATABASE_URL", "postgresql+psycopg2://wrong@nowhere/wrong")
    clean_env.setenv("POOL_SIZE", "9")
    db = Database.from_env("APP_")
    assert db.url.render_as_string(hide_password=False) == sqlite_url
    async with db:
        assert queue_pool(db).size() == 4


def test_from_env_uses_default_url_when_the_environment_names_no_database(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """from_env(default_url=...) with no DATABASE_URL nor POSTGRES_* variable uses the default."""
    clean_env.setenv("POOL_SIZE", "3")
    db = Database.from_env(default_url=sqlite_url)
    assert db.url.render_as_string(hide_password=False) == sqlite_url
    assert db.settings.pool_size == 3


NAMING_VARIABLES = {
    "DATABASE_URL": "postgresql+asyncpg://app@db.example/app",
    "POSTGRES_HOST": "db.example",
}


@pytest.mark.parametrize("variable", list(NAMING_VARIABLES))
def test_a_database_named_in_the_environment_wins_over_default_url(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, variable: str
) -> None:
    """DATABASE_URL, or one of the POSTGRES_* parts, is used instead of from_env's default_url."""
    clean_env.setenv(variable, NAMING_VARIABLES[variable])
    db = Database.from_env(default_url=sqlite_url)
    assert db.url.host == "db.example"


async def test_database_arguments_ignore_a_stray_pool_size_variable(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """Database(url) keeps its default pool size when POOL_SIZE is set in the environment."""
    clean_env.setenv("POOL_SIZE", "50")
    db = Database(sqlite_url)
    assert db.settings.pool_size == 5
    async with db:
        assert queue_pool(db).size() == 5


# -- misconfiguration fails at construction ---------------------------------------------------


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


def test_a_misspelled_option_is_rejected_with_the_right_spelling(sqlite_url: str) -> None:
    """pool_class=... fails with a message suggesting poolclass."""
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, pool_class=NullPool)
    assert "'pool_class'" in str(info.value)
    assert "did you mean 'poolclass'?" in str(info.value)


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


def test_a_setting_read_from_the_environment_is_named_as_its_prefixed_variable(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """APP_POOL_SIZE=-1 read by from_env("APP_") is named with its prefix and its value."""
    clean_env.setenv("APP_DATABASE_URL", sqlite_url)
    clean_env.setenv("APP_POOL_SIZE", "-1")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env("APP_")
    assert "environment variable APP_POOL_SIZE='-1': must be at least 1" in str(info.value)


def test_a_schema_on_sqlite_is_rejected_saying_only_postgresql_has_schemas(
    sqlite_url: str,
) -> None:
    """schema="app" on SQLite names the argument as given and says SQLite has no schemas."""
    with pytest.raises(ConfigurationError) as info:
        Database(sqlite_url, schema="app")
    assert "keyword argument schema='app': only PostgreSQL has schemas" in str(info.value)
    assert "a SQLite file is a database of its own" in str(info.value)
    assert "postgres_schema" not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "APP_"])
def test_a_misspelled_variable_is_named_when_no_database_is_configured(
    clean_env: pytest.MonkeyPatch, sqlite_url: str, prefix: str
) -> None:
    """With only DATABSE_URL set, "no database is configured" asks about DATABASE_URL."""
    clean_env.setenv(f"{prefix}DATABSE_URL", sqlite_url)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env(prefix)
    assert "No database is configured" in str(info.value)
    assert f"{prefix}DATABSE_URL is set: did you mean {prefix}DATABASE_URL?" in str(info.value)


def test_no_url_in_the_environment_is_rejected_naming_database_url(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """from_env() with nothing set fails saying to set DATABASE_URL."""
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    assert "set DATABASE_URL" in str(info.value)


def test_no_url_argument_is_rejected_naming_database_url(clean_env: pytest.MonkeyPatch) -> None:
    """Database() without a URL fails saying how to give one."""
    with pytest.raises(ConfigurationError) as info:
        Database()
    assert "DATABASE_URL" in str(info.value)
    assert "pass the URL to Database(...)" in str(info.value)


# -- URLs without a driver --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_a_postgres_url_without_driver_connects_with_asyncpg(scheme: str) -> None:
    """postgresql:// and postgres:// get the installed async driver asyncpg, and connect."""
    url = local_postgres().set(drivername=scheme)
    db = Database(url.render_as_string(hide_password=False))
    assert db.url.drivername == "postgresql+asyncpg"
    async with db:
        assert await select_one(db) == 1


async def test_a_sqlite_url_without_driver_uses_aiosqlite(tmp_path: Path) -> None:
    """sqlite:///file gets aiosqlite and creates the file on connect."""
    path = tmp_path / "plain.db"
    db = Database(f"sqlite:///{path}")
    assert db.url.drivername == "sqlite+aiosqlite"
    async with db:
        assert await select_one(db) == 1
    assert path.exists()


# -- documented: a URL object, settings made apart ---------------------------------------------


async def test_the_documented_url_object_connects_with_its_password_as_written(
    postgres_url: str,
) -> None:
    """docs/configuration.md's URL.create(...) connects, its unencoded password intact."""
    server = make_url(postgres_url)
    block = block_containing("docs/configuration.md", "URL.create(")
    parts = {
        '"postgresql+asyncpg"': repr(server.drivername),
        'username="app"': f"username={server.username!r}",
        'host="db.internal"': f"host={server.host!r}",
        "port=5432": f"port={server.port or 5432}",
        'database="app"': f"database={server.database!r}",
    }
    db = run_block(block, postgres_url, replace=parts)["db"]
    assert db.url.password == "p@ss:w/rd%"
    async with db, db.transaction() as session:
        user = (await session.execute(text("SELECT current_user"))).scalar_one()
    assert user == server.username


async def test_the_documented_settings_build_a_database_with_their_pool(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """docs/configuration.md's DatabaseSettings(_env_prefix="BILLING_", pool_size=20) works."""
    clean_env.setenv("BILLING_DATABASE_URL", sqlite_url)
    block = block_containing("docs/configuration.md", "Database.from_settings(")
    db = run_block(block, sqlite_url)["db"]
    assert db.url.render_as_string(hide_password=False) == sqlite_url
    async with db:
        assert queue_pool(db).size() == 20
        assert await select_one(db) == 1


# -- connecting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drivername", ["postgresql+asyncpg", "postgresql+psycopg", "mysql+asyncmy"]
)
async def test_an_unreachable_server_fails_connect_naming_host_and_port(drivername: str) -> None:
    """connect() to a port nothing listens on raises DatabaseUnavailableError with host:port."""
    port = free_port()
    db = Database(f"{drivername}://app:pw@127.0.0.1:{port}/app")
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.cause == "unreachable"
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
    db = Database(f"{drivername}://app@/app" + MULTI_HOST_FORMS[form].format(first, second))
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert f"at 127.0.0.1:{first}, 127.0.0.1:{second}, database 'app'" in str(info.value)


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
