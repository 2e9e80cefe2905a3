"""dbscope's Session path with SQL comments on (``sql_comments="append"``).

Every statement carries the sqlcommenter comment of its route; compared with dbscope_session
in the same run, it gives what route tags cost per request.
"""

from __future__ import annotations

from benchmarks.variants.common import bench_settings
from benchmarks.variants.dbscope_session import session_app
from dbscope import Database

settings = bench_settings()
db = Database(settings.sqlalchemy_url, sql_comments="append", **settings.dbscope_options)
app = session_app(db)
