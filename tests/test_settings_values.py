"""Values that parse but cannot work fail at construction, naming the value and the fix.

Each of these used to be accepted and fail later: on the first request (a NaN pool_timeout
refused every waiter at once), at connect with another mistake's advice (an isolation level
that does not exist, a port past 65535), or with SQLAlchemy's words for a misspelt database
("Invalid engine option: Can't load plugin"), or as a raw NoSuchModuleError.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbscope import ConfigurationError, Database, DatabaseSettings
from tests.conftest import MYSQL_URL, POSTGRES_URL, require_server

URL = "postgresql+asyncpg://app@db.example/app"


@pytest.mark.parametrize("setting", ["pool_timeout", "connect_timeout", "pool_pre_ping_after"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_time_that_is_not_finite_is_refused(setting: str, value: float) -> None:
    """nan compares false with every bound, inf never ends: both refused by name."""
    with pytest.raises(ConfigurationError, match=f"{setting}={value}: must be a finite number"):
        Database(URL, **{setting: value})  # type: ignore[arg-type]


def test_a_connect_timeout_beyond_an_hour_is_refused_at_construction() -> None:
    """connect_timeout=3e9 was taken, then refused by MariaDB's client at connect (over a
    year), blamed on the URL's options: refused when the Database is made."""
    with pytest.raises(ConfigurationError, match=r"connect_timeout=3000000000\.0: must be at most"):
        Database("mysql+asyncmy://app@db.example/app", connect_timeout=3e9)
    assert Database(URL, connect_timeout=3600).settings.connect_timeout == 3600


def test_a_time_variable_that_is_not_finite_is_refused_naming_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """POOL_TIMEOUT=nan in the environment: named as the variable."""
    clean_env.setenv("DATABASE_URL", URL)
    clean_env.setenv("POOL_TIMEOUT", "nan")
    with pytest.raises(ConfigurationError, match="variable POOL_TIMEOUT='nan': must be a finite"):
        Database.from_env()


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("postgressql+asyncpg://app:pw@localhost/app", "did you mean 'postgresql'?"),
        ("mysq://root@localhost/app", "did you mean 'mysql'?"),
        ("foo://x", "dbscope knows 'postgresql', 'mysql', 'sqlite'"),
    ],
)
def test_a_database_sqlalchemy_has_no_dialect_for_is_refused_with_the_names(
    url: str, hint: str
) -> None:
    """A misspelt database name: the nearest known one, never SQLAlchemy's plugin words."""
    with pytest.raises(ConfigurationError) as refused:
        Database(url)
    message = str(refused.value)
    assert hint in message
    assert "argument url" in message
    assert "plugin" not in message
    assert "engine option" not in message


def test_a_port_past_65535_is_refused_at_construction() -> None:
    """Not a TCP port: said when the Database is made, not as a login failure at connect."""
    with pytest.raises(ConfigurationError, match="port 99999 is not a TCP port"):
        Database("postgresql+asyncpg://app@db.example:99999/app")


@pytest.mark.parametrize(
    "options",
    [{"isolation_level": "BOGUS"}, {"execution_options": {"isolation_level": "REPEATABLE"}}],
)
def test_an_isolation_level_that_does_not_exist_is_refused_at_construction(
    options: dict[str, Any],
) -> None:
    """Refused with the levels there are, instead of at connect with a login's advice."""
    with pytest.raises(ConfigurationError, match="is not an isolation level: use one of"):
        Database(URL, **options)


