"""Starting a benchmark script: in the benchmark's environment, with the repository on the path.

A script (``benchmarks/pgbouncer.py``, ``benchmarks/replicas.py``) puts the repository root on
``sys.path``, imports this module (which imports nothing but the standard library, so any
Python can run it) and hands over with ``run_script(__file__, "benchmarks.its_harness")``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

ROOT: Final = Path(__file__).resolve().parent.parent


def environment() -> Path | None:
    """The virtualenv to run in: the benchmark's own if it exists, else the project's."""
    for venv in (ROOT / "benchmarks" / ".venv", ROOT / ".venv"):
        if (venv / "bin" / "python").exists():
            return venv
    return None


def run_script(script: str, harness: str) -> NoReturn:
    """Run ``script`` again in ``environment()`` unless this Python is that one's, then exit
    with what ``main()`` of the module ``harness`` returns; 2 (and the pip command) when one of
    its requirements is missing."""
    venv = environment()
    if venv is not None and Path(sys.prefix).resolve() != venv.resolve():
        python = str(venv / "bin" / "python")
        os.execv(python, [python, script, *sys.argv[1:]])  # noqa: S606 - our own venv
    try:
        main: Callable[[], int] = importlib.import_module(harness).main
    except ModuleNotFoundError as error:
        print(
            f"{error.name} is missing from {sys.prefix}: "
            f"{sys.prefix}/bin/pip install -r benchmarks/requirements.txt",
            file=sys.stderr,
        )
        raise SystemExit(2) from error

    raise SystemExit(main())
