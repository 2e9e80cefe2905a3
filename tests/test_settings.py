"""Settings: from the environment or from arguments, reaching the engine they configure.

Values are checked where they end up: the engine and pool that ``connect()`` builds against a
real server, not only the settings object. Misconfigurations, each failing with a
ConfigurationError naming the value and the fix, are in test_settings_errors.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

from dbscope import Database
from tests.conftest import POSTGRES_URL, require_server
from tests.documented import block_containing, run_block


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
            # Each of the three, the first on the connection connect() opened.
            assert await pings_in_three_units(db) == (3 if expected else 0)


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


# -- URLs without a driver --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_a_postgres_url_without_driver_connects_with_asyncpg(scheme: str) -> None:
    """postgresql:// and postgres:// get the installed async driver asyncpg, and connect."""
    url = local_postgres().set(drivername=scheme)
    db = Database(url.render_as_string(hide_password=False))
    assert db.url.drivername == "postgresql+asyncpg"
    async with db:
        assert await select_one(db) == 1


@pytest.mark.parametrize("driver", ["", "+asyncpg", "+psycopg"])
async def test_a_hosting_services_url_with_sslmode_connects_on_either_driver(driver: str) -> None:
    """postgres://...?sslmode=disable, as hosting services give it: asyncpg, which refuses
    libpq's keyword, gets it as its own ssl; psycopg keeps it."""
    url = local_postgres().set(drivername=f"postgres{driver}")
    db = Database(url.update_query_dict({"sslmode": "disable"}).render_as_string(False))
    expected = {"ssl": "disable"} if "psycopg" not in driver else {"sslmode": "disable"}
    assert dict(db.url.query) == expected
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
