"""The benchmark harnesses do not rot: their smoke modes run every project-only variant, and
the replica benchmark's three measurements on the replica pair."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from benchmarks.catalog import ENDPOINTS, PROJECT_ONLY
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, require_server, unavailable
from tests.helpers import admin
from tests.replica_cluster import ReplicaPair

ROOT = Path(__file__).parent.parent


@pytest.mark.server
def test_benchmark_smoke_mode_answers_every_endpoint_of_every_variant(tmp_path: Path) -> None:
    """Each variant needing only project dependencies serves all four endpoints with 200,
    stores its updates, and answers a second of load on /db with nothing but 200s."""
    require_server(POSTGRES_URL)
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    command = [
        sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
        "--duration", "1", "--variants", ",".join(PROJECT_ONLY), "--output", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "BENCH_DATABASE_URL": url.render_as_string(hide_password=False)}
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert set(results) == set(PROJECT_ONLY)
    for name, result in results.items():
        assert result["endpoints"] == dict.fromkeys(ENDPOINTS, 200), name
        assert result["updates_stored"], name
        assert result["requests"] > 0, name
        assert result["statuses"] == {"200": result["requests"]}, name


@pytest.mark.server
def test_replica_benchmark_smoke_mode_reads_no_stale_row_and_answers_no_500(
    replica_pair: ReplicaPair, tmp_path: Path
) -> None:
    """benchmarks/replicas.py --smoke runs its three measurements on the replica pair: no
    stale read in any phase, reads served by the replica, every request answered, no 500
    while the replica is stopped and started, no request sent after the load was to end, and
    the pair left running without a delay."""
    if not replica_pair.managed:
        unavailable(
            "benchmarks/replicas.py stops and starts the replica of tests/replicas/cluster; "
            "DBSCOPE_TEST_PRIMARY_URL / DBSCOPE_TEST_REPLICA_URL name another pair."
        )
    command = [
        sys.executable, str(ROOT / "benchmarks" / "replicas.py"), "--smoke",
        "--output", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((tmp_path / "replicas-smoke.json").read_text())
    pairs = results["pairs"]
    assert [phase["stale"] for phase in pairs] == [0] * len(pairs) == [0, 0, 0]
    assert [phase["pairs"] for phase in pairs] == [phase["asked"] for phase in pairs]
    assert pairs[0]["on_replica"] > 0
    assert results["throughput"]["loads"]["token"]["served_by_replica"] > 0
    assert results["failover"]["errors_500"] == 0
    assert results["failover"]["sent_after_end"] == 0
    assert results["failover"]["served_while_down"] == 0
    assert results["cleanup"] == []


@pytest.mark.server
async def test_the_cancel_noise_benchmark_runs_and_leaves_nothing_checked_out() -> None:
    """benchmarks/cancel_noise.py on a database of its own (it terminates every backend of
    it): 20 rounds, every unit accounted for, no connection left checked out."""
    require_server(POSTGRES_URL)
    name = f"dbscope_noise_{uuid.uuid4().hex[:8]}"
    async with admin(POSTGRES_URL) as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        url = make_url(POSTGRES_URL).set(drivername="postgresql", database=name)
        command = [
            sys.executable, str(ROOT / "benchmarks" / "cancel_noise.py"), "--rounds", "20",
            "--url", url.render_as_string(hide_password=False),
        ]  # fmt: skip
        with anyio.fail_after(120):
            completed = await anyio.run_process(command, cwd=ROOT, check=False)
    finally:
        async with admin(POSTGRES_URL) as connection:
            await connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    printed = completed.stdout.decode()
    assert completed.returncode == 0, printed + completed.stderr.decode()
    assert "units: 160," in printed
    assert "checked out at the end: 0" in printed
