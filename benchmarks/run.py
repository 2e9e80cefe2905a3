"""Run the benchmark: ``python benchmarks/run.py`` (everything) or ``--smoke`` (a few seconds).

``make bench`` builds the benchmark environment first and then runs this; see
docs/benchmarks.md for what is measured and how.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's directory is on sys.path, not the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.harness import main

    raise SystemExit(main())
