"""Running the `dbscope` command in the CLI tests (tests/test_cli.py, tests/test_cli_shell.py):
with nothing but the settings each test gives."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import anyio

from tests.documented import ROOT
from tests.helpers import without_settings
from tests.server import free_port

DBSCOPE: Final = str(Path(sys.executable).with_name("dbscope"))
SECRET: Final = "Pa55-w0rd-nobody-sees"


async def dbscope(
    *arguments: str, environment: Mapping[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `dbscope` command with only ``environment``'s settings."""
    return await anyio.run_process(
        [DBSCOPE, *arguments], env=without_settings(**environment), cwd=cwd, check=False
    )


def output_of(done: subprocess.CompletedProcess[bytes]) -> str:
    """What a run wrote, stdout then stderr."""
    return (done.stdout + done.stderr).decode()


def nowhere() -> str:
    """A PostgreSQL URL with a password, at a port nothing listens on."""
    return f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
