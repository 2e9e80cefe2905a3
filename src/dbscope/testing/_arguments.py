"""The arguments of own_database() and own_tables(), checked before anything is made.

A flag given as text (``reuse="no"``) is true, and the run would keep, reuse or use tables it
was told not to: each must be a bool. What is no function or no MetaData failed deep inside,
after the database was made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from sqlalchemy import MetaData

from dbscope import ConfigurationError

_WORKER: Final = re.compile(r"[A-Za-z0-9_]{1,32}")


def check_run_arguments(
    flags: Mapping[str, object],
    *,
    metadata: object,
    alembic_config: object,
    report: object,
    tables_from: object = None,
) -> None:
    """Refuse a flag that is no bool, ``metadata`` (or ``tables_from``) that is no MetaData,
    ``alembic_config`` that is no path, and a ``report`` that is no function, naming the
    argument as given."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name}={value!r} is not a bool; use True or False.")
    for name, value in (("metadata", metadata), ("tables_from", tables_from)):
        if value is not None and not isinstance(value, MetaData):
            message = (
                f"{name}={value!r} is no MetaData: give your declarative base's (Base.metadata)."
            )
            raise ConfigurationError(message)
    if alembic_config is not None and not isinstance(alembic_config, str | Path):
        message = f"alembic_config={alembic_config!r} is no path: give the alembic.ini's."
        raise ConfigurationError(message)
    if report is not None and not callable(report):
        message = f"report={report!r} is no function: give one that takes a line (print)."
        raise ConfigurationError(message)


def checked_worker(worker: str) -> str:
    """``worker``, which becomes part of a database's (or a file's) name: nothing to quote."""
    if not isinstance(worker, str) or not _WORKER.fullmatch(worker):
        message = (
            f"worker={worker!r} cannot be part of a database's name: give the worker's id "
            "in letters, digits and '_' only, e.g. worker='gw0' (pytest-xdist's)."
        )
        raise ConfigurationError(message)
    return worker
