"""Real PgBouncers in transaction mode in front of the test server, for the PgBouncer tests.

``tests/pgbouncer/bouncer`` starts two on 127.0.0.1, both ``pool_mode = transaction`` in
front of the server on 127.0.0.1:5432: on 6432 with ``max_prepared_statements = 0`` (the
``pgbouncer="transaction"`` preset's), on 6433 with 200 (``"transaction-prepared"``'s).
:func:`ensure_bouncers` finds them running or starts them (installing PgBouncer 1.21+ first
if need be: built once from Debian's source package on Debian 12, ~30 s), and
:func:`release` stops them if this run started them. ``DBSCOPE_TEST_PGBOUNCER_URL`` and
``DBSCOPE_TEST_PGBOUNCER_PREPARED_URL`` name running ones instead (both or neither; the
tests then never stop them), and ``DBSCOPE_PGBOUNCER_PORT`` puts the script's on other ports.

Through them the tests reach the database of ``DBSCOPE_TEST_POSTGRES_URL``; what they set up
and check they do on that URL directly, never through PgBouncer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url

from tests.services import ensure_started, named_pair, stop

SCRIPT = Path(__file__).parent / "pgbouncer" / "bouncer"
PORT = int(os.environ.get("DBSCOPE_PGBOUNCER_PORT", "6432"))
# A start measured 0.3 s with PgBouncer installed; a first install builds it (~30 s).
START_TIMEOUT = 300.0

Mode = Literal["transaction", "transaction-prepared"]
MODES: tuple[Mode, ...] = ("transaction", "transaction-prepared")


@dataclass(frozen=True)
class Bouncers:
    """The PgBouncer of each mode, and whether this run started them.

    Attributes:
        transaction: the URL of the one keeping no prepared statements, ``postgresql://``.
        prepared: the URL of the one keeping them (``max_prepared_statements`` > 0).
        started: started by this run, which stops them at its end.
    """

    transaction: str
    prepared: str
    started: bool

    def url(self, mode: Mode, driver: str, database_url: str) -> str:
        """``database_url``'s database through the PgBouncer of ``mode``, with ``driver``."""
        bouncer = make_url(self.transaction if mode == "transaction" else self.prepared)
        database = make_url(database_url).database
        url = bouncer.set(drivername=f"postgresql+{driver}", database=database)
        return url.render_as_string(hide_password=False)


def ensure_bouncers(environ: Mapping[str, str] = os.environ) -> Bouncers:
    """The PgBouncers the environment names, or the script's, running or started now.

    Raises:
        ServiceUnavailable: one URL without the other, or the script could not start them.
    """
    named = named_pair(environ, "DBSCOPE_TEST_PGBOUNCER_URL", "DBSCOPE_TEST_PGBOUNCER_PREPARED_URL")
    if named is not None:
        return Bouncers(*named, started=False)
    started = ensure_started(SCRIPT, "start", timeout=START_TIMEOUT, environ=environ)
    return Bouncers(*_script_urls(), started=started)


def release(bouncers: Bouncers) -> None:
    """Stop the PgBouncers if this run started them; leave any others alone."""
    if bouncers.started:
        stop(SCRIPT, timeout=60)


def _script_urls() -> tuple[str, str]:
    # The script's two, on DBSCOPE_PGBOUNCER_PORT (6432) and the next port.
    return (
        f"postgresql://postgres@127.0.0.1:{PORT}/test",
        f"postgresql://postgres@127.0.0.1:{PORT + 1}/test",
    )
