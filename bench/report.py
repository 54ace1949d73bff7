"""Results of the scenarios and the markdown they are reported in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def duration(seconds: float) -> str:
    return ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


@dataclass
class Row:
    """One line of the table. ``met`` is None for a row without a target (a reference flow)."""

    scenario: str
    samples: int | str
    median: str
    p95: str
    calls: str
    target: str = ""
    met: bool | None = None
    ratio: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> str:
        if self.met is None:
            return "—" if not self.target else "n/a"
        return "met" if self.met else "**missed**"


def latency_row(
    scenario: str,
    samples: list[float],
    *,
    calls: str,
    target: str = "",
    met: bool | None = None,
    ratio: str = "",
    notes: list[str] | None = None,
) -> Row:
    return Row(
        scenario=scenario,
        samples=len(samples),
        median=ms(median(samples)),
        p95=ms(p95(samples)),
        calls=calls,
        target=target,
        met=met,
        ratio=ratio,
        notes=notes or [],
    )


def unavailable_row(scenario: str, target: str, reason: str) -> Row:
    return Row(scenario=scenario, samples=0, median="n/a", p95="n/a", calls="n/a", target=target, met=None,
               notes=[f"n/a — {reason}"])  # fmt: skip


def calls_per_sample(counts: list[int]) -> str:
    if not counts:
        return "n/a"
    low, high = min(counts), max(counts)
    return f"{low}/launch" if low == high else f"{low}–{high}/launch (median {median(counts):g})"


def ratio(portal: list[float], reference: list[float]) -> float:
    return median(portal) / median(reference)


HEADER = ("scenario", "samples", "median", "p95", "provider calls", "target", "result", "portal / reference")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for row in rows:
        cells = (row.scenario, str(row.samples), row.median, row.p95, row.calls, row.target or "—", row.result,
                 row.ratio or "—")  # fmt: skip
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        for note in row.notes:
            lines.append(f"- **{row.scenario}**: {note}")
    return "\n".join(lines)
