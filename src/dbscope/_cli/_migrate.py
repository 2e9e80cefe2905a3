"""``dbscope migrate``: Alembic's own command line, on the application's settings.

Every argument but dbscope's settings options goes to Alembic as it is: ``dbscope migrate
upgrade head``, ``dbscope migrate -c examples/notes/alembic.ini current``, ``dbscope migrate
revision --autogenerate -m "..."``, ``dbscope migrate upgrade head --sql``. With ``--app`` or
``--prefix`` the settings are read here and handed to ``dbscope.alembic.run_migrations()``
in env.py; without, env.py reads them itself (``DATABASE_URL`` or ``POSTGRES_*``).
"""

from __future__ import annotations

import argparse
from typing import Final

from dbscope._cli._common import Command, load_database
from dbscope.alembic import command_line


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Run Alembic's command line with ``extra``; 0 on success."""
    given = args.app or args.prefix or args.env_file
    settings = load_database(args).settings if given else None
    command_line(extra, settings=settings, prog="dbscope migrate")
    return 0


COMMAND: Final = Command(
    name="migrate",
    help="run Alembic (upgrade head, current, history, ...) with the app's settings",
    description=__doc__,
    run=run,
    passes_on="ALEMBIC ARGUMENTS",
)
