"""Run an ASGI app in a real uvicorn process and talk HTTP to it over 127.0.0.1.

In-process clients (TestClient, httpx.ASGITransport) raise a failed commit inside the test
instead of showing the response a real server sends, so commit-timing tests use this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TESTS = Path(__file__).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    app: str, env: dict[str, str], *, startup_timeout: float = 20.0
) -> Iterator[str]:
    """Start ``uvicorn app`` (``module:attribute``, importable from tests/apps) and yield
    its base URL; stop it on exit. The server's output is shown if it fails to start."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", app,
        "--app-dir", str(TESTS / "apps"),
        "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, base_url, startup_timeout)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_until_up(process: subprocess.Popen[str], base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            message = f"uvicorn exited with {process.returncode} before serving:\n{output}"
            raise RuntimeError(message)
        try:
            httpx.get(f"{base_url}/docs", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return
    message = f"uvicorn did not answer on {base_url} within {timeout} s"
    raise RuntimeError(message)
