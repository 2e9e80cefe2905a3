"""PgBouncer in transaction mode in front of PostgreSQL: what each driver must and must not do.

In transaction mode PgBouncer lends a client a server connection for one transaction at a
time. What a client leaves on a server connection beyond its transaction stays with that
server connection, for whichever client gets it next: a prepared statement by name (unknown
to the next server connection the client gets, or clashing with another client's of the same
name), a session-level setting. So behind it:

- ``transaction``: PgBouncer keeps no prepared statement (``max_prepared_statements = 0``, and
  every PgBouncer before 1.21). asyncpg runs with no statement cache, in SQLAlchemy's adapter
  and in asyncpg itself: it then sends each statement unnamed, parsed again in the same
  exchange as its execution, so nothing refers to a statement another server connection holds
  (a named statement per execution, SQLAlchemy's ``prepared_statement_name_func`` recipe,
  fails under AUTOCOMMIT, where the prepare and the execution are two exchanges). psycopg
  prepares nothing (``prepare_threshold=None``).
- ``transaction-prepared``: PgBouncer 1.21+ with ``max_prepared_statements`` keeps each
  client's protocol-level prepared statements, under names of its own on each server
  connection, so the drivers' caches stay. psycopg drops the statements it evicts by a
  protocol message only with libpq 17 or later; before, by ``DEALLOCATE name``, which
  PgBouncer cannot map.

In both, settings sent at connect are carried only for the parameters PgBouncer tracks per
client (it sets each client's own on whichever server connection serves it); it refuses any
other at connect, as asyncpg's ``server_settings`` or libpq's ``options`` would send them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dbscope._dialects.driver import PoolerMode

# PgBouncer refuses a login it checks itself (its auth_file, auth_query or HBA file) with
# SQLSTATE 08P01, a protocol violation, where PostgreSQL sends class 28 or 3D000; asyncpg
# reports the code, so only the message tells a refused login from a lost connection
# ('"trust" authentication failed' for a user missing from auth_file, measured on 1.24).
PROTOCOL_VIOLATION: Final = "08P01"
LOGIN_REFUSALS: Final = re.compile(r"authentication failed|no such (user|database)")


def refused_login(code: str, message: str) -> bool:
    """Whether the error ``code``/``message`` is PgBouncer refusing the user or database."""
    return code == PROTOCOL_VIOLATION and LOGIN_REFUSALS.search(message) is not None


# What PgBouncer says, as class 08 (psycopg: 08P01; asyncpg: 08003, the connection closed
# after it), to a client whose statement waited query_wait_timeout in its queue for a server
# connection: none came, so none of the statement ran. Measured on 1.24.1.
QUEUE_WAIT_TIMEOUT: Final = "query_wait_timeout"
QUEUE_WAITED_OUT: Final = (
    "The statement waited in PgBouncer's queue for a server connection until PgBouncer's "
    "query_wait_timeout ended the wait, so it never ran: the server behind "
    "PgBouncer is down or cannot be reached, or PgBouncer's pool for this database is full "
    "(default_pool_size, max_db_connections). PgBouncer's SHOW POOLS counts the clients "
    "waiting (cl_waiting); query_wait_timeout in pgbouncer.ini bounds the wait (120 s by "
    "default)."
)


def queue_waited_out(code: str | None, message: str) -> str | None:
    """What happened, when the error ``code``/``message`` is PgBouncer ending a statement's
    wait for a server connection (query_wait_timeout); None for any other."""
    if code is None or not code.startswith("08") or QUEUE_WAIT_TIMEOUT not in message:
        return None
    return QUEUE_WAITED_OUT


# A prepared statement that clashes with one of the same name (42P05) or is gone (26000): the
# driver's statements met another client's server connection, behind a pooler in transaction
# mode that dbscope was not told of.
STATEMENTS_ELSEWHERE: Final = frozenset({"42P05", "26000"})


def statements_advice(code: str | None) -> str | None:
    """The fix for a prepared statement that clashes or is gone (SQLSTATE ``code``)."""
    if code not in STATEMENTS_ELSEWHERE:
        return None
    return (
        "The driver's prepared statements reached another server connection: a pooler in "
        "transaction mode (PgBouncer) stands in front of the server. Set PGBOUNCER=transaction "
        "(Database(..., pgbouncer='transaction')), or 'transaction-prepared' where PgBouncer "
        "1.21+ has max_prepared_statements above 0"
    )


# The startup parameters PgBouncer tracks per client: its fixed ones and the default of
# track_extra_parameters (IntervalStyle). PostgreSQL's names are case-insensitive.
TRACKED: Final = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "standard_conforming_strings",
        "intervalstyle",
    }
)
# The libpq version from which psycopg closes prepared statements by a protocol message.
LIBPQ_CLOSE: Final = 170000
ELSEWHERE: Final = (
    "set it on the role instead (ALTER ROLE app SET name = value: every server connection "
    "PgBouncer opens has it), or per unit where dbscope offers it (statement_timeout, schema)."
)
PREPARED: Final = (
    "keep prepared statements by name on a connection, and PgBouncer in transaction mode runs "
    "each transaction on whichever server connection is free, where that name is unknown, or "
    "another client's. Remove it, or with PgBouncer 1.21+ and max_prepared_statements > 0 "
    "use pgbouncer='transaction-prepared'"
)


def asyncpg_args(mode: PoolerMode) -> dict[str, Any]:
    """asyncpg's connect arguments behind PgBouncer in ``mode``."""
    if mode == "transaction":
        return {"prepared_statement_cache_size": 0, "statement_cache_size": 0}
    return {}


