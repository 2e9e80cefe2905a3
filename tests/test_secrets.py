"""No password reaches a log line, a repr, a str, an error message or a response body.

Every URL here carries the distinctive password below. The local PostgreSQL trusts its users,
so a URL with a password still connects: real requests and transactions run with the password
present while every logger, SQLAlchemy's echo included, is captured at DEBUG. No ``from
__future__ import annotations``: the endpoints use a ``Session`` alias built inside a function.
"""

import logging
import traceback
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DbscopeError,
    LifecycleError,
)
from tests.conftest import url_for
from tests.helpers import SERVER_DRIVERNAMES, admin, connect_to_nothing

PASSWORD = "s3cr3t-Pa55"
FRAGMENTS = (PASSWORD, "s3cr3t", "Pa55")
TABLE = "secrets_rows"


def assert_hidden(*texts: str) -> None:
    """Fail if any text shows the password or a recognisable piece of it."""
    for shown in texts:
        for fragment in FRAGMENTS:
            assert fragment not in shown, f"{fragment!r} appears in: {shown}"


def full_traceback(error: BaseException) -> str:
    """The traceback Python would print for ``error``, chained causes included."""
    return "".join(traceback.format_exception(error))


def with_password(url: str) -> str:
    """``url`` with the test password set."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def postgres_parts_env(monkeypatch: pytest.MonkeyPatch, postgres_url: str) -> None:
    """Set POSTGRES_* variables (with the password) describing ``postgres_url``'s server."""
    url = make_url(postgres_url)
    monkeypatch.setenv("POSTGRES_USER", str(url.username))
    monkeypatch.setenv("POSTGRES_PASSWORD", PASSWORD)
    monkeypatch.setenv("POSTGRES_HOST", str(url.host))
    monkeypatch.setenv("POSTGRES_PORT", str(url.port or 5432))
    monkeypatch.setenv("POSTGRES_DB", str(url.database))


