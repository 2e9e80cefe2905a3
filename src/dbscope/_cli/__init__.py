"""The ``dbscope`` command: check a database, open its own client, run its migrations.

Every subcommand reads the application's settings the way the application does:
``DATABASE_URL`` or ``POSTGRES_*`` (``Database.from_env()``), behind ``--prefix``, or the
``Database`` object that ``--app module:attribute`` names (docs/cli.md).

Exit codes: 0 success; 1 a check failed or the server could not be reached, or the reader of
the output left (``| head``); 2 a setting or an argument is wrong (one line on stderr, no
traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dbscope import ConfigurationError, DatabaseUnavailableError
from dbscope._cli import _check, _migrate, _shell
from dbscope._cli._common import CommandFailed, add_settings_options

__all__ = ["main"]

COMMANDS = (_check.COMMAND, _shell.COMMAND, _migrate.COMMAND)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dbscope`` command with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    except BrokenPipeError:
        # The reader left (`dbscope check | head -1`). Python's docs' recipe (the signal
        # module, "Note on SIGPIPE"): stdout onto devnull, so that the flush at exit cannot
        # fail again, and exit 1 quietly, as a command killed by SIGPIPE ends non-zero.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.passes_through:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        code: int = args.run(args, extra)
    except ConfigurationError as error:
        return _fail(error, 2)
    except (DatabaseUnavailableError, CommandFailed, ModuleNotFoundError) as error:
        return _fail(error, 1)
    except SystemExit as leaving:  # Alembic's own command line ends so
        return _exit_code(leaving.code)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbscope",
        description="Check, open and migrate the database of a dbscope application.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            usage=command.usage,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_settings_options(sub)
        if command.add_arguments is not None:
            command.add_arguments(sub)
        sub.set_defaults(run=command.run, passes_through=command.passes_on is not None)
    return parser


def _fail(error: BaseException, code: int) -> int:
    # One line: the messages say what happened and the fix, and never hold a password.
    text = " ".join(str(error).split())
    print(f"dbscope: error: {text}", file=sys.stderr)
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code if code in (0, 2) else 1
    print(code, file=sys.stderr)
    return 1
