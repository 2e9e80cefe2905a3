"""The app's tables in a database the user made (a container's, say): made at the start,
and at the end dropped only if the run made them. The run's rules are ``_own_database``'s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from dbscope import ConfigurationError, Database, _dialects
from dbscope._dialects import PoolerMode
from dbscope.testing._arguments import check_run_arguments
from dbscope.testing._isolation import NOTHING_TO_CREATE
from dbscope.testing._own_database import OptionNames, _log, _Run


@contextlib.contextmanager
def own_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
    keep: bool = False,
    reuse: bool = False,
    use_existing_tables: bool = False,
    report: Callable[[str], None] | None = None,
    names: OptionNames | None = None,
    pgbouncer: PoolerMode | None = None,
) -> Iterator[None]:
    """Make the app's tables in the database at ``url``, and drop those it made at the end.

    For a database you made yourself (a container's, say). In a database dbscope did not
    make, the app's tables already there (with migrations alone: any table) are refused
    unless ``use_existing_tables``: the tests would read and write their rows. In one
    dbscope made, the tables go with the database, and on PostgreSQL the schemas of
    ``metadata`` are made too. Tables made by migrations are kept: a downgrade could drop
    tables the run did not make. The arguments are :func:`own_database`'s; ``keep`` keeps
    the tables, and so does ``reuse`` with ``use_existing_tables``: ``reuse`` alone drops
    them, saying so, as nothing would tell the next run they are dbscope's.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given, or an
            argument is no value for it, as for :func:`own_database`.
        DatabaseSetupError: the database has the app's tables and dbscope did not make it.
    """
    flags = {"reuse": reuse, "keep": keep, "use_existing_tables": use_existing_tables}
    check_run_arguments(flags, metadata=metadata, alembic_config=alembic_config, report=report)
    if metadata is None and alembic_config is None:
        raise ConfigurationError(NOTHING_TO_CREATE)
    given = Database(url)
    rules = _dialects.backend(given.url.get_backend_name())
    run = _Run(given.url, rules, names or OptionNames(), report or _log.info, pgbouncer)
    ours = (
        rules in _dialects.BACKENDS
        and not given.settings.is_memory
        and run.presence().presence == "marked"
    )
    with run.tables(metadata, alembic_config, ours, use_existing_tables, keep, reuse):
        yield
