"""The benchmark harness does not rot: its smoke mode runs every project-only variant."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.catalog import ENDPOINTS, PROJECT_ONLY
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, require_server

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
