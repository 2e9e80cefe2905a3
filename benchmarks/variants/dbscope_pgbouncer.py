"""dbscope's Session dependency with every setting read from the environment behind ``BENCH_``:
``BENCH_DATABASE_URL`` (the server, or a PgBouncer in front of it), ``BENCH_PGBOUNCER`` (the
preset, unset for the server itself), ``BENCH_POOL_SIZE`` and the others, and
``BENCH_APPLICATION_NAME``, by which benchmarks/pgbouncer.py counts the server connections of
the direct path. The endpoints are dbscope_session.py's.
"""

from benchmarks.variants.dbscope_session import session_app
from dbscope import Database

db = Database.from_env("BENCH_")
app = session_app(db)
