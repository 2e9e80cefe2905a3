"""One FastAPI app per database layer, each serving the same endpoints over the same model.

Every variant answers, following the TechEmpower database tests:

- ``GET /db``: one random row of the 10,000-row ``bench_world`` table;
- ``GET /queries?q=N``: N random rows read one after another in one unit of work;
- ``GET /updates?q=N``: N random rows read, changed and committed;
- ``GET /nodb``: no database at all, which measures the framework.

The variants used by the overload scenario also answer ``GET /hold``, which keeps its
connection for ``HOLD_SECONDS`` (``SELECT pg_sleep``). Settings come from ``BENCH_*``
environment variables (see ``common.BenchSettings``).
"""
