"""Starting and stopping one uvicorn worker per variant, pinned to its own core.

Every server runs in a process group of its own and is stopped (SIGTERM, then SIGKILL) when
its ``with`` block ends, however it ends. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
STARTUP_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
START_ATTEMPTS: Final = 3
RETRY_PAUSE: Final = 5.0
# The line the harness writes into a server's log before each start (not the server's own).
HEADER: Final = "--- harness: start "


class ServerError(RuntimeError):
    """A variant's server did not come up; the message holds its output."""


@dataclass(frozen=True)
class Server:
    """A running variant: where it listens and where its output goes."""

    name: str
    port: int
    log: Path
    pid: int

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    """Whether servers and load can each have a core: taskset exists and there are two."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def fast_stack() -> bool:
    """Whether uvloop and httptools are installed (uvicorn's fast event loop and parser)."""
    return all(importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools"))


def pinned(command: list[str], core: int | None) -> list[str]:
    """``command`` run by ``taskset -c core`` when pinning is possible and asked for."""
    if core is None or not can_pin():
        return command
    return ["taskset", "-c", str(core), *command]


def uvicorn_command(module: str, port: int, *, fast: bool) -> list[str]:
    """The uvicorn command for ``benchmarks.variants.<module>:app``: one worker, no access log.

    With ``fast``, uvloop and httptools are required; otherwise uvicorn picks them when they
    are installed and falls back to asyncio and h11.
    """
    loop, http = ("uvloop", "httptools") if fast else ("auto", "auto")
    return [
        sys.executable, "-m", "uvicorn", f"benchmarks.variants.{module}:app",
        "--app-dir", str(ROOT),
        "--host", HOST, "--port", str(port),
        "--loop", loop, "--http", http,
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@contextlib.contextmanager
def running(
    name: str,
    module: str,
    *,
    env: dict[str, str],
    log: Path,
    core: int | None,
    fast: bool,
) -> Iterator[Server]:
    """Run one variant until the block ends; raise ServerError if it does not serve /nodb.

    A server that fails to start is tried again (START_ATTEMPTS in all): on a shared
    machine, PostgreSQL may refuse new connections for a moment when other work holds
    them all.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        command = pinned(uvicorn_command(module, port, fast=fast), core)
        with log.open("a") as output:
            output.write(f"{HEADER}{attempt} of {START_ATTEMPTS}: {' '.join(command)}\n")
            output.flush()
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, stopped as a whole
            )
        server = Server(name=name, port=port, log=log, pid=process.pid)
        try:
            _wait_until_serving(process, server)
        except ServerError:
            _stop(process)
            if attempt == START_ATTEMPTS:
                raise
            time.sleep(RETRY_PAUSE)
            continue
        break
    try:
        yield server
    finally:
        _stop(process)


def _wait_until_serving(process: subprocess.Popen[bytes], server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            message = (
                f"{server.name} exited with {process.returncode} before serving:\n"
                f"{server.log_text()[-3000:]}"
            )
            raise ServerError(message)
        if get_status(server.port, "/nodb", timeout=1.0) == 200:
            return
        time.sleep(0.1)
    message = (
        f"{server.name} did not answer within {STARTUP_TIMEOUT} s:\n{server.log_text()[-3000:]}"
    )
    raise ServerError(message)


def get_status(port: int, path: str, *, timeout: float) -> int | None:
    """The status of one GET on 127.0.0.1, or None if no response came."""
    return get(port, path, timeout=timeout)[0]


def get(port: int, path: str, *, timeout: float) -> tuple[int | None, bytes]:
    """The status and body of one GET on 127.0.0.1; (None, b"") if no response came."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
