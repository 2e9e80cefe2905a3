"""Benchmark dbscope through PgBouncer: ``python benchmarks/pgbouncer.py`` (all) or ``--smoke``.

``/db`` and ``/updates`` requests/s through PgBouncer in both transaction modes against the
server itself, in the same run, and the server connections N app processes hold through
PgBouncer and without it, on tests/pgbouncer/bouncer's PgBouncers; see docs/pgbouncer.md.
Run it on a database of its own (``BENCH_DATABASE_URL``): it counts every connection to that
database. It runs in the benchmark's environment, ``benchmarks/.venv``, when there is one,
else in ``.venv``.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _environment() -> Path | None:
    """The virtualenv to run in: the benchmark's own if it exists, else the project's."""
    for venv in (ROOT / "benchmarks" / ".venv", ROOT / ".venv"):
        if (venv / "bin" / "python").exists():
            return venv
    return None


if __name__ == "__main__":
    venv = _environment()
    if venv is not None and Path(sys.prefix).resolve() != venv.resolve():
        python = str(venv / "bin" / "python")
        os.execv(python, [python, __file__, *sys.argv[1:]])  # noqa: S606 - our own venv
    # Run as a script, this file's directory is on sys.path, not the repository root.
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.pgbouncer_harness import main
    except ModuleNotFoundError as error:
        print(
            f"{error.name} is missing from {sys.prefix}: "
            f"{sys.prefix}/bin/pip install -r benchmarks/requirements.txt",
            file=sys.stderr,
        )
        raise SystemExit(2) from error

    raise SystemExit(main())