@pytest.mark.parametrize("level", ["read committed", "REPEATABLE_READ"])
async def test_an_isolation_level_in_sqlalchemys_other_spellings_is_applied(level: str) -> None:
    """SQLAlchemy takes any case and '_' for ' ': so does the check, and the server has it."""
    require_server(POSTGRES_URL)
    async with Database(POSTGRES_URL, isolation_level=level) as db, db.transaction() as session:
        shown = await session.scalar(text("SHOW transaction_isolation"))
    assert shown == level.lower().replace("_", " ")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"poolclass": "NullPool"}, "poolclass must be a pool class, got a str"),
        ({"connect_args": 5}, "connect_args must be a dict of names to values, got an int"),
        ({"execution_options": 5}, "execution_options must be a dict of names to values"),
        # A U said "you": a UUID, not an UUID; numpy's uint8 too.
        ({"connect_args": uuid.uuid4()}, "values, got a UUID"),
        ({"connect_args": type("uint8", (int,), {})(5)}, "values, got a uint8"),
        ({"poolclass": make_url(URL)}, "pool class, got a URL"),
    ],
)
def test_an_engine_option_of_the_wrong_type_is_refused_naming_it(
    options: dict[str, Any], expected: str
) -> None:
    """Refused by name instead of an AttributeError or TypeError from inside SQLAlchemy."""
    with pytest.raises(ConfigurationError, match=expected):
        Database(URL, **options)


@pytest.mark.parametrize(
    ("drivername", "query"),
    [
        ("postgresql+psycopg", "sslmod=require"),
        # asyncpg takes libpq's sslmode as its ssl (test_settings.py): a misspelling of it.
        ("postgresql+asyncpg", "sslmod=require"),
        # A value the driver refuses, which it said as an outage: libpq's words, asyncpg's
        # ClientConfigurationError, asyncmy's failed charset lookup.
        ("postgresql+psycopg", "sslmode=bogus"),
        ("postgresql+asyncpg", "server_settings=x"),
        ("mysql+asyncmy", "charset=bogus"),
    ],
)
async def test_a_connect_option_the_driver_refuses_is_a_configuration_error_about_options(
    drivername: str, query: str
) -> None:
    """Not an outage (psycopg's unknown option was a 503 with Retry-After), and not a login:
    the advice names the URL's query string and connect_args."""
    server = MYSQL_URL if drivername.startswith("mysql") else POSTGRES_URL
    require_server(server)
    url = make_url(server).set(drivername=drivername)
    db = Database(f"{url.render_as_string(hide_password=False)}?{query}")
    with pytest.raises(ConfigurationError, match="the options in the URL's query string"):
        await db.connect()


def test_settings_made_directly_refuse_a_missing_env_file(tmp_path: Path) -> None:
    """DatabaseSettings(_env_file=...) checks the file as Database.from_env(env_file=) does."""
    missing = tmp_path / "missing.env"
    with pytest.raises(ConfigurationError, match=r"missing\.env' does not exist"):
        DatabaseSettings(_env_file=missing)


def test_a_synchronous_driver_is_refused_with_the_async_ones_marked_installed_or_not() -> None:
    """The replacement to write: each async driver says whether it is here, or how to get it.

    The dev install has asyncmy (dbscope[mysql]) and not aiomysql.
    """
    with pytest.raises(ConfigurationError) as refused:
        Database("mysql+pymysql://root@db.example/app")
    message = str(refused.value)
    assert "'mysql+asyncmy://' (installed)" in message
    assert "'mysql+aiomysql://' (pip install aiomysql)" in message


@pytest.mark.parametrize(
    ("setting", "value"), [("pool_size", True), ("pool_timeout", False), ("replica_wait", True)]
)
def test_a_bool_for_a_number_is_refused(setting: str, value: bool) -> None:
    """pydantic would take True for 1: a flag where a number belongs is a mistake."""
    with pytest.raises(ConfigurationError, match=f"{setting}={value}: must be a number"):
        Database(URL, **{setting: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+bogus://app@db.example/app", "which SQLAlchemy does not know for postgresql"),
        ("mysql+asyncpg://app@db.example/app", "which SQLAlchemy does not know for mysql"),
        ("postgresql+psycopg_async://app@db.example/app", "an async driver dbscope has no rules"),
    ],
)
def test_a_driver_that_is_not_synchronous_is_not_called_so(url: str, said: str) -> None:
    """Every driver dbscope has no rules for was "synchronous", a misspelling included."""
    with pytest.raises(ConfigurationError, match=said) as refused:
        Database(url)
    assert "synchronous" not in str(refused.value)