def build_app(db: Database) -> FastAPI:
    """One endpoint that writes a row and reads the count back."""
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows")
    async def add_row(session: Session) -> dict[str, int]:
        await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (1)"))
        count = (await session.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar_one()
        return {"count": int(count)}

    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """An in-process client; the lifespan is run by the test itself."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


# -- repr and str -----------------------------------------------------------------------------

SERVER_URLS = [
    f"postgresql+asyncpg://app:{PASSWORD}@db.example:5432/app",
    f"postgresql+psycopg://app:{PASSWORD}@db.example:5432/app",
    f"mysql+asyncmy://app:{PASSWORD}@db.example:3306/app",
    f"postgresql://app:{PASSWORD}@db.example/app",
]


@pytest.mark.parametrize("url", SERVER_URLS)
def test_database_repr_and_str_hide_the_password(url: str) -> None:
    """repr(db) and str(db) show the URL with the password masked."""
    db = Database(url)
    assert "db.example" in repr(db)
    assert_hidden(repr(db), str(db))


@pytest.mark.parametrize("url", SERVER_URLS)
def test_database_url_repr_and_str_hide_the_password(url: str) -> None:
    """repr(db.url) and str(db.url) mask the password, while the URL still holds it."""
    db = Database(url)
    assert db.url.password == PASSWORD
    assert_hidden(repr(db.url), str(db.url))


@pytest.mark.parametrize("url", SERVER_URLS)
def test_settings_repr_and_str_hide_a_url_password(url: str) -> None:
    """repr and str of db.settings built from a URL with a password do not show it."""
    db = Database(url)
    assert_hidden(repr(db.settings), str(db.settings), repr(db.settings.url))


def test_settings_repr_and_str_hide_postgres_password(clean_env: pytest.MonkeyPatch) -> None:
    """A POSTGRES_PASSWORD read from the environment is masked in the settings and the URL."""
    postgres_parts_env(clean_env, "postgresql://app@db.example:5432/app")
    db = Database.from_env()
    assert db.url.password == PASSWORD
    assert_hidden(repr(db.settings), str(db.settings), repr(db), str(db), repr(db.url))


async def test_a_connected_database_repr_hides_the_password(postgres_url: str) -> None:
    """repr(db) of a Database connected with a password (trust auth accepts it) masks it."""
    db = Database(with_password(postgres_url))
    async with db:
        assert db.state == "connected"
        assert_hidden(repr(db), str(db), repr(db.engine), str(db.engine.url))


# -- configuration errors ---------------------------------------------------------------------


def config_error(url: str, **options: Any) -> ConfigurationError:
    """The ConfigurationError that Database(url, **options) raises."""
    with pytest.raises(ConfigurationError) as info:
        Database(url, **options)
    return info.value


def test_a_sync_driver_error_hides_the_password() -> None:
    """The error for a synchronous driver shows neither the password nor its traceback."""
    error = config_error(f"postgresql+psycopg2://app:{PASSWORD}@db.example/app")
    assert "psycopg2" in str(error)
    assert_hidden(str(error), repr(error), full_traceback(error))


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg//app:{PASSWORD}@db.example/app",
        # The host forgotten: SQLAlchemy reads the password as the port.
        f"postgresql+asyncpg://app:{PASSWORD}/app",
    ],
    ids=["missing-colon", "missing-host"],
)
def test_an_unparseable_url_error_hides_the_password(url: str) -> None:
    """The error for a URL that cannot be parsed does not repeat the password in it."""
    error = config_error(url)
    assert "argument url" in str(error)
    assert_hidden(str(error), repr(error), full_traceback(error))


def test_an_invalid_pool_size_error_hides_the_url_password() -> None:
    """pool_size=-1 given with a password URL fails without showing the password."""
    error = config_error(f"postgresql+asyncpg://app:{PASSWORD}@db.example/app", pool_size=-1)
    assert "got -1" in str(error)
    assert_hidden(str(error), repr(error), full_traceback(error))


@pytest.mark.parametrize("source", ["DATABASE_URL", "POSTGRES_PASSWORD"])
def test_an_invalid_pool_size_variable_error_hides_the_password(
    clean_env: pytest.MonkeyPatch, source: str
) -> None:
    """POOL_SIZE=-1 next to a password in the environment fails without showing it."""
    if source == "DATABASE_URL":
        clean_env.setenv("DATABASE_URL", f"postgresql+asyncpg://app:{PASSWORD}@db.example/app")
    else:
        postgres_parts_env(clean_env, "postgresql://app@db.example:5432/app")
    clean_env.setenv("POOL_SIZE", "-1")
    with pytest.raises(ConfigurationError) as info:
        Database.from_env()
    assert "POOL_SIZE" in str(info.value)
    assert_hidden(str(info.value), repr(info.value), full_traceback(info.value))


# Where the tail of a password with an unencoded '@' lands: the host, or with a ':', '/' or
# '?' in it the port, the database or the query.
SPLIT_PASSWORDS = ["s3cr3t@Pa55", "s3cr3t@Pa55:1/x", "s3cr3t@Pa55/x", "s3cr3t@Pa55?x=1"]


@pytest.mark.parametrize("split_password", SPLIT_PASSWORDS)
def test_a_password_with_an_unencoded_at_is_rejected_showing_none_of_it(
    split_password: str,
) -> None:
    """user:pass@word@host fails asking for %40, and shows neither half of the password."""
    for url in (
        f"postgresql+asyncpg://app:{split_password}@db.example:5432/app",
        f"mysql+asyncmy://app:{split_password}@db.example/app",
    ):
        error = config_error(url)
        assert "%40" in str(error)
        assert_hidden(str(error), repr(error), full_traceback(error))
    replica = f"postgresql+asyncpg://app:{split_password}@replica.example/app"
    with pytest.raises(ConfigurationError) as refused:
        Database("postgresql+asyncpg://app@db.example/app", replicas=[replica])
    assert_hidden(str(refused.value), full_traceback(refused.value))


def test_a_user_name_with_an_unencoded_slash_is_rejected_showing_no_password() -> None:
    """team/app:password@host/db would parse as host 'team' and the rest, password included,
    as the database name: it fails asking for %2F, and shows none of the password."""
    error = config_error(f"postgresql+asyncpg://team/app:{PASSWORD}@db.example/app")
    assert "%2F" in str(error)
    assert_hidden(str(error), repr(error), full_traceback(error))


@pytest.mark.parametrize("password", [PASSWORD, "s3cr3t/Pa55", "s3cr3t?Pa55", "s3cr3t#Pa55"])
def test_a_patroni_url_with_credentials_is_rejected_whatever_they_hold(password: str) -> None:
    """Credentials in a Patroni URL are refused whichever character splits them (a '#' made
    the rest a fragment, a '/' or '?' a port that is no number), and never shown."""
    with pytest.raises(ConfigurationError, match="write it without credentials") as bad:
        Database(
            "postgresql+asyncpg://app@db.example/app",
            replicas=["postgresql+asyncpg://app@replica.example/app"],
            replica_patroni_urls=[f"http://patroni:{password}@10.0.0.5:8008"],
        )
    assert_hidden(str(bad.value), full_traceback(bad.value))


def test_an_ssl_key_passphrase_in_the_url_is_rejected_showing_none_of_it() -> None:
    """?sslpassword= would show wherever the URL does: it is refused, and sent to
    connect_args."""
    error = config_error(f"postgresql+psycopg://app@db.example/app?sslpassword={PASSWORD}")
    assert "connect_args={'sslpassword': ...}" in str(error)
    assert_hidden(str(error), repr(error), full_traceback(error))


def test_an_at_past_the_user_part_may_stand_encoded() -> None:
    """An '@' in the query written %40, or in a SQLite file's path, is no password's."""
    db = Database(f"postgresql+asyncpg://app:{PASSWORD}@db.example/app?application_name=a%40b")
    assert db.url.query["application_name"] == "a@b"
    assert Database("sqlite+aiosqlite:///data/a@b.db").url.database == "data/a@b.db"


def test_dumped_settings_hide_the_url_passwords() -> None:
    """model_dump() and model_dump_json(), as an app may log them, mask every URL's password."""
    settings = DatabaseSettings(
        database_url=f"postgresql+asyncpg://app:{PASSWORD}@db.example/app",
        database_replica_urls=[f"postgresql+asyncpg://app:{PASSWORD}@replica.example/app"],
    )
    dumped = settings.model_dump()
    assert dumped["database_url"] == "postgresql+asyncpg://app:***@db.example/app"
    assert dumped["database_replica_urls"] == ("postgresql+asyncpg://app:***@replica.example/app",)
    assert_hidden(str(dumped), str(settings.model_dump(mode="json")), settings.model_dump_json())


def test_a_patroni_url_that_is_not_one_is_never_echoed() -> None:
    """A value pasted into the Patroni URLs by mistake may be a password: it is not shown."""
    with pytest.raises(ConfigurationError, match="URL 1 of 1 is not a Patroni REST API URL") as bad:
        Database(
            "postgresql+asyncpg://app@db.example/app",
            replicas=["postgresql+asyncpg://app@replica.example/app"],
            replica_patroni_urls=[PASSWORD],
        )
    assert_hidden(str(bad.value))


# -- a password given as ?password= -----------------------------------------------------------

QUERY_PASSWORD_URLS = [
    f"postgresql+asyncpg://app@db.example:5432/app?password={PASSWORD}",
    f"postgresql+psycopg://app@db.example:5432/app?sslmode=disable&password={PASSWORD}",
    f"mysql+asyncmy://app@db.example:3306/app?password={PASSWORD}",
]


@pytest.mark.parametrize("url", QUERY_PASSWORD_URLS, ids=["asyncpg", "psycopg", "asyncmy"])
def test_a_query_password_is_hidden_in_repr_and_str(url: str) -> None:
    """A ?password= is masked like any password in the Database, its URL and its settings."""
    db = Database(url)
    assert "db.example" in repr(db)
    assert_hidden(repr(db), str(db), repr(db.url), str(db.url), repr(db.settings))


async def test_a_query_password_is_hidden_in_a_lifecycle_error() -> None:
    """A transaction before connect() fails naming the Database without its ?password=."""
    db = Database(QUERY_PASSWORD_URLS[0])
    with pytest.raises(LifecycleError) as info:
        async with db.transaction():
            pass
    assert "db.example" in str(info.value)
    assert_hidden(str(info.value), repr(info.value), full_traceback(info.value))


async def test_a_query_password_is_the_password_the_driver_logs_in_with(postgres_url: str) -> None:
    """A role with a password connects through ?password=, which the driver gets as password.

    The local server trusts 127.0.0.1, so the login alone would pass with any password; the
    driver's connect arguments show it is given this one.
    """
    role = f"dbscope_password_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).set(username=role).update_query_dict({"password": PASSWORD})
    async with admin(postgres_url) as connection:
        await connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
        try:
            db = Database(url.render_as_string(hide_password=False))
            async with db, db.transaction() as session:
                user = (await session.execute(text("SELECT current_user"))).scalar_one()
                _, connect_args = db.engine.dialect.create_connect_args(db.engine.url)
        finally:
            await connection.execute(text(f"DROP ROLE {role}"))
    assert user == role
    assert connect_args["password"] == PASSWORD


# -- connection errors ------------------------------------------------------------------------


async def test_a_connect_error_shows_the_servers_words_whole_beside_a_short_password(
    postgres_url: str,
) -> None:
    """With the password 'x', the server's "does not exist" is shown whole, not "e***ist"."""
    url = make_url(postgres_url).set(password="x", database="dbscope_no_such_db")
    db = Database(url.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError) as info:
        await db.connect()
    assert 'database "dbscope_no_such_db" does not exist' in str(info.value)


@pytest.mark.parametrize("drivername", SERVER_DRIVERNAMES)
async def test_an_unreachable_server_error_hides_the_password(drivername: str) -> None:
    """DatabaseUnavailableError, and its whole chained traceback, never show the password."""
    _, port, error = await connect_to_nothing(drivername, PASSWORD)
    assert f"127.0.0.1:{port}" in str(error)
    assert error.__cause__ is not None
    assert_hidden(str(error), repr(error), full_traceback(error))


async def test_a_refused_login_error_hides_the_password(tmp_path: Path) -> None:
    """MariaDB refusing a user with the password shows neither in the error nor its causes."""
    url = make_url(url_for("asyncmy", tmp_path)).set(username="dbscope_nobody")
    db = Database(url.set(password=PASSWORD).render_as_string(hide_password=False))
    with pytest.raises(DbscopeError) as info:
        await db.connect()
    assert "dbscope_nobody" in str(info.value)
    assert_hidden(str(info.value), repr(info.value), full_traceback(info.value))


# -- logs and responses -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["url", "postgres-variables"])
async def test_no_log_line_shows_the_password(
    postgres_url: str,
    source: str,
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Connect, serve requests, run transactions and dispose with echo on: no log shows it."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    if source == "url":
        db = Database(with_password(postgres_url), echo=True)
    else:
        postgres_parts_env(clean_env, postgres_url)
        clean_env.setenv("ECHO", "true")
        db = Database.from_env()
    app = build_app(db)
    async with app.router.lifespan_context(app):
        async with db.transaction() as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
            await session.execute(text(f"CREATE TABLE {TABLE} (value INTEGER)"))
        async with client_for(app) as client:
            responses = [await client.post("/rows") for _ in range(2)]
        async with db.transaction() as session:
            await session.execute(text(f"DROP TABLE {TABLE}"))
    assert [response.json() for response in responses] == [{"count": 1}, {"count": 2}]
    assert any(record.name == "dbscope" for record in caplog.records)
    assert f"CREATE TABLE {TABLE}" in caplog.text
    output = capsys.readouterr()
    assert_hidden(caplog.text, output.out, output.err)
    assert_hidden(*(str(record.args) for record in caplog.records))


async def test_a_503_response_body_hides_the_password(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the only pooled connection held, a request gets 503 and no password in the body."""
    caplog.set_level(logging.DEBUG)
    db = Database(with_password(postgres_url), pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = build_app(db)
    async with app.router.lifespan_context(app), db.transaction() as holding:
        await holding.execute(text("SELECT 1"))
        async with client_for(app) as client:
            response = await client.post("/rows")
    assert response.status_code == 503
    assert "pool_timeout" in response.text
    assert_hidden(response.text, str(response.headers), caplog.text)
