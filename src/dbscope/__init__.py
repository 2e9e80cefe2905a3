"""dbscope: async SQLAlchemy sessions for FastAPI, scoped right, pooled right, failing safely.

The public API is what ``__all__`` lists; every other module is private. ``import dbscope``
does not import FastAPI: the integration loads when ``db.session`` is first used.
"""

from importlib import metadata as _metadata

from dbscope._database import Database
from dbscope._durability import Durability
from dbscope._engine import ServerInfo
from dbscope._exceptions import (
    ClientDisconnectedError,
    ConfigurationError,
    ConstraintViolationError,
    DatabaseUnavailableError,
    DbscopeError,
    LazyLoadError,
    LifecycleError,
    NoSessionError,
    RetriesExhaustedError,
    SessionSharedError,
    StatementTimeoutError,
    UnitOfWorkEndedError,
)
from dbscope._health_report import Health, HealthCheck
from dbscope._pool_stats import PoolStats, ReplicaStats
from dbscope._public import present_as
from dbscope._retry import Attempt, Retrying, RetryPolicy
from dbscope._settings import DatabaseSettings
from dbscope._unit import UnitOfWork
from dbscope._unit_options import UnitOptions

__all__ = [
    "Attempt",
    "ClientDisconnectedError",
    "ConfigurationError",
    "ConstraintViolationError",
    "Database",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "DbscopeError",
    "Durability",
    "Health",
    "HealthCheck",
    "LazyLoadError",
    "LifecycleError",
    "NoSessionError",
    "PoolStats",
    "ReplicaStats",
    "RetriesExhaustedError",
    "RetryPolicy",
    "Retrying",
    "ServerInfo",
    "SessionSharedError",
    "StatementTimeoutError",
    "UnitOfWork",
    "UnitOfWorkEndedError",
    "UnitOptions",
]

# Tracebacks and reprs name the public module, not the private one a class lives in.
present_as(__name__, globals(), __all__)

# Read from the installed distribution, so that pyproject.toml is the one place it is written.
__version__: str = _metadata.version("dbscope")