@pytest.mark.parametrize("given", [5, b"postgresql://app:pw@db.example/app", ["x"]])
def test_a_url_that_is_no_string_is_refused_by_its_type_never_shown(given: object) -> None:
    """Database(5) was told pydantic's "Input should be a tuple, list, dictionary or an
    instance of URL", which no URL is; bytes may hold a password, so only the type is named."""
    with pytest.raises(
        ConfigurationError, match="url: must be a URL string or a sqlalchemy URL,"
    ) as refused:
        Database(given)  # type: ignore[arg-type]
    assert type(given).__name__ in str(refused.value)
    assert "tuple" not in str(refused.value)
    assert "pw" not in str(refused.value)


def test_a_pool_recycle_of_0_is_refused_as_a_new_connection_per_unit(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """pool_recycle=0 (what 'no limit' is in other pools) was taken, and SQLAlchemy then
    replaced every connection at each checkout: a connect per unit, in silence."""
    with pytest.raises(ConfigurationError, match=r"pool_recycle=0: .* at each checkout.* -1"):
        Database(URL, pool_recycle=0)
    clean_env.setenv("DATABASE_URL", URL)
    clean_env.setenv("POOL_RECYCLE", "0")
    with pytest.raises(ConfigurationError, match="variable POOL_RECYCLE='0': "):
        Database.from_env()
    assert Database(URL, pool_recycle=-1).settings.pool_recycle == -1
    assert Database(URL, pool_recycle=1).settings.pool_recycle == 1


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("postgresql+asyncpg://app:pw@bad host/app", "'bad host'"),
        ("mysql+asyncmy://root@db.example /app", "'db.example '"),
        ("postgresql+psycopg://app@/app?host=db1&host=db 2:5433", "'db 2:5433'"),
    ],
)
def test_a_host_with_a_blank_is_refused_at_construction_not_reported_as_an_outage(
    url: str, host: str
) -> None:
    """u@bad host/db was taken, and every connect failed the name look-up: a
    DatabaseUnavailableError, a 503 for a setting no server can fix. A socket directory in
    the query may hold a blank."""
    with pytest.raises(ConfigurationError, match=f"host {host} holds a blank") as refused:
        Database(url)
    assert "pw" not in str(refused.value)
    Database("postgresql+psycopg://app@/app?host=/run/my sockets")


def test_a_postgres_host_with_a_blank_is_refused_naming_the_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """POSTGRES_HOST='db host' was an outage at every connect, as the URL's host was; not
    shown, as no value of it is (a password pasted there)."""
    clean_env.setenv("POSTGRES_HOST", "db host")
    clean_env.setenv("POSTGRES_DB", "app")
    with pytest.raises(ConfigurationError, match="POSTGRES_HOST: must be a host name, which ho"):
        Database.from_env()


# What a checker refuses, given all the same.
FIVE: Any = 5
FILES: Any = [".env", 3]


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: DatabaseSettings(_env_prefix=FIVE), "_env_prefix=5 is not a prefix; use a"),
        (lambda: DatabaseSettings(_env_file=FIVE), "_env_file=5 is not the path of a dotenv"),
        (lambda: Database.from_env(FIVE), "prefix=5 is not a prefix; use a string"),
        (lambda: Database.from_env(env_file=FILES), r"env_file=\['.env', 3\] is not"),
    ],
)
def test_an_env_prefix_or_file_of_another_type_is_refused_naming_it(
    clean_env: pytest.MonkeyPatch, make: Any, said: str
) -> None:
    """DatabaseSettings(_env_prefix=5) raised pydantic-settings' TypeError, "object of type
    'int' has no len()"; an int for the file, "'int' object is not iterable"."""
    clean_env.setenv("DATABASE_URL", URL)
    with pytest.raises(ConfigurationError, match=said):
        make()
