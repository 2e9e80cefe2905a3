"""Benchmark dbscope through PgBouncer: ``python benchmarks/pgbouncer.py`` (all) or ``--smoke``.

``/db`` and ``/updates`` requests/s through PgBouncer in both transaction modes against the
server itself, in the same run, and the server connections N app processes hold through
PgBouncer and without it, on tests/pgbouncer/bouncer's PgBouncers; see docs/pgbouncer.md.
Run it on a database of its own (``BENCH_DATABASE_URL``): it counts every connection to that
database. It runs in the benchmark's environment, ``benchmarks/.venv``, when there is one,
else in ``.venv``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's directory is on sys.path, not the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.launch import run_script

    run_script(__file__, "benchmarks.pgbouncer_harness")
