"""The whole suite as two pytest runs side by side: what ``make test`` (and so CI) runs.

One run takes the tests that mostly wait: those of the services the suite starts (the replica
pair, PgBouncer and the Patroni cluster; tests/conftest.py marks them ``services``), whose
faults (a failover, a stopped replica) must not meet another test's, and those of
tests/reliability, storms of cancelled requests and slow queries (``reliability``). It runs on
the test databases, as ``pytest`` alone would. The other run takes every other test (those that
talk HTTP to a uvicorn server of their own, ``server``, too), on databases of its own on the
same servers, so that the two never share a table or a run database: it keeps a CPU busy, so
it runs under pytest-xdist, a test file at a time on each of ``WORKERS`` workers, each worker on
databases of its own (``SUITE_DATABASE`` then the worker's id, made here and dropped at the
end; tests/conftest.py names them to the worker). A failover, a replica catching up or a
server starting leaves the CPU to the other run.

``python -m tests.run_suite [pytest arguments]``: the other run's output streams; the waiting
run's follows when both are over. The exit status is the worse of the two (a run that
selected no test counts as passed). When both passed whole, the python blocks of the docs
that neither ran fail it (tests/docs_blocks.py). Plain ``pytest`` still runs the whole suite
in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.conftest import MYSQL_URL, PER_WORKER, POSTGRES_URL, per_worker
from tests.docs_blocks import ADVICE, RECORD, unrun_in_parts
from tests.run_databases import create_database, drop_database

SUITE_DATABASE = "dbscope_suite"
WORKERS = 2  # the machine's two cores
WAITING = "services or reliability"  # the markers of the tests that mostly wait
# pytest's exit status when a run selected no test: not a failure here.
NO_TESTS = 5


def beside(url: str) -> str:
    """``url`` with SUITE_DATABASE for its database."""
    return make_url(url).set(database=SUITE_DATABASE).render_as_string(hide_password=False)


@contextmanager
def own_databases() -> Iterator[dict[str, str]]:
    """SUITE_DATABASE's per worker on each server, made anew, and the environment that names
    them; dropped at the end. A server that cannot be reached is left to the tests to report."""
    urls = {"DBSCOPE_TEST_POSTGRES_URL": beside(POSTGRES_URL)}
    urls["DBSCOPE_TEST_MYSQL_URL"] = beside(MYSQL_URL)
    workers = [f"gw{number}" for number in range(WORKERS)]
    made = []
    for url in (per_worker(url, worker) for url in urls.values() for worker in workers):
        try:
            drop_database(url)
            create_database(url)
        except Exception as error:  # the tests report an unreachable server better
            print(f"run_suite: {SUITE_DATABASE} not made ({type(error).__name__})", file=sys.stderr)
        else:
            made.append(url)
    try:
        yield {**urls, PER_WORKER: "1"}
    finally:
        for url in made:
            drop_database(url)


def run(arguments: Sequence[str]) -> int:
    """Both runs; the worse exit status, or 1 for a python block of the docs neither ran."""
    command = [sys.executable, "-m", "pytest", *arguments]
    with (
        own_databases() as urls,
        tempfile.TemporaryDirectory() as records,
        tempfile.TemporaryFile("w+") as waiting_output,
    ):
        waiting_record, others_record = Path(records, "waiting"), Path(records, "others")
        waiting = subprocess.Popen(
            [*command, "-m", WAITING],
            env={**os.environ, RECORD: str(waiting_record)},
            stdout=waiting_output,
            stderr=subprocess.STDOUT,
        )
        try:
            others = subprocess.run(
                [*command, "-n", str(WORKERS), "--dist", "loadfile", "-m", f"not ({WAITING})"],
                env={**os.environ, **urls, RECORD: str(others_record)},
                check=False,
            )
        finally:
            status = waiting.wait()
        waiting_output.seek(0)
        print(f"\n{' the tests that mostly wait ':=^80}\n{waiting_output.read()}", end="")
        unrun = unrun_in_parts([waiting_record, others_record])
    # A run a signal ended (negative: a hung run killed) failed, whatever else passed.
    codes = [code if code >= 0 else 1 for code in (others.returncode, status) if code != NO_TESTS]
    if unrun and not any(codes):  # a failed run is not judged: its blocks would look unrun
        print("\npython blocks of the docs that no test ran:", *unrun, ADVICE, sep="\n")
        codes.append(1)
    return max(codes, default=0)


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    raise SystemExit(run(sys.argv[1:]))
