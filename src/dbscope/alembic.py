"""Alembic from the application's own settings: a one-line env.py, and migrations from code.

The whole ``env.py`` of a project (docs/alembic.md)::

    from dbscope.alembic import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

It finds the database where the caller put it, first found wins: a connection the caller
shares (``config.attributes["connection"]``, Alembic's cookbook; :func:`upgrade` does this),
the settings of ``dbscope migrate --app`` (or ``--prefix``), an explicit ``sqlalchemy.url`` in
alembic.ini, else the environment, read and checked exactly as ``Database.from_env()`` reads
it (``DATABASE_URL`` or ``POSTGRES_*``, behind a prefix if given). With ``POSTGRES_SCHEMA`` the
version table lives in that schema and the migrations run with it as their ``search_path``.
``alembic upgrade head --sql`` writes the SQL without a server. From code, inside a running
event loop: ``await upgrade(db)``, ``await at_head(db)``; Alembic's whole command line with a
Database's settings: ``command_line(argv, settings=db.settings)``.

Alembic is imported only here (``pip install 'dbscope[alembic]'``); ``import dbscope`` never
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.engine import URL, Connection

from dbscope import ConfigurationError, Database, DatabaseSettings
from dbscope._migration_lock import migrating
from dbscope._migrations import (
    CONNECTION,
    PLACEHOLDER_URL,
    SCHEMA,
    SETTINGS,
    Metadata,
    MigrationStatus,
    config_path,
    configure_logging,
    get_url,
    load_config,
    migrate_offline,
    migrate_on,
    migration_status,
    require_alembic,
    require_schema,
    run_coroutine,
    run_on_connection,
)
from dbscope._settings_loading import load_settings
from dbscope._urls import same_database

if TYPE_CHECKING:
    from argparse import Namespace

__all__ = [
    "MigrationStatus",
    "at_head",
    "command_line",
    "config_path",
    "other_database",
    "run_migrations",
    "status",
    "upgrade",
]

# Alembic's commands that need no configuration file: init writes the one -c names.
COMMANDS_WITHOUT_CONFIG: Final = frozenset({"init", "list_templates"})


def run_migrations(
    metadata: Metadata = None,
    *,
    prefix: str = "",
    env_file: str | None = None,
    default_url: str | None = None,
    **options: Any,
) -> None:
    """Run the migrations Alembic asked for; the whole body of an ``env.py``.

    Works under Alembic's CLI and ``dbscope migrate`` (no event loop runs: one is started),
    from async code that calls an Alembic command (a loop runs: the migrations run in a
    thread of their own), on a connection the caller shares, and offline (``--sql``). On a
    connection of its own it first takes the migration lock of the database (of the schema,
    with ``POSTGRES_SCHEMA``), so that a second run at the same time waits for this one and
    then finds the database migrated; on a shared connection, the caller takes it.

    Args:
        metadata: the models' ``MetaData`` (``Base.metadata``), for ``--autogenerate``.
        prefix: the prefix of the environment variables, as for ``Database.from_env()``.
        env_file: a dotenv file to read as well, as for ``Database.from_env()``; it must
            exist.
        default_url: the URL when nothing names a database, as for ``Database.from_env()``.
        **options: more of Alembic's ``context.configure()`` options (``compare_type``,
            ``render_as_batch``, ``include_object``...).

    Raises:
        ConfigurationError: the settings are invalid (the same messages as
            ``Database.from_env()``), or alembic.ini's ``sqlalchemy.url`` is (a '%' not
            written '%%' included), or ``POSTGRES_SCHEMA`` names a schema the database does
            not have.
        DatabaseUnavailableError: the server cannot be reached.
        alembic.util.CommandError: another run held the migration lock for 10 minutes.
    """
    require_alembic("dbscope.alembic.run_migrations()")
    from alembic import context

    config = context.config
    configure_logging(config)
    shared = config.attributes.get(CONNECTION)
    if shared is not None:
        migrate_on(_shared(shared), metadata, schema=config.attributes.get(SCHEMA), **options)
        return
    settings = _settings(config, prefix=prefix, env_file=env_file, default_url=default_url)
    if context.is_offline_mode():
        migrate_offline(settings.url, metadata, schema=settings.postgres_schema, **options)
        return
    run_coroutine(lambda: _migrate(settings, metadata, options))


async def _migrate(settings: DatabaseSettings, metadata: Metadata, options: dict[str, Any]) -> None:
    """Run the migrations on a connection of a Database of ``settings``, under the lock."""
    db = Database.from_settings(settings)
    schema = settings.postgres_schema
    async with db, db.engine.connect() as connection, migrating(connection, schema=schema):
        await connection.run_sync(migrate_on, metadata, schema=schema, **options)


async def upgrade(
    db: Database, revision: str = "head", *, config: str | Path | None = None
) -> None:
    """Upgrade ``db``'s database to ``revision``, on one of its connections, in one transaction
    (on MariaDB and MySQL, whose DDL commits by itself, a transaction per revision).

    ``db`` must be connected. The env.py of ``config`` gets the connection (and ``db``'s
    schema) through ``config.attributes``; :func:`run_migrations` uses them. The migration
    lock is held throughout, as :func:`run_migrations` holds it.

    Args:
        db: a connected Database.
        revision: where to go, ``head`` by default.
        config: the ``alembic.ini``; default ``$ALEMBIC_CONFIG``, else ``./alembic.ini``.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``config``.
        LifecycleError: ``db`` is not connected.
        alembic.util.CommandError: another run held the migration lock for 10 minutes.
    """
    alembic_config = load_config(config_path(config))
    schema = db.settings.postgres_schema
    async with db.engine.connect() as connection, migrating(connection, schema=schema):
        await run_on_connection(connection, alembic_config, "upgrade", revision, schema=schema)


async def status(db: Database, *, config: str | Path | None = None) -> MigrationStatus:
    """The revisions ``db``'s database is at, and the heads of the migrations; reads only.

    Args:
        db: a connected Database.
        config: the ``alembic.ini``; default ``$ALEMBIC_CONFIG``, else ``./alembic.ini``.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``config``, or ``db``'s schema
            (``POSTGRES_SCHEMA``) does not exist; the message says how to create it.
    """
    schema = db.settings.postgres_schema
    async with db.engine.connect() as connection:
        if schema is not None:
            # Else a missing schema reads as a database never migrated.
            await connection.run_sync(require_schema, schema)
        return await migration_status(connection, config_path(config), schema=schema)


def other_database(db: Database, *, config: str | Path | None = None) -> URL | None:
    """The database the ``sqlalchemy.url`` of ``config`` names when it is not ``db``'s:
    Alembic's command line, and ``dbscope migrate`` without ``--app`` or ``--prefix``, migrate
    that one. None when the file names none (or Alembic's placeholder), or ``db``'s own
    database however spelled (``localhost`` for ``127.0.0.1``, the default port given or not,
    ``mariadb://`` for ``mysql://``).

    Args:
        db: the application's Database.
        config: the ``alembic.ini``; default ``$ALEMBIC_CONFIG``, else ``./alembic.ini``.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``config``, or its ``sqlalchemy.url`` cannot
            be read (a '%' not written '%%') or is no database URL dbscope takes.
    """
    path = config_path(config)
    url = get_url(load_config(path))
    if not url or url.strip() == PLACEHOLDER_URL:
        return None
    try:
        named = load_settings(from_env=False, database_url=url).url
    except ConfigurationError as error:
        message = f"{path}'s sqlalchemy.url is invalid. {error}"
        raise ConfigurationError(message) from None
    return None if same_database(named, db.url) else named


async def at_head(db: Database, *, config: str | Path | None = None) -> bool:
    """Whether ``db``'s database is at the head revision(s) of the migrations, and only there.

    The same arguments and errors as :func:`status`.
    """
    return (await status(db, config=config)).at_head


def command_line(
    argv: Sequence[str], *, settings: DatabaseSettings | None = None, prog: str | None = None
) -> None:
    """Run Alembic's own command line with ``argv``, as ``alembic`` does: what
    ``dbscope migrate`` runs.

    Alembic reads its options (``-c``, ``-n``, ``-x``...) and its command from ``argv``. With
    ``settings``, :func:`run_migrations` in env.py migrates with them instead of reading
    alembic.ini's ``sqlalchemy.url`` or the environment.

    Args:
        argv: Alembic's arguments, e.g. ``["-c", "alembic.ini", "upgrade", "head"]``.
        settings: the settings to migrate with, e.g. ``db.settings``.
        prog: the command's name in Alembic's usage line and messages.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: ``-c`` names a file that does not exist, or the alembic.ini is
            not an INI file; ``settings`` that are none, ``argv`` given as one string.
        SystemExit: where ``alembic`` would end: on a wrong argument, a failed command
            (Alembic's message printed) and after ``--help``.
    """
    if settings is not None and not isinstance(settings, DatabaseSettings):
        # Ignored, env.py migrated whatever the environment named.
        message = (
            f"command_line(settings=...) takes a DatabaseSettings (db.settings), not "
            f"{type(settings).__name__}."
        )
        raise ConfigurationError(message)
    if isinstance(argv, str):
        message = f"command_line() takes Alembic's arguments as a list, e.g. {argv.split()!r}."
        raise ConfigurationError(message)
    require_alembic(prog or "dbscope.alembic.command_line()")
    from alembic.config import CommandLine

    attributes = {} if settings is None else {SETTINGS: settings}

    class Command(CommandLine):
        # Alembic builds the Config from its own options (-c, -n, -x...) and hands it here.
        def run_cmd(self, config: Any, options: Namespace) -> None:
            if options.cmd[0].__name__ not in COMMANDS_WITHOUT_CONFIG:
                _require_named_configs(options)
                _require_script_location(config, options)
            config.attributes.update(attributes)
            super().run_cmd(config, options)

    Command(prog=prog).main(argv)


def _require_named_configs(options: Namespace) -> None:
    """Refuse a file named with ``-c`` or ``$ALEMBIC_CONFIG`` that is not there, and any
    alembic.ini that is no INI file, as ``dbscope check`` does; Alembic would read a missing
    one as empty and fail on a missing key, and fail on a malformed one in a traceback."""
    for given in options.config or (None,):  # none given: the file $ALEMBIC_CONFIG names
        if given is None or Path(given).name != "pyproject.toml":  # TOML: Alembic reads it
            config_path(given, required=given is not None)


def _require_script_location(config: Any, options: Namespace) -> None:
    """Refuse a configuration without ``script_location`` before Alembic says only "No
    'script_location' key found in configuration": say which file was read or looked for,
    and how to make one."""
    if config.get_alembic_option("script_location") is not None:
        return
    ini = str(config.config_file_name)
    toml = str(config.toml_file_name)
    where = "" if Path(ini).is_absolute() else f" (looked for in {Path.cwd()})"
    if Path(ini).is_file():
        message = (
            f"{ini!r} sets no script_location in its [{options.name}] section, the directory "
            "of the migrations' env.py: add one ('script_location = %(here)s/migrations'), or "
            "name the section that has it with -n."
        )
        raise ConfigurationError(message)
    message = (
        f"No Alembic configuration: there is no {ini!r}{where}, nor a [tool.alembic] table "
        f"in {toml!r}. Name your alembic.ini with -c (e.g. 'dbscope migrate -c "
        "path/to/alembic.ini upgrade head'), or make one where you run the command with "
        "'alembic init -t async migrations', then make migrations/env.py dbscope's one-liner "
        '(docs/alembic.md, "Setting up a project").'
    )
    raise ConfigurationError(message)


def _shared(connection: object) -> Connection:
    if isinstance(connection, Connection):
        return connection
    message = (
        f"config.attributes['connection'] is a {type(connection).__name__}; Alembic runs on a "
        "synchronous Connection: share it from async code with "
        "`await async_connection.run_sync(run, config)`, setting "
        "config.attributes['connection'] inside run(), or call `await dbscope.alembic.upgrade(db)`."
    )
    raise ConfigurationError(message)


def _settings(
    config: Any, *, prefix: str, env_file: str | None, default_url: str | None
) -> DatabaseSettings:
    """The settings given by ``dbscope migrate``, alembic.ini, or the environment."""
    given = config.attributes.get(SETTINGS)
    if isinstance(given, DatabaseSettings):
        return given
    url = get_url(config)
    if url:
        if url.strip() == PLACEHOLDER_URL:
            message = (
                f"alembic.ini sets sqlalchemy.url to Alembic's placeholder {PLACEHOLDER_URL!r}: "
                "remove the line to use the application's settings (DATABASE_URL or "
                "POSTGRES_*), or set a real URL."
            )
            raise ConfigurationError(message)
        try:
            return load_settings(from_env=False, database_url=url)
        except ConfigurationError as error:
            message = f"alembic.ini's sqlalchemy.url is invalid. {error}"
            raise ConfigurationError(message) from None
    return load_settings(
        from_env=True, env_prefix=prefix, env_file=env_file, default_url=default_url
    )
