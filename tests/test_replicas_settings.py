"""Read replicas, settings and lifecycle: replicas named in code or the environment, bad
values refused by name, no password shown, and the replicas' watch and pools ended with the
Database; on a real primary and streaming replica.
"""

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from dbscope import ConfigurationError, Database, DatabaseSettings
from dbscope.testing import rolled_back
from tests.helpers import admin, wait_until_none
from tests.replica_reads import TABLE, add_item, fallbacks, has_item, in_recovery, served
from tests.server import free_port

pytest_plugins = ["tests.replica_fixtures"]

PASSWORD = "S3cret-replica"
PRIMARY = "postgresql+asyncpg://app@127.0.0.1:5432/app"
REPLICA = "postgresql+asyncpg://app@127.0.0.1:5434/app"
FIX = "'16MB' (16,000,000 bytes), '16MiB' (16,777,216) or '512kB'"


def with_password(url: str) -> str:
    """``url`` with the user's password set to :data:`PASSWORD` (trust ignores it)."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def watching(db: Database) -> list[asyncio.Task[Any]]:
    """The tasks that check ``db``'s replicas in the background."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "_watch_replicas" in repr(task.get_coro())
    ]


async def test_replicas_are_read_from_the_environment_behind_a_prefix(
    urls: tuple[str, str], clean_env: pytest.MonkeyPatch
) -> None:
    """APP_DATABASE_REPLICA_URLS lists replicas, comma-separated, read by from_env("APP_")."""
    primary, replica = urls
    clean_env.setenv("APP_DATABASE_URL", primary)
    clean_env.setenv("APP_DATABASE_REPLICA_URLS", f"{replica}, {replica}")
    clean_env.setenv("APP_REPLICA_MAX_LAG", "512kB")
    async with Database.from_env("APP_") as db:
        async with db.transaction(read_only=True) as session:
            assert await in_recovery(session)
        replicas = db.stats().replicas
    assert [str(url) for url in db.settings.database_replica_urls] == [replica, replica]
    assert int(db.settings.replica_max_lag) == 512_000
    assert len(replicas) == 2
    assert sum(one.served for one in replicas) == 1


@pytest.mark.parametrize(
    ("given", "size"),
    [("16MB", 16_000_000), ("16MiB", 16 * 1024 * 1024), ("512kB", 512_000), (4096, 4096)],
)
def test_replica_max_lag_takes_a_size_with_a_unit(given: object, size: int) -> None:
    """replica_max_lag is bytes of WAL, with or without a unit."""
    db = Database(PRIMARY, replicas=[REPLICA], replica_max_lag=given)
    assert int(db.settings.replica_max_lag) == size


