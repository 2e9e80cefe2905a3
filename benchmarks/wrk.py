"""Running wrk against 127.0.0.1 and reading its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from benchmarks.servers import HOST, pinned

UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
# wrk's own margin past its duration before the harness gives up on it.
GRACE: Final = 30.0


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported. Latencies are in milliseconds."""

    requests: int
    requests_per_second: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    def seen(self, connections: int) -> float:
        """The share of ``connections`` clients' time the latencies account for (Little's
        law: 1.0 when every request in flight was answered within the run; see Sample)."""
        return self.mean_ms / 1000 * self.requests_per_second / connections


def available() -> bool:
    """Whether wrk is installed."""
    return shutil.which("wrk") is not None


def run(
    port: int,
    path: str,
    *,
    connections: int,
    duration: float,
    core: int | None,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    """Load ``http://127.0.0.1:port/path`` with wrk for ``duration`` seconds; every request
    carries ``headers``."""
    extra: list[str] = []
    for name, value in (headers or {}).items():
        extra += ["-H", f"{name}: {value}"]
    command = pinned(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--latency", "--timeout", "10s", *extra, f"http://{HOST}:{port}{path}",
        ],
        core,
    )  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + GRACE, check=True
    )
    return parse(completed.stdout)


def parse(report: str) -> WrkResult:
    """Read requests, requests/s, p50, p99 and the errors from wrk's ``--latency`` report."""

    def number(pattern: str) -> re.Match[str]:
        match = re.search(pattern, report, flags=re.MULTILINE)
        if match is None:
            message = f"wrk's report has no match for {pattern!r}:\n{report}"
            raise ValueError(message)
        return match

    def latency(label: str) -> float:
        return _in_ms(number(rf"^\s+{label}%\s+([\d.]+)(us|ms|s|m)\s*$"))

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    return WrkResult(
        requests=int(number(r"(\d+) requests in").group(1)),
        requests_per_second=float(number(r"Requests/sec:\s+([\d.]+)").group(1)),
        mean_ms=_in_ms(number(r"^\s+Latency\s+([\d.]+)(us|ms|s|m)\s")),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def _in_ms(match: re.Match[str]) -> float:
    return float(match.group(1)) * UNITS[match.group(2)]
