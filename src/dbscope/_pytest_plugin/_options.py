"""The plugin's options and ini settings (docs/testing.md), and reading them."""

from __future__ import annotations

import os
from typing import Final

import pytest

URL_VARIABLE: Final = "DBSCOPE_TEST_URL"

# (name, help) of the yes/no settings, each both a command-line flag and an ini setting.
FLAGS: Final = (
    (
        "dbscope_reuse_db",
        "Keep the run's test database at the end and reuse it in the next run, instead of "
        "creating it anew.",
    ),
    (
        "dbscope_keep_tables",
        "Keep the run's test database and its tables at the end (the next run without "
        "--dbscope-reuse-db drops and recreates it).",
    ),
    (
        "dbscope_use_existing_tables",
        "Run on tables of the app that the test database already has and dbscope did not "
        "create, instead of refusing to; they are never dropped.",
    ),
    (
        "dbscope_raise_on_lazy_load",
        "Make every lazy load in the app and the tests raise dbscope.LazyLoadError.",
    ),
)

# (name, help) of the ini settings that take a value.
VALUES: Final = (
    ("dbscope_url", "URL of the database the test database is named after (name_test)."),
    ("dbscope_database", "The app's Database, as 'package.module:name'."),
    ("dbscope_app", "The ASGI app, as 'package.module:name'."),
    (
        "dbscope_metadata",
        "The MetaData (or declarative base) whose tables to create, as 'module:name'.",
    ),
    (
        "dbscope_alembic_config",
        "alembic.ini whose migrations create the tables (instead of dbscope_metadata).",
    ),
    (
        "dbscope_async_plugin",
        "The plugin that runs the async tests: pytest-asyncio or anyio "
        "(default: pytest-asyncio if it is active, else anyio).",
    ),
    (
        "dbscope_loop_scope",
        "The scope of the event loop the tests run in: function, class, module, package or "
        "session (default: asyncio_default_test_loop_scope under pytest-asyncio, else "
        "function).",
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The command-line options and the ini settings of docs/testing.md."""
    group = parser.getgroup("dbscope", "dbscope: one rolled-back transaction per test")
    group.addoption(
        "--dbscope-url",
        dest="dbscope_url",
        metavar="URL",
        help=f"URL of the database the test database is named after (else ${URL_VARIABLE}, "
        "else the dbscope_url setting).",
    )
    for name, description in FLAGS:
        option = "--" + name.replace("_", "-")
        group.addoption(option, dest=name, action="store_true", default=None, help=description)
        parser.addini(name, description, type="bool", default=False)
    for name, description in VALUES:
        parser.addini(name, description, default="")


def url_setting(config: pytest.Config) -> tuple[str, str]:
    """The URL the settings give and the one that gave it (``--dbscope-url``,
    ``DBSCOPE_TEST_URL`` or ``dbscope_url``); ``("", "")`` if none does."""
    given = (
        (config.getoption("dbscope_url"), "--dbscope-url"),
        (os.environ.get(URL_VARIABLE), URL_VARIABLE),
        (config.getini("dbscope_url"), "dbscope_url"),
    )
    for value, name in given:
        if value:
            return str(value), name
    return "", ""


def flag(config: pytest.Config, name: str) -> bool:
    """A yes/no setting: the command-line flag if given, else the ini setting.

    Raises:
        pytest.UsageError: the ini setting is no yes or no, named (pytest's own said only
            "invalid truth value").
    """
    option = config.getoption(name)
    if option is not None:
        return bool(option)
    try:
        return bool(config.getini(name))
    except (ValueError, pytest.UsageError) as error:
        message = f"{name} = ... in the ini settings is no yes or no ({error}): use true or false."
        raise pytest.UsageError(message) from None


def worker_id(config: pytest.Config) -> str | None:
    """pytest-xdist's id of this worker process (``gw0``); None without workers.

    The controller of an xdist run has none either, and runs no test, so it never asks for
    the run's database.
    """
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])
