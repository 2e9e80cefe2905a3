"""The pgbouncer setting: its values, where it is read from, and what it refuses at start-up.

A wrong value, a database PgBouncer does not pool, or a connect option that cannot pass
PgBouncer's transaction mode fails when the Database is made, naming it as given and the
fix; no server is needed for any of it. What the preset does through a real PgBouncer is in
test_pgbouncer.py.
"""

from typing import Any

import pytest

from dbscope import ConfigurationError, Database

URLS = {
    "asyncpg": "postgresql+asyncpg://app@127.0.0.1:6432/app",
    "psycopg": "postgresql+psycopg://app@127.0.0.1:6432/app",
}


def refusal(url: str, **options: Any) -> str:
    """The message of the ConfigurationError that ``Database(url, **options)`` raises."""
    with pytest.raises(ConfigurationError) as info:
        Database(url, **options)
    return str(info.value)


@pytest.mark.parametrize("value", ["transaction", "transaction-prepared", " Transaction "])
def test_each_mode_is_taken_as_a_keyword(value: str) -> None:
    """pgbouncer= takes both modes, in any case, around any spaces."""
    db = Database(URLS["asyncpg"], pgbouncer=value)
    assert db.settings.pgbouncer == value.strip().lower()


def test_without_pgbouncer_the_setting_is_none() -> None:
    """Unset, there is no PgBouncer: nothing changes."""
    assert Database(URLS["psycopg"]).settings.pgbouncer is None


@pytest.mark.parametrize("prefix", ["", "APP_"])
def test_the_mode_is_read_from_the_environment_behind_a_prefix(
    clean_env: pytest.MonkeyPatch, prefix: str
) -> None:
    """PGBOUNCER, or APP_PGBOUNCER for from_env("APP_"), sets it."""
    clean_env.setenv(f"{prefix}DATABASE_URL", URLS["asyncpg"])
    clean_env.setenv(f"{prefix}PGBOUNCER", "transaction-prepared")
    assert Database.from_env(prefix).settings.pgbouncer == "transaction-prepared"


def test_a_wrong_keyword_value_is_named_with_the_choices() -> None:
    """pgbouncer='session' fails naming the argument, the value and both modes."""
    message = refusal(URLS["asyncpg"], pgbouncer="session")
    assert "pgbouncer='session'" in message
    assert "'transaction' or 'transaction-prepared'" in message
    assert "in session mode PgBouncer needs nothing" in message


def test_a_wrong_variable_is_named_as_the_prefixed_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """APP_PGBOUNCER=statement fails naming the variable, as the environment has it."""
    clean_env.setenv("APP_DATABASE_URL", URLS["psycopg"])
    clean_env.setenv("APP_PGBOUNCER", "statement")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env("APP_")
    assert "APP_PGBOUNCER='statement'" in str(info.value)
    assert "'transaction' or 'transaction-prepared'" in str(info.value)


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///app.db", "mysql+asyncmy://root@127.0.0.1:3306/app"]
)
def test_a_database_pgbouncer_does_not_pool_is_refused(url: str) -> None:
    """PgBouncer in front of SQLite or MariaDB is a mistake, said at construction."""
    message = refusal(url, pgbouncer="transaction")
    assert "pgbouncer='transaction'" in message
    assert "PgBouncer pools PostgreSQL connections" in message


@pytest.mark.parametrize(
    ("driver", "mode", "options", "named"),
    [
        ("asyncpg", "transaction", {"statement_cache_size": 100}, "statement_cache_size=100"),
        (
            "asyncpg",
            "transaction",
            {"prepared_statement_cache_size": 50},
            "prepared_statement_cache_size=50",
        ),
        (
            "asyncpg",
            "transaction",
            {"prepared_statement_name_func": lambda: "__dbscope_1__"},
            "prepared_statement_name_func",
        ),
        ("psycopg", "transaction", {"prepare_threshold": 5}, "prepare_threshold=5"),
        (
            "asyncpg",
            "transaction-prepared",
            {"server_settings": {"jit": "off"}},
            "server_settings sets ['jit']",
        ),
        ("psycopg", "transaction", {"options": "-c jit=off"}, "options='-c jit=off'"),
    ],
    ids=["asyncpg-cache", "sqlalchemy-cache", "name-func", "prepare", "settings", "options"],
)
def test_a_connect_option_that_cannot_pass_pgbouncer_is_refused(
    driver: str, mode: str, options: dict[str, Any], named: str
) -> None:
    """What transaction mode cannot carry is refused at construction, saying why and the fix."""
    message = refusal(URLS[driver], pgbouncer=mode, connect_args=options)
    assert f"pgbouncer={mode!r}" in message
    assert named in message
    assert "Remove it" in message or "ALTER ROLE" in message


def test_a_statement_cache_in_the_urls_query_is_refused_too() -> None:
    """?prepared_statement_cache_size=100 reaches asyncpg as a connect argument: refused."""
    url = URLS["asyncpg"] + "?prepared_statement_cache_size=100"
    assert "prepared_statement_cache_size='100'" in refusal(url, pgbouncer="transaction")


@pytest.mark.parametrize(
    ("driver", "mode", "options"),
    [
        (
            "asyncpg",
            "transaction",
            {"server_settings": {"application_name": "app", "TimeZone": "UTC"}},
        ),
        ("asyncpg", "transaction", {"statement_cache_size": 0}),
        ("asyncpg", "transaction-prepared", {"statement_cache_size": 500}),
        ("psycopg", "transaction", {"prepare_threshold": None}),
        ("psycopg", "transaction-prepared", {"prepare_threshold": 1}),
        ("psycopg", "transaction", {"options": "-c TimeZone=UTC --DateStyle=ISO"}),
    ],
    ids=[
        "tracked-settings",
        "no-cache",
        "cache-kept",
        "no-prepare",
        "prepare-kept",
        "tracked-options",
    ],
)
def test_what_pgbouncer_carries_is_accepted(
    driver: str, mode: str, options: dict[str, Any]
) -> None:
    """Parameters PgBouncer tracks per client, and caches in 'transaction-prepared', pass."""
    db = Database(URLS[driver], pgbouncer=mode, connect_args=options)
    assert db.settings.pgbouncer == mode
