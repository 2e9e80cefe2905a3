"""What the services the tests start share: the replica pair (tests/replica_cluster.py),
PgBouncer (tests/pgbouncer_service.py) and the Patroni cluster (tests/patroni_cluster.py).

Each has a script that answers ``status``, ``start`` and ``stop`` (tests/replicas/cluster,
tests/pgbouncer/bouncer, tests/patroni/cluster). :func:`script` runs one of its commands,
:func:`ensure_started` starts the service unless it runs and says whether this run is to stop
it, :func:`stop` stops it; :func:`named_pair` reads the two URLs of a service the environment
names instead. :class:`ServiceUnavailable` says why there is none to test against, and
conftest.py's fixtures skip (or fail, under CI=true) on it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


class ServiceUnavailable(Exception):
    """No service to test against; the message says why and what to do."""


def script(path: Path, *arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``path arguments...``; its output, whatever its exit code."""
    return subprocess.run(
        [str(path), *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )


def ensure_started(path: Path, *start: str, timeout: float, environ: Mapping[str, str]) -> bool:
    """Start the service of the script ``path`` (``path start...``) unless ``path status``
    finds it running; whether this run started it, and so is to stop it at its end.

    Raises:
        ServiceUnavailable: The script could not run, or failed (its last lines say why).
    """
    if script(path, "status", timeout=timeout).returncode == 0:
        return False
    try:
        started = script(path, *start, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServiceUnavailable(f"{path} start could not run: {error}") from error
    if started.returncode != 0:
        output = (started.stdout + started.stderr).strip().splitlines()[-15:]
        message = f"{path} start failed (exit {started.returncode}):\n" + "\n".join(output)
        raise ServiceUnavailable(message)
    # Under pytest-xdist each worker is a run of its own: the one that started the service
    # must not stop it under the others, so it outlives such a run (stop it by hand).
    return "PYTEST_XDIST_WORKER" not in environ


def stop(path: Path, *, timeout: float) -> None:
    """``path stop``; a failure fails the run with the script's output."""
    stopped = script(path, "stop", timeout=timeout)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def named_pair(environ: Mapping[str, str], first: str, second: str) -> tuple[str, str] | None:
    """The URLs of the variables ``first`` and ``second``, or None where neither is set.

    Raises:
        ServiceUnavailable: One is set without the other.
    """
    urls = environ.get(first, ""), environ.get(second, "")
    if not any(urls):
        return None
    if not all(urls):
        raise ServiceUnavailable(f"Set both {first} and {second}, or neither.")
    return urls