@pytest.mark.parametrize(
    ("options", "named", "fix"),
    [
        ({"replica_max_lag": "lots"}, "keyword argument replica_max_lag='lots'", FIX),
        ({"replica_max_lag": -1}, "keyword argument replica_max_lag=-1", FIX),
        ({"replica_wait": -1}, "keyword argument replica_wait=-1", "or a number of seconds"),
        (
            {"replica_check_interval": 0},
            "keyword argument replica_check_interval=0",
            "must be at least 0.05 seconds, got 0",
        ),
        (
            {"replica_check_interval": 1e-6},
            "keyword argument replica_check_interval=1e-06",
            "must be at least 0.05 seconds, got 1e-06",
        ),
        (
            {"replica_check_interval": 1e9},
            "keyword argument replica_check_interval=1000000000.0",
            "must be at most 3600 seconds, got 1e+09",
        ),
        (
            {"replica_wait": 1e9},
            "keyword argument replica_wait=1000000000.0",
            "must be at most 10 seconds, got 1e+09",
        ),
        (
            {"replicas": [PRIMARY.replace("app@", "other@")]},
            "argument replicas",
            "a replica URL names the primary itself (postgresql at 127.0.0.1:5432, database "
            "'app'): name a streaming replica's host and port, or remove it",
        ),
        (  # named by its value: "got a int" said which type, not which replica
            {"replicas": [REPLICA, 42]},
            "argument replicas",
            "each replica must be a URL string or a sqlalchemy URL, got 42",
        ),
        (  # by its type alone: bytes may hold a password
            {"replicas": [b"postgresql://app:pw@127.0.0.1:5434/app"]},
            "argument replicas",
            "got a bytes (not shown: it may hold a password)",
        ),
        ({"replicas": 5}, "argument replicas", "(comma-separated in the environment), got 5"),
        ({"replicas": ["not a url"]}, "argument replicas", "dialect+driver://user:password@"),
        (
            {"replicas": ["postgresql+psycopg://app@127.0.0.1:5434/app"]},
            "argument replicas",
            "Name the same driver in every URL ('postgresql+asyncpg://...')",
        ),
        (
            {"replica_patroni_urls": ["http://127.0.0.1:8009", "http://127.0.0.1:8010"]},
            "argument replica_patroni_urls",
            "2 Patroni URLs for 1 replicas: give one per replica, in the same order, or none.",
        ),
        (
            {"replica_patroni_urls": ["127.0.0.1:8009"]},
            "argument replica_patroni_urls",
            "URL 1 of 1 is not a Patroni REST API URL (not shown: it may be a pasted password): "
            "write it as 'http://host:8008'",
        ),
        (
            {"replica_patroni_urls": ["http://127.0.0.1:8009/replica"]},
            "argument replica_patroni_urls",
            "write it without credentials, path or query (got one for 127.0.0.1:8009)",
        ),
        (  # braces in the host: once a format string, now text (a KeyError before)
            {"replica_patroni_urls": ["http://a{b}:8009/replica"]},
            "argument replica_patroni_urls",
            "write it without credentials, path or query (got one for a{b}:8009)",
        ),
    ],
)
def test_bad_replica_arguments_are_refused_naming_them(
    options: dict[str, Any], named: str, fix: str
) -> None:
    """A bad replica setting given in code fails at construction, named as the keyword."""
    options.setdefault("replicas", [REPLICA])
    with pytest.raises(ConfigurationError) as raised:
        Database(PRIMARY, **options)
    assert f"{named}: " in str(raised.value)
    assert fix in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        ("APP_REPLICA_MAX_LAG", "lots", FIX),
        ("APP_REPLICA_WAIT", "-1", "or a number of seconds"),
        ("APP_REPLICA_CHECK_INTERVAL", "0", "must be at least 0.05 seconds"),
        ("APP_REPLICA_CHECK_INTERVAL", "1e-6", "must be at least 0.05 seconds"),
        ("APP_REPLICA_WAIT", "1e9", "must be at most 10 seconds"),
    ],
)
def test_bad_replica_variables_are_refused_naming_them(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, fix: str
) -> None:
    """A bad replica setting in the environment fails at construction, named as the variable."""
    clean_env.setenv("APP_DATABASE_URL", PRIMARY)
    clean_env.setenv("APP_DATABASE_REPLICA_URLS", REPLICA)
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        Database.from_env("APP_")
    assert f"environment variable {variable}='{value}': " in str(raised.value)
    assert fix in str(raised.value)


def test_a_patroni_url_with_credentials_is_refused_without_showing_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """REPLICA_PATRONI_URLS with a user and password is refused; the password shows nowhere."""
    clean_env.setenv("DATABASE_URL", PRIMARY)
    clean_env.setenv("DATABASE_REPLICA_URLS", REPLICA)
    clean_env.setenv("REPLICA_PATRONI_URLS", f"http://patroni:{PASSWORD}@127.0.0.1:8009")
    with pytest.raises(ConfigurationError) as raised:
        Database.from_env()
    assert "environment variable REPLICA_PATRONI_URLS" in str(raised.value)
    assert "write it without credentials" in str(raised.value)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("primary", "replica"),
    [
        ("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite:///replica.db"),
        ("mysql+asyncmy://root@127.0.0.1:3306/app", "mysql+asyncmy://root@127.0.0.1:3307/app"),
        (PRIMARY, "mysql+asyncmy://root@127.0.0.1:3307/app"),
        (PRIMARY, "mysql+aiomysql://root@127.0.0.1:3307/app"),
        (PRIMARY, "mysql://root@127.0.0.1:3307/app"),
    ],
)
def test_replicas_of_other_databases_than_postgresql_are_refused(
    primary: str, replica: str
) -> None:
    """Replicas are PostgreSQL streaming replicas: SQLite and MariaDB ones are refused, with
    no advice to install their drivers."""
    with pytest.raises(ConfigurationError) as raised:
        Database(primary, replicas=[with_password(replica)])
    message = str(raised.value)
    assert "argument replicas: replicas are PostgreSQL streaming replicas only" in message
    assert "remove it, or name a PostgreSQL replica of the primary" in message
    assert "install" not in message
    assert PASSWORD not in message


def test_replicas_named_in_the_environment_for_sqlite_are_refused_naming_the_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """DATABASE_REPLICA_URLS with a SQLite primary is refused, named as the variable."""
    clean_env.setenv("DATABASE_URL", "sqlite+aiosqlite:///app.db")
    clean_env.setenv("DATABASE_REPLICA_URLS", "sqlite+aiosqlite:///replica.db")
    with pytest.raises(ConfigurationError) as raised:
        Database.from_env()
    assert "environment variable DATABASE_REPLICA_URLS: replicas are PostgreSQL" in str(
        raised.value
    )


