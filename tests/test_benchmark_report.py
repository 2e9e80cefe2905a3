"""Reading wrk's report, and the share of the clients' time its latencies account for.

The reports are wrk 4.1.0's own, from two servers of benchmarks/variants at 256 connections:
the blog pattern's latencies leave out the clients it kept waiting past the run.
"""

from pathlib import Path

import pytest
from benchmarks import wrk
from benchmarks.catalog import Load
from benchmarks.latency import waits
from benchmarks.loadgen import LoadResult, Response
from benchmarks.report import Sample, markdown_tables, summarize

# As wrk printed them.
REPORTS = Path(__file__).parent / "wrk_reports"
BLOG_REPORT = (REPORTS / "blog-db-256.txt").read_text()
DBSCOPE_REPORT = (REPORTS / "dbscope_session-db-256.txt").read_text()


def test_wrk_s_report_is_read_with_its_units() -> None:
    """Mean, p50 and p99 in milliseconds whatever unit wrk chose; the timeouts are errors."""
    blog, dbscope = wrk.parse(BLOG_REPORT), wrk.parse(DBSCOPE_REPORT)
    assert (blog.mean_ms, blog.p50_ms, blog.p99_ms) == (18.30, 14.67, 63.26)
    assert (blog.requests, blog.socket_errors) == (5962, 10)
    assert (dbscope.mean_ms, dbscope.p99_ms) == (269.52, 1490.0)


def test_the_latencies_seen_show_the_clients_left_waiting() -> None:
    """Little's law: mean latency x requests/s / connections is about 1 for a server that
    answers every client in turn, and far below for one that leaves clients waiting."""
    samples = []
    for variant, report in (("blog", BLOG_REPORT), ("dbscope_session", DBSCOPE_REPORT)):
        result = wrk.parse(report)
        samples.append(
            Sample(
                0,
                0,
                variant,
                "db@256",
                result.requests,
                result.requests_per_second,
                result.p50_ms,
                result.p99_ms,
                0,
                seen=result.seen(256),
            )
        )
    blog, dbscope = summarize(samples)
    assert blog.seen == pytest.approx(0.071, abs=0.001)
    assert dbscope.seen == pytest.approx(1.18, abs=0.01)
    assert "| 1,119 | 1,119-1,119 | 200.8 | 1490.0 | 118% | 1.13x (1.13-1.13) | 0 |" in (
        markdown_tables([dbscope])
    )


def test_a_client_left_waiting_counts_in_the_latencies_of_every_request() -> None:
    """97 requests answered in 10 ms and three clients still waiting when the run ended, two
    of them for 3 s: the answered p99 hides them, the p99 over every request does not."""
    result = LoadResult(duration=1.0)
    result.responses = [Response(sent=0.0, latency=0.010, status=200) for _ in range(97)]
    result.unanswered = [3.0, 3.0, 0.005]
    run = waits("blog", Load("db", "/db", 3), result)
    assert (run.answered_p99_ms, run.kept_waiting) == (10.0, 2)
    assert (run.every_p99_ms, run.every_longest_ms) == (3000.0, 3000.0)
