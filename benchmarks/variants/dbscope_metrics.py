"""dbscope's Session path with its pool metrics on OpenTelemetry (``dbscope.otel``).

The SDK's MeterProvider with a Prometheus reader, as a service that a Prometheus server
scrapes would run it: the histograms record at every checkout and return, the counts are read
only when scraped (never during the run). Compared with dbscope_session in the same run, it
gives what the metrics cost per request.
"""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider

from benchmarks.variants.common import bench_settings
from benchmarks.variants.dbscope_session import session_app
from dbscope import Database
from dbscope.otel import instrument

settings = bench_settings()
db = Database(settings.sqlalchemy_url, **settings.dbscope_options)
instrument(db, meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()]))
app = session_app(db)
