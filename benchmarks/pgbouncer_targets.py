"""Where the PgBouncer benchmark's apps connect: the server itself, or a PgBouncer of
tests/pgbouncer/bouncer with its preset; and the settings each app reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from sqlalchemy.engine import make_url

PORT: Final = int(os.environ.get("DBSCOPE_PGBOUNCER_PORT", "6432"))
POOL_SIZE: Final = 10
APPLICATION: Final = "dbscope-bench-pgbouncer"


@dataclass(frozen=True)
class Target:
    """Where one app's pool connects: the server, or a PgBouncer with its preset."""

    key: str
    label: str
    port: int | None  # None: the server itself
    mode: str | None


DIRECT: Final = Target("direct", "the server itself (5432)", None, None)
TRANSACTION: Final = Target(
    "transaction", "PgBouncer, `pgbouncer='transaction'`", PORT, "transaction"
)
PREPARED: Final = Target(
    "prepared", "PgBouncer, `pgbouncer='transaction-prepared'`", PORT + 1, "transaction-prepared"
)
TARGETS: Final = (DIRECT, TRANSACTION, PREPARED)


def target_env(url: str, target: Target, name: str = "") -> dict[str, str]:
    """The settings of an app on ``target``: the URL, the preset, the pool."""
    parsed = make_url(url)
    if target.port is not None:
        parsed = parsed.set(port=target.port)
    env = {
        "BENCH_DATABASE_URL": parsed.render_as_string(hide_password=False),
        "BENCH_POOL_SIZE": str(POOL_SIZE),
        "BENCH_MAX_OVERFLOW": "0",
        "BENCH_POOL_TIMEOUT": "30",
        "BENCH_APPLICATION_NAME": name or APPLICATION,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if target.mode is not None:
        env["BENCH_PGBOUNCER"] = target.mode
    return env
