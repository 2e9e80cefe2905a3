"""Each database's rules in one place: one record per backend, one per driver.

``backend(name)`` gives the rules of a backend by SQLAlchemy's name or an alias
(``postgres``, ``mariadb``); ``driver(name)`` the record of a driver. A backend dbscope does
not know gets :data:`GENERIC`, which asks nothing special of its transactions and reads no
codes from its errors.
"""

from __future__ import annotations

from typing import Final

from dbscope._dialects import mysql, postgresql, sqlite
from dbscope._dialects._base import Backend, Begin, Driver, ErrorKind, LeaseStatus

__all__ = [
    "BACKENDS",
    "GENERIC",
    "Backend",
    "Begin",
    "Driver",
    "ErrorKind",
    "LeaseStatus",
    "backend",
    "driver",
]

BACKENDS: Final = (postgresql.BACKEND, mysql.BACKEND, sqlite.BACKEND)
GENERIC: Final = Backend(name="generic", aliases=())
_BY_NAME: Final = {name: b for b in BACKENDS for name in (b.name, *b.aliases)}
_DRIVERS: Final = {name: d for b in BACKENDS for name, d in b.drivers.items()}


def backend(name: str) -> Backend:
    """The rules of backend ``name`` (SQLAlchemy's name or an alias); GENERIC if unknown."""
    return _BY_NAME.get(name, GENERIC)


def driver(name: str) -> Driver | None:
    """The record of driver ``name``, or None for a driver dbscope does not know."""
    return _DRIVERS.get(name)
