"""The smoke mode: each variant up for a few seconds, every endpoint answered, updates stored.

It runs with the Python load generator instead of wrk, so that the test suite can run it
(tests/test_benchmarks_smoke.py) and the harness cannot rot.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import data, loadgen, servers
from benchmarks.catalog import ENDPOINTS, Variant
from benchmarks.config import SERVER_CORE, base_env
from benchmarks.variants.common import bench_settings


def smoke(variants: list[Variant], duration: float, output: Path) -> int:
    """Start each variant, check its four endpoints, load /db briefly; 1 if any failed."""
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        results[variant.name] = _smoke_one(variant, duration, output)
        print(f"{variant.name}: {json.dumps(results[variant.name])}", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "smoke.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed:
        print(f"smoke failed for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _smoke_one(variant: Variant, duration: float, output: Path) -> dict[str, Any]:
    missing = variant.missing()
    if missing:
        return {"ok": False, "skipped": missing}
    log = output / "logs" / f"smoke-{variant.name}.log"
    core = SERVER_CORE if servers.can_pin() else None
    try:
        with servers.running(
            variant.name, variant.name, env=base_env(4), log=log, core=core, fast=False
        ) as server:
            statuses = {
                path: servers.get_status(server.port, path, timeout=10) for path in ENDPOINTS
            }
            stored = _updates_are_stored(server.port)
            load = loadgen.run_async(
                loadgen.run_load(server.port, "/db", connections=8, duration=duration)
            )
    except servers.ServerError as error:
        return {"ok": False, "error": str(error)}
    counts = {str(code): n for code, n in sorted(load.statuses.items())}
    ok = all(status == 200 for status in statuses.values()) and stored
    ok = ok and len(load.responses) > 0 and set(counts) == {"200"}
    return {
        "ok": ok,
        "endpoints": statuses,
        "updates_stored": stored,
        "requests": len(load.responses),
        "statuses": counts,
        "transport_errors": load.transport_errors,
    }


def _updates_are_stored(port: int) -> bool:
    """Whether GET /updates really commits: its new numbers are in the table within 1 s.

    A variant that forgot to commit would look fast for the wrong reason. (Some libraries
    commit after the response is sent, hence the second of grace.)
    """
    status, body = servers.get(port, "/updates?q=5", timeout=10)
    if status != 200:
        return False
    sent = {row["id"]: row["randomNumber"] for row in json.loads(body)}
    url = bench_settings().url
    deadline = time.monotonic() + 1.0
    while True:
        if asyncio.run(data.stored_numbers(url, list(sent))) == sent:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
