"""One FastAPI app per database layer, each serving the same endpoints over the same model.

Every variant answers, following the TechEmpower database tests:

- ``GET /db``: one random row of the 10,000-row ``bench_world`` table;
- ``GET /queries?q=N``: N random rows read one after another in one unit of work;
- ``GET /updates?q=N``: N random rows read, changed and committed;
- ``GET /nodb``: no database at all, which measures the framework.

The variants used by the overload scenario also answer ``GET /hold``, which keeps its
connection for ``HOLD_SECONDS`` (``SELECT pg_sleep``). Settings come from ``BENCH_*``
environment variables (see ``common.BenchSettings``); ``BENCH_GC_THRESHOLD``, when set,
raises CPython's youngest-generation threshold in every variant alike, as the recipe in
docs/recipes.md does for an app (unset: CPython's 700).
"""

import gc
import os

if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(int(os.environ["BENCH_GC_THRESHOLD"]), 10, 10)
