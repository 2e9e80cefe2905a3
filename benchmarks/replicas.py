"""Benchmark read replicas: ``python benchmarks/replicas.py`` (all of it) or ``--smoke``.

Stale reads in write-then-read pairs across requests, ``/db`` on the replica against the
primary-only path, and reads through a replica stopped and started again, on the pair of
``tests/replicas/cluster``; see docs/benchmarks.md ("Read replicas"). It runs in the
benchmark's environment, ``benchmarks/.venv``, when there is one, else in ``.venv``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's directory is on sys.path, not the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.launch import run_script

    run_script(__file__, "benchmarks.replica_harness")
