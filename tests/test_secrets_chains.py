"""No password in what a traceback shows of its frames, under another query key, or in an
error the driver makes of a password it cannot send.

tests/test_secrets.py holds the messages, reprs and logs; these are the places found beyond
them: the variables of a failed connect's frames (which ``pytest -l`` and error trackers
print), ``?Password=``-like keys, and asyncmy's Latin-1 passwords.
"""

import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dbscope import ConfigurationError, Database, DatabaseUnavailableError
from tests.helpers import SERVER_DRIVERNAMES, connect_to_nothing, proxied

PASSWORD = "s3cr3t-Pa55"
TESTS = str(Path(__file__).parent)


def frames(error: BaseException) -> Iterator[types.FrameType]:
    """Every frame of ``error``'s traceback and of its causes' and contexts'."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next
        current = current.__cause__ or current.__context__


def shown_variables(error: BaseException) -> str:
    """What a traceback printer that shows variables (``pytest -l``) would print of the
    frames of dbscope, SQLAlchemy and the drivers (the test's own hold the password)."""
    return "\n".join(
        f"{name} = {value!r}"
        for frame in frames(error)
        if not frame.f_code.co_filename.startswith(TESTS)
        for name, value in list(frame.f_locals.items())
    )


@pytest.mark.parametrize("drivername", SERVER_DRIVERNAMES)
async def test_no_frame_of_an_unreachable_servers_error_holds_the_password(
    drivername: str,
) -> None:
    """SQLAlchemy's ``cparams`` and asyncpg's ``params`` held it in the chain's frames."""
    _, _, error = await connect_to_nothing(drivername, PASSWORD)
    assert isinstance(error, DatabaseUnavailableError)
    assert "s3cr3t" not in shown_variables(error)
    assert error.__cause__ is not None  # the driver's error stays, its words and lines


async def test_no_frame_of_a_units_failed_connect_holds_the_password(postgres_url: str) -> None:
    """The same through a unit of work whose checkout cannot connect: the server went away
    after the Database connected (the pool's connect, then the translation at the unit's
    end, a door of its own). NullPool keeps no connection, so the checkout connects anew.
    PostgreSQL here trusts its users: the password is carried."""
    url = make_url(postgres_url).set(password=PASSWORD)
    async with proxied(url.render_as_string(hide_password=False)) as (proxy, through):
        db = Database(through, poolclass=NullPool)
        async with db:
            await proxy.cut()
            with pytest.raises(DatabaseUnavailableError) as raised:
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
            await proxy.start()  # for proxied()'s own cut
    assert "s3cr3t" not in shown_variables(raised.value)


@pytest.mark.parametrize("key", ["PASSWORD", "Password", "passwd", "pwd"])
def test_a_password_under_another_query_key_is_refused_unshown(key: str) -> None:
    """No driver here reads them, and dbscope showed them as any other option."""
    with pytest.raises(ConfigurationError) as raised:
        Database(f"postgresql+asyncpg://app@db.example/app?{key}={PASSWORD}")
    assert f"?{key}=" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize("password", ["€", "pässwörd✓"])
def test_a_password_asyncmy_cannot_send_is_refused_unshown(password: str) -> None:
    """asyncmy sends the password as Latin-1: every connect failed with its encoding error,
    which quoted the character and its place (the whole of a one-character password)."""
    url = f"mysql+asyncmy://app:{password}@db.example/app"
    with pytest.raises(ConfigurationError, match="Latin-1") as raised:
        Database(url)
    assert password[-1] not in str(raised.value)


async def test_a_latin_1_password_still_reaches_mariadb(mysql_url: str) -> None:
    """'ä' is Latin-1: taken, and sent as the driver sends it; the server refuses the login
    for the password (root has none here), not the driver for its encoding."""
    db = Database(mysql_url.replace("root@", "root:p%C3%A4ss@", 1))
    with pytest.raises(ConfigurationError, match="Access denied") as raised:
        await db.connect()
    assert "encode" not in str(raised.value)


@pytest.mark.parametrize("host", [f"postgresql://app:{PASSWORD}@db/app", f"app:{PASSWORD}@db"])
def test_a_url_pasted_as_the_postgres_host_is_refused_unshown(
    clean_env: pytest.MonkeyPatch, host: str
) -> None:
    """The host's message showed the value, and split it into a host and a port."""
    clean_env.setenv("POSTGRES_USER", "app")
    clean_env.setenv("POSTGRES_HOST", host)
    with pytest.raises(ConfigurationError, match="give a whole URL as DATABASE_URL") as raised:
        Database.from_env()
    assert "s3cr3t" not in str(raised.value)
