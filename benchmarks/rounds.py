"""The load rounds: every variant on every load, each run paired with a blog-pattern run.

Each variant runs in its own uvicorn worker pinned to the server core, with wrk on the load
core; the blog pattern's server stays up beside it all round, so that every ratio compares
two runs seconds apart.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
from collections.abc import Iterator

from benchmarks import report, servers, wrk
from benchmarks.catalog import BASELINE, BY_NAME, LOADS, Load, Variant
from benchmarks.config import LOAD_CORE, SERVER_CORE, base_env


def load_rounds(
    variants: list[Variant], args: argparse.Namespace
) -> tuple[list[report.Sample], dict[str, str]]:
    """Every variant, every load, ``args.runs`` rounds, each run paired with a blog run.

    In each round the blog pattern's server stays up beside the variant under test, and
    every run of a variant has a run of the blog pattern on the same load right before or
    after it (alternately), so that each ratio compares two runs seconds apart. A variant
    that fails in a round misses that round only (the reason is returned); without the blog
    pattern there are no ratios.
    """
    samples: list[report.Sample] = []
    failed: dict[str, str] = {}
    others = [variant for variant in variants if variant.name != BASELINE]
    baseline = BY_NAME[BASELINE] if any(v.name == BASELINE for v in variants) else None
    pairs = itertools.count()
    for round_ in range(args.runs):
        shift = round_ % len(others) if others else 0
        with contextlib.ExitStack() as stack:
            reference = None
            if baseline is not None:
                try:
                    reference = stack.enter_context(
                        _serving(baseline, args, round_, every_load=True)
                    )
                except servers.ServerError as error:
                    _note(failed, BASELINE, round_, error)
            for variant in others[shift:] + others[:shift]:
                print(f"round {round_ + 1}/{args.runs}: {variant.label}", flush=True)
                try:
                    with _serving(variant, args, round_) as server:
                        for index, load in enumerate(LOADS):
                            pair = next(pairs)
                            runs = [(variant, server)]
                            if baseline is not None and reference is not None:
                                runs.append((baseline, reference))
                            if (round_ + index) % 2:
                                runs.reverse()
                            for who, where in runs:
                                # The reference server stays up all round, warm already.
                                warm = who is variant
                                sample = _measure(who, where, load, round_, pair, args, warm)
                                samples.append(sample)
                except (servers.ServerError, subprocess.SubprocessError, ValueError) as error:
                    _note(failed, variant.name, round_, error)
    if not any(sample.variant == BASELINE for sample in samples):
        print("the blog pattern did not run: no ratios this time", file=sys.stderr)
    return samples, failed


def _note(failed: dict[str, str], name: str, round_: int, error: Exception) -> None:
    print(f"  {name} failed in round {round_ + 1}: {error}", file=sys.stderr, flush=True)
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    note = f"round {round_ + 1}: {first_line} (see the log in results/logs)"
    failed[name] = f"{failed[name]}; {note}" if name in failed else note


@contextlib.contextmanager
def _serving(
    variant: Variant, args: argparse.Namespace, round_: int, *, every_load: bool = False
) -> Iterator[servers.Server]:
    """A variant's server, warmed up: its pool filled and its statements prepared."""
    log = args.output / "logs" / f"{variant.name}-round{round_ + 1}.log"
    with servers.running(
        variant.label, variant.name, env=base_env(), log=log, core=SERVER_CORE, fast=True
    ) as server:
        wrk.run(server.port, "/db", connections=64, duration=2, core=LOAD_CORE)
        for load in LOADS if every_load and args.warmup > 0 else ():
            wrk.run(
                server.port, load.path, connections=load.connections,
                duration=args.warmup, core=LOAD_CORE,
            )  # fmt: skip
        yield server


def _measure(
    variant: Variant,
    server: servers.Server,
    load: Load,
    round_: int,
    pair: int,
    args: argparse.Namespace,
    warm: bool,
) -> report.Sample:
    if warm and args.warmup > 0:
        wrk.run(
            server.port, load.path, connections=load.connections,
            duration=args.warmup, core=LOAD_CORE,
        )  # fmt: skip
    result = wrk.run(
        server.port, load.path, connections=load.connections,
        duration=args.duration, core=LOAD_CORE,
    )  # fmt: skip
    errors = result.non_2xx + result.socket_errors
    print(
        f"  {variant.name:<16} {load.key:<11} {result.requests_per_second:>9,.0f} req/s  "
        f"p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
        + (f"  errors {errors}" if errors else ""),
        flush=True,
    )
    return report.Sample(
        round=round_,
        pair=pair,
        variant=variant.name,
        load=load.key,
        requests=result.requests,
        requests_per_second=result.requests_per_second,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=errors,
        seen=result.seen(load.connections),
    )