def asyncpg_conflict(mode: PoolerMode, args: Mapping[str, Any]) -> str | None:
    """What of asyncpg's connect arguments cannot pass PgBouncer in ``mode``; None if nothing."""
    untracked = _untracked(args.get("server_settings") or {})
    if untracked:
        return (
            f"server_settings sets {untracked!r} at connect, a session-level setting that "
            f"PgBouncer refuses (it carries only {_tracked()}): {ELSEWHERE}"
        )
    if mode != "transaction":
        return None
    for name in ("statement_cache_size", "prepared_statement_cache_size"):
        value = args.get(name)
        if value is not None and _number(value) != 0:
            return f"{name}={value!r} would {PREPARED}."
    if args.get("prepared_statement_name_func") is not None:
        return (
            "prepared_statement_name_func names each prepared statement, which then exists on "
            "one server connection only: an execution outside a transaction (AUTOCOMMIT, a "
            "lease) is a second exchange that PgBouncer may send to another. Remove it: "
            "without a cache asyncpg sends statements unnamed, which is what PgBouncer needs."
        )
    return None


def psycopg_args(mode: PoolerMode) -> dict[str, Any]:
    """psycopg's connect arguments behind PgBouncer in ``mode``."""
    return {"prepare_threshold": None} if mode == "transaction" else {}


def psycopg_conflict(mode: PoolerMode, args: Mapping[str, Any]) -> str | None:
    """What of psycopg's connect arguments cannot pass PgBouncer in ``mode``; None if nothing."""
    options = args.get("options")
    if options:
        names = re.findall(r"(?:-c\s*|--)([A-Za-z_.]+)=", str(options))
        untracked = _untracked(dict.fromkeys(names))
        if untracked or not names:
            return (
                f"options={options!r} sends session-level settings at connect, which "
                f"PgBouncer refuses (it carries only {_tracked()}): {ELSEWHERE}"
            )
    if mode == "transaction":
        threshold = args.get("prepare_threshold")
        if threshold is not None:
            return f"prepare_threshold={threshold!r} would have psycopg {PREPARED}."
        return None
    import psycopg

    libpq = psycopg.pq.version()
    if libpq < LIBPQ_CLOSE and args.get("prepare_threshold", 0) is not None:
        return (
            f"psycopg runs on libpq {psycopg.pq.version_pretty(libpq)}, before 17, so it drops "
            "the prepared statements it evicts by DEALLOCATE, a statement PgBouncer passes "
            "on under names the server does not know. Use a libpq of 17 or later (the "
            "wheels of psycopg[binary] 3.3 bring 18), or pgbouncer='transaction'."
        )
    return None


def _untracked(settings: Mapping[str, Any]) -> list[str]:
    return [name for name in settings if str(name).lower() not in TRACKED]


def _tracked() -> str:
    return ", ".join(sorted(TRACKED))


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
