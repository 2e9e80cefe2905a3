"""Settings given as arguments where they could go astray: to from_env() and
from_settings() beside the environment, twice under two names, or where the driver or
SQLAlchemy would take a value and fail on it later (a cache size, a URL's connect timeout, a
port)."""

from typing import Any

import pytest

from dbscope import ConfigurationError, Database, DatabaseSettings


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "postgresql+psycopg", "mysql+asyncmy"])
def test_a_url_connect_timeout_is_refused_for_the_setting(driver: str) -> None:
    """dbscope's connect_timeout won over the URL's without a word (psycopg), or asyncpg
    refused the name at the first connect; '?connect_timeout=abc' was taken (psycopg)."""
    with pytest.raises(ConfigurationError, match="set connect_timeout") as info:
        Database(f"{driver}://app@localhost/app?connect_timeout=30")
    assert "CONNECT_TIMEOUT" in str(info.value)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("postgresql+asyncpg://app@localhost/app", {"query_cache_size": -1}),
        ("postgresql+asyncpg://app@localhost/app", {"query_cache_size": "x"}),
        ("postgresql+asyncpg://app@localhost/app?prepared_statement_cache_size=-5", {}),
        ("postgresql+asyncpg://app@localhost/app", {"connect_args": {"statement_cache_size": -1}}),
    ],
    ids=["negative", "text", "url", "connect_args"],
)
def test_a_cache_size_below_0_is_refused_naming_it(url: str, options: dict[str, Any]) -> None:
    """SQLAlchemy took a negative one, and its cache then trimmed itself for ever: the first
    connect never returned, a CPU spinning."""
    with pytest.raises(ConfigurationError, match="is no cache size"):
        Database(url, **options)


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_postgres_port_out_of_range_says_what_a_port_is(
    clean_env: pytest.MonkeyPatch, port: str
) -> None:
    """As every other number's bound does, naming the variable and the value (pydantic's own
    "greater than or equal to 1" said no fix)."""
    clean_env.setenv("POSTGRES_USER", "app")
    clean_env.setenv("POSTGRES_PORT", port)
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    assert f"POSTGRES_PORT='{port}': must be a TCP port, 1 to 65535" in str(info.value)


def test_settings_given_to_from_env_are_checked_and_win_over_the_environment(
    clean_env: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """They went to SQLAlchemy unchecked: pool_size=0 made a pool without bound while
    db.settings said 5."""
    clean_env.setenv("DATABASE_URL", sqlite_url)
    clean_env.setenv("POOL_SIZE", "7")
    with pytest.raises(ConfigurationError, match="keyword argument pool_size=0"):
        Database.from_env(pool_size=0)
    assert Database.from_env(pool_size=3).settings.pool_size == 3


def test_settings_given_to_from_settings_are_refused(sqlite_url: str) -> None:
    """The DatabaseSettings is made already: a setting beside it is a mistake."""
    settings = DatabaseSettings(database_url=sqlite_url)
    with pytest.raises(ConfigurationError, match="pool_size is a setting, not an engine option"):
        Database.from_settings(settings, pool_size=0)


@pytest.mark.parametrize(
    ("argument", "field", "value"),
    [
        ("url", "database_url", "sqlite+aiosqlite:///other.db"),
        ("schema", "postgres_schema", "other"),
        ("replicas", "database_replica_urls", ["postgresql+asyncpg://app@replica/app"]),
    ],
)
def test_one_setting_under_both_its_names_is_refused(
    argument: str, field: str, value: object
) -> None:
    """One of the two was dropped without a word."""
    given: dict[str, Any] = {"url": "postgresql+asyncpg://app@localhost/app", field: value}
    if argument != "url":
        given[argument] = value
    with pytest.raises(ConfigurationError, match=f"{argument}= and {field}= are one setting"):
        Database(**given)


@pytest.mark.parametrize("name", ["a\x00b", "two\nlines"])
def test_an_application_name_that_is_not_printable_is_refused(name: str) -> None:
    """PostgreSQL refused it at every connect ("invalid startup packet layout"), which was
    answered as an outage."""
    with pytest.raises(ConfigurationError, match="is not printable"):
        Database("postgresql+asyncpg://app@localhost/app", application_name=name)


@pytest.mark.parametrize(("name", "size"), [("a" * 100, 100), ("é" * 32, 64)])
def test_an_application_name_longer_than_postgresql_keeps_is_refused_naming_its_length(
    name: str, size: int
) -> None:
    """PostgreSQL keeps 63 bytes of it: a 100-character name was taken, and shown cut in
    pg_stat_activity (whole in the SQL comments' tag)."""
    said = f"is {size} bytes long, and PostgreSQL keeps at most 63 of it"
    for url in ("postgresql+asyncpg://app@localhost/app", "sqlite+aiosqlite:///app.db"):
        with pytest.raises(ConfigurationError, match=said):
            Database(url, application_name=name)
    kept = Database("postgresql+psycopg://app@localhost/app", application_name="a" * 63)
    assert kept.settings.application_name == "a" * 63


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("postgresql+asyncpg://app@localhost/app?timeout=30", {}, "timeout"),
        (
            "postgresql+psycopg://app@localhost/app?application_name=web",
            {"application_name": "worker"},
            "application_name",
        ),
    ],
)
def test_a_url_option_dbscope_sets_from_a_setting_is_refused(
    url: str, options: dict[str, Any], key: str
) -> None:
    """The driver's own name for what dbscope sets went unread: asyncpg took dbscope's
    5 s for ?timeout=30."""
    with pytest.raises(ConfigurationError, match=f"gives \\?{key}=, which dbscope sets itself"):
        Database(url, **options)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_target_session_attrs_no_driver_takes_is_refused(driver: str) -> None:
    """It failed at the first connect, asyncpg's message naming a mappingproxy."""
    url = f"postgresql+{driver}://app@/app?host=a:5432&host=b:5432&target_session_attrs=read-wrte"
    with pytest.raises(ConfigurationError, match="target_session_attrs='read-wrte' is none"):
        Database(url)
