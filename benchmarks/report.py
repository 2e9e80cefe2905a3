"""Summing the runs up: medians, spreads, ratios to the blog pattern, tables and the chart."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.catalog import BASELINE, BY_NAME, LOADS, Load


@dataclass(frozen=True)
class Sample:
    """One measured run of one variant on one load.

    Attributes:
        pair: the run of the other variant (the blog pattern, or the variant the blog pattern
            was paired with) that ran right beside this one has the same number.
        seen: the share of the clients' time that the latencies measured account for: mean
            latency x requests/s / connections. wrk's clients send their next request as soon
            as they have an answer, so (Little's law) it is 1.0 when every client is answered
            in its turn; far below, many clients waited on requests that did not finish
            within the run, and which p50 and p99 leave out.
    """

    round: int
    pair: int
    variant: str
    load: str
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    seen: float


@dataclass(frozen=True)
class Summary:
    """All runs of one variant on one load, summed up.

    The ratio compares each run with the blog pattern's run of the same load right beside
    it (the same ``pair``), so that a noisy minute weighs on both sides of it. The blog
    pattern's own figures take all of its runs.
    """

    variant: str
    load: str
    runs: int
    rps_median: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    seen: float
    errors: int
    ratio_median: float | None
    ratio_min: float | None
    ratio_max: float | None


def summarize(samples: list[Sample]) -> list[Summary]:
    """One Summary per variant and load, in catalog order."""
    baseline = {s.pair: s.requests_per_second for s in samples if s.variant == BASELINE}
    summaries = []
    variants = [name for name in BY_NAME if any(s.variant == name for s in samples)]
    for variant in variants:
        for load in LOADS:
            runs = [s for s in samples if s.variant == variant and s.load == load.key]
            if not runs:
                continue
            rps = [s.requests_per_second for s in runs]
            ratios = [
                s.requests_per_second / baseline[s.pair] for s in runs if baseline.get(s.pair)
            ]
            summaries.append(
                Summary(
                    variant=variant,
                    load=load.key,
                    runs=len(runs),
                    rps_median=statistics.median(rps),
                    rps_min=min(rps),
                    rps_max=max(rps),
                    p50_ms=statistics.median(s.p50_ms for s in runs),
                    p99_ms=statistics.median(s.p99_ms for s in runs),
                    seen=statistics.median(s.seen for s in runs),
                    errors=sum(s.errors for s in runs),
                    ratio_median=statistics.median(ratios) if ratios else None,
                    ratio_min=min(ratios) if ratios else None,
                    ratio_max=max(ratios) if ratios else None,
                )
            )
    return summaries


def _ratio(summary: Summary) -> str:
    if summary.ratio_median is None or summary.ratio_min is None or summary.ratio_max is None:
        return "—"
    return f"{summary.ratio_median:.2f}x ({summary.ratio_min:.2f}-{summary.ratio_max:.2f})"


def text_table(summaries: list[Summary]) -> str:
    """A plain-text table for the terminal."""
    header = f"{'variant':<28} {'load':<11} {'req/s':>8} {'min-max':>13} {'p50 ms':>8} "
    header += f"{'p99 ms':>8} {'seen':>5} {'vs blog (min-max)':>20} {'errors':>6}"
    lines = [header, "-" * len(header)]
    for s in summaries:
        spread = f"{s.rps_min:,.0f}-{s.rps_max:,.0f}"
        lines.append(
            f"{BY_NAME[s.variant].label:<28} {s.load:<11} {s.rps_median:>8,.0f} {spread:>13} "
            f"{s.p50_ms:>8.1f} {s.p99_ms:>8.1f} {s.seen:>5.0%} {_ratio(s):>20} {s.errors:>6}"
        )
    return "\n".join(lines)


def markdown_tables(summaries: list[Summary]) -> str:
    """One Markdown table per load, variants as rows."""
    parts = []
    for load in LOADS:
        rows = [s for s in summaries if s.load == load.key]
        if not rows:
            continue
        parts.append(f"**`GET {load.path}`, {load.connections} connections**\n")
        parts.append(
            "| variant | req/s (median) | min-max | p50 ms | p99 ms | latency seen | vs blog "
            "pattern (min-max) | non-2xx + socket errors |"
        )
        parts.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in rows:
            parts.append(
                f"| {BY_NAME[s.variant].label} | {s.rps_median:,.0f} | "
                f"{s.rps_min:,.0f}-{s.rps_max:,.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | "
                f"{s.seen:.0%} | {_ratio(s)} | {s.errors} |"
            )
        parts.append("")
    return "\n".join(parts)


def overload_markdown(results: list[dict[str, Any]]) -> str:
    """The overload figures, one column per scenario."""
    if not results:
        return ""
    lines = ["| | " + " | ".join(r["label"] for r in results) + " |"]
    lines.append("|---|" + "---:|" * len(results))
    lines += [
        f"| {name} | " + " | ".join(values) + " |" for name, values in _overload_rows(results)
    ]
    return "\n".join(lines) + "\n"


def _overload_rows(results: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The rows of the overload table: a name, then one cell per scenario."""
    return [
        ("responses in the load window", [str(r["responses"]) for r in results]),
        (
            "statuses",
            [", ".join(f"{k}: {v}" for k, v in r["statuses"].items()) or "—" for r in results],
        ),
        ("transport errors (no response)", [str(r["transport_errors"]) for r in results]),
        (
            "connections closed by the server",
            [str(r["reconnects"]) for r in results],
        ),
        ("time to the first 503", [_cell(r["first_503_s"], " s") for r in results]),
        (
            "p50 / p99 of the 2xx",
            [f"{r['success_p50_ms']} / {r['success_p99_ms']} ms" for r in results],
        ),
        (
            "p50 / p99 of the 503s",
            [f"{_cell(r['shed_p50_ms'])} / {_cell(r['shed_p99_ms'])} ms" for r in results],
        ),
        ("p50 of the 500s", [_cell(r["error_500_p50_ms"], " ms") for r in results]),
        (
            "what the pool serves to 10 clients (nominal 100 req/s)",
            [f"{r['capacity_rps']} req/s" for r in results],
        ),
        (
            "goodput under overload (share of the above)",
            [f"{r['goodput_rps']} req/s ({r['goodput_ratio']:.0%})" for r in results],
        ),
        (
            "healthy again (GET /db 200) after the load",
            [
                f"{_cell(r['healthy_after_s'], ' s')} ({'yes' if r['healthy_within_1s'] else 'no'})"
                for r in results
            ],
        ),
        ("tracebacks logged", [str(r["tracebacks"]) for r in results]),
        ("log lines", [str(r["log_lines"]) for r in results]),
    ]


def _cell(value: Any, unit: str = "") -> str:
    return "—" if value is None else f"{value}{unit}"


def chart(summaries: list[Summary], path: Path, title: str) -> None:
    """A bar chart of requests/s per variant, one panel per load, min-max as whiskers."""
    import matplotlib  # only the benchmark environment has it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [load for load in LOADS if any(s.load == load.key for s in summaries)]
    variants = [name for name in BY_NAME if any(s.variant == name for s in summaries)]
    columns = 3
    rows_count = -(-len(loads) // columns)
    figure, axes = plt.subplots(
        rows_count, columns, figsize=(15, 0.5 + rows_count * (1.2 + 0.42 * len(variants))),
        squeeze=False,
    )  # fmt: skip
    panels = [axis for row in axes for axis in row]
    for axis in panels[len(loads) :]:
        axis.axis("off")
    for index, (axis, load) in enumerate(zip(panels, loads, strict=False)):
        rows = {s.variant: s for s in summaries if s.load == load.key}
        bars = [rows[name] for name in variants if name in rows]
        _panel(axis, load, bars, labelled=index % columns == 0)
    if len(panels) > len(loads):
        _legend(panels[len(loads)])
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(axis: Any, load: Load, rows: list[Summary], *, labelled: bool) -> None:
    """One load's bars, top to bottom in ``rows``' order; variant names on ``labelled`` only."""
    values = [s.rps_median for s in rows]
    low = [s.rps_median - s.rps_min for s in rows]
    high = [s.rps_max - s.rps_median for s in rows]
    positions = list(range(len(rows)))[::-1]
    axis.barh(
        positions,
        values,
        xerr=[low, high],
        color=[_color(s.variant) for s in rows],
        capsize=3,
        error_kw={"elinewidth": 1, "ecolor": "#333333"},
    )
    axis.set_yticks(positions)
    axis.set_yticklabels([BY_NAME[s.variant].label for s in rows] if labelled else [])
    axis.set_title(f"GET {load.path}\n{load.connections} connections", fontsize=10)
    axis.set_xlabel("requests/s (median, min-max)")
    axis.grid(axis="x", alpha=0.3)
    limit = max(s.rps_max for s in rows)
    axis.set_xlim(0, limit * 1.35)
    for position, s in zip(positions, rows, strict=True):
        label = f"{s.rps_median:,.0f}"
        if s.ratio_median is not None:
            label += f"  {s.ratio_median:.2f}x"
        axis.text(limit * 0.02 + s.rps_max, position, label, va="center", fontsize=8)


def _legend(axis: Any) -> None:
    """The colours and how to read a bar, in the first free panel."""
    from matplotlib.patches import Rectangle  # only the benchmark environment has it

    notes = [
        ("#2a7ab9", "dbscope"),
        ("#e08a1e", "blog pattern: the reference (1.00x)"),
        ("#7d7d7d", "raw asyncpg, SQLAlchemy Core"),
        ("#b5b5b5", "other libraries"),
    ]
    for row, (color, text) in enumerate(notes):
        axis.add_patch(Rectangle((0.02, 0.8 - row * 0.12), 0.06, 0.07, color=color))
        axis.text(0.11, 0.835 - row * 0.12, text, va="center", fontsize=9)
    axis.text(
        0.02, 0.25,
        "bar: median of the runs; whisker: min-max\n"
        "label: median req/s, then the median ratio to\n"
        "the blog pattern's run right beside each run",
        fontsize=8.5, va="top",
    )  # fmt: skip


def _color(name: str) -> str:
    if name.startswith("dbscope"):
        return "#2a7ab9"
    if name == BASELINE:
        return "#e08a1e"
    if name in ("raw_asyncpg", "sa_core"):
        return "#7d7d7d"
    return "#b5b5b5"
