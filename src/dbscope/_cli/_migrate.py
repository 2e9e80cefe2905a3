"""``dbscope migrate``: Alembic's own command line, on the application's settings.

Every argument but dbscope's settings options goes to Alembic as it is: ``dbscope migrate
upgrade head``, ``dbscope migrate -c examples/notes/alembic.ini current``, ``dbscope migrate
revision --autogenerate -m "..."``, ``dbscope migrate upgrade head --sql``. With ``--app`` or
``--prefix`` the settings are read here and handed to ``dbscope.alembic.run_migrations()``
in env.py; without, env.py reads them itself (``DATABASE_URL`` or ``POSTGRES_*``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

from dbscope._cli._common import load_database
from dbscope._migrations import SETTINGS, require_alembic

if TYPE_CHECKING:
    from argparse import Namespace

NAME: Final = "migrate"
HELP: Final = "run Alembic (upgrade head, current, history, ...) with the app's settings"
DESCRIPTION: Final = __doc__
PASSES_THROUGH: Final = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dbscope migrate`` has dbscope's settings options; the rest is Alembic's."""
    parser.usage = "%(prog)s [--app MODULE:ATTRIBUTE | --prefix PREFIX] ALEMBIC ARGUMENTS"


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Run Alembic's command line with ``extra``; 0 on success."""
    require_alembic("dbscope migrate")
    from alembic.config import CommandLine

    attributes: dict[str, Any] = {}
    if args.app or args.prefix or args.env_file:
        attributes[SETTINGS] = load_database(args).settings

    class Command(CommandLine):
        # Alembic builds the Config from its own options (-c, -n, -x...) and hands it here.
        def run_cmd(self, config: Any, options: Namespace) -> None:
            config.attributes.update(attributes)
            super().run_cmd(config, options)

    Command(prog="dbscope migrate").main(extra)
    return 0