@pytest.mark.parametrize("separator", [" ", ";", "; "])
def test_replica_urls_joined_otherwise_than_by_commas_are_refused_saying_so(
    clean_env: pytest.MonkeyPatch, separator: str
) -> None:
    """DATABASE_REPLICA_URLS joined by a space or ';': told to separate them with commas,
    not that an '@' is not percent-encoded; no password shown."""
    clean_env.setenv("DATABASE_URL", PRIMARY)
    second = REPLICA.replace("5434", "5435")
    clean_env.setenv("DATABASE_REPLICA_URLS", separator.join(map(with_password, [REPLICA, second])))
    with pytest.raises(ConfigurationError) as raised:
        Database.from_env()
    message = str(raised.value)
    assert "environment variable DATABASE_REPLICA_URLS: one replica URL holds 2 URLs" in message
    assert "separate the replica URLs with commas" in message
    assert "percent-encoded" not in message
    assert PASSWORD not in message


def test_replicas_given_to_database_settings_are_pointed_to_its_own_name() -> None:
    """DatabaseSettings(replicas=...), Database's keyword: told database_replica_urls."""
    given: dict[str, Any] = {"database_url": PRIMARY, "replicas": [REPLICA]}  # Database's name
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings(**given)
    expected = "unknown setting 'replicas': did you mean 'database_replica_urls'?"
    assert expected in str(raised.value)


async def test_no_password_of_a_replica_shows_in_reprs_errors_or_logs(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture, clean_env: pytest.MonkeyPatch
) -> None:
    """A replica URL's password is in no repr, error message or log record, whether the
    replica serves or cannot be reached."""
    caplog.set_level(logging.DEBUG)
    primary, replica = urls
    unreachable = make_url(replica).set(port=free_port()).render_as_string(False)
    replicas = [with_password(replica), with_password(unreachable)]
    shown = []
    async with Database(primary, replicas=replicas) as db:
        async with db.transaction(read_only=True) as session:
            assert await in_recovery(session)
        shown += [repr(db), repr(db.settings), repr(db.stats()), str(db.stats())]
    wrong: list[dict[str, Any]] = [
        {"replicas": replicas, "replica_wait": -1},
        {"replicas": [*replicas, 42]},
    ]
    for options in wrong:
        with pytest.raises(ConfigurationError) as raised:
            Database(primary, **options)
        shown.append(str(raised.value))
    clean_env.setenv("DATABASE_URL", primary)
    clean_env.setenv("DATABASE_REPLICA_URLS", ",".join([*replicas, "mysql://a:b@c/d"]))
    with pytest.raises(ConfigurationError) as raised:
        Database.from_env()
    shown.append(str(raised.value))
    logged = [record.getMessage() for record in caplog.records]
    assert any("serves no reads: it could not be reached" in line for line in logged)
    assert all(PASSWORD not in text for text in shown + logged)


async def test_dispose_ends_the_watch_and_every_replica_connection(
    urls: tuple[str, str],
) -> None:
    """After dispose() no check runs and the replica holds none of the Database's
    connections; connect() again serves reads from the replica."""
    name = "dbscope-replica-dispose"
    primary, replica = urls
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
    db = Database(primary, replicas=[replica], application_name=name)
    async with admin(replica) as observer:
        async with db:
            await db.parallel(in_recovery, in_recovery)
            assert len(watching(db)) == 1
            assert await observer.scalar(text(count), {"name": name})
        assert watching(db) == []
        await wait_until_none(observer, count, name=name)
        async with db:
            async with db.transaction(read_only=True) as session:
                assert await in_recovery(session)
            assert served(db) == 3  # counted over the Database's life, as retries are
        await wait_until_none(observer, count, name=name)


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "never-connected"])
async def test_a_database_bound_to_a_test_runs_read_only_units_on_the_tests_connection(
    urls: tuple[str, str], connected: bool
) -> None:
    """dbscope.testing's rolled_back() binds the Database: read-only units run inside the
    test's transaction on the primary, seeing its writes, never on the replica."""
    primary, replica = urls
    db = Database(primary, replicas=[replica])
    engine = create_async_engine(primary)
    try:
        if connected:
            await db.connect()
        async with rolled_back(db, engine):
            await add_item(db, 1)
            async with db.transaction(read_only=True) as session:
                assert not await in_recovery(session)
                assert await has_item(session, 1)
        if connected:
            assert (served(db), fallbacks(db)) == (0, {})
            assert db.write_token() is None
    finally:
        await db.dispose()
        await engine.dispose()
    async with admin(primary) as connection:
        assert not await connection.scalar(text(f"SELECT count(*) FROM {TABLE}"))
