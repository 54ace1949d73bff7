"""Daily spend as a bar chart drawn on the server: geometry for an inline SVG, no script.

The template (``admin/usage/report.html``) draws what :func:`spend_chart` computes: one bar per
day, each with its own tooltip, the y axis at round amounts, a few day labels on the x axis."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings

from .cost import money

WIDTH = 760
HEIGHT = 240
LEFT = 64  # room for the y axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the day labels
PLOT_WIDTH = WIDTH - LEFT - RIGHT
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
GRIDLINES = 4
MOST_DAY_LABELS = 10


@dataclass(frozen=True)
class Bar:
    day: date
    cost: Decimal
    x: float
    width: float
    y: float
    height: float
    band_x: float  # the day's whole column, so that a day with nothing spent still has a tooltip
    band_width: float
    tooltip: str


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    summary: str
    bars: list[Bar]
    y_ticks: list[Tick]
    x_labels: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = PLOT_WIDTH
    plot_height: int = PLOT_HEIGHT

    @property
    def baseline(self) -> int:
        return TOP + PLOT_HEIGHT

    @property
    def right(self) -> int:
        return LEFT + PLOT_WIDTH

    @property
    def y_label_x(self) -> int:
        return LEFT - 6

    @property
    def x_label_y(self) -> int:
        return TOP + PLOT_HEIGHT + 18


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (1 for 0), so
    that the gridlines fall on round amounts."""
    if value <= 0:
        return Decimal(1)
    magnitude = Decimal(10) ** (value.adjusted())
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if value <= magnitude * step:
            return magnitude * step
    return magnitude * 10


def spend_chart(days: list[tuple[date, Decimal]], *, title: str, currency: str | None = None) -> Chart:
    """The chart of ``days`` (every day of the period, oldest first, with what was spent on it)."""
    currency = currency or settings.USAGE_CURRENCY
    top = nice_ceiling(max((cost for _, cost in days), default=Decimal(0)))
    band = PLOT_WIDTH / max(len(days), 1)
    gap = min(band * 0.2, 4)
    bars = []
    for index, (day, cost) in enumerate(days):
        height = float(cost / top) * PLOT_HEIGHT
        band_x = LEFT + index * band
        bars.append(
            Bar(
                day=day,
                cost=cost,
                x=round(band_x + gap / 2, 2),
                width=round(max(band - gap, 0.5), 2),
                y=round(TOP + PLOT_HEIGHT - height, 2),
                height=round(height, 2),
                band_x=round(band_x, 2),
                band_width=round(band, 2),
                tooltip=f"{day.isoformat()}: {money(cost, currency)}",
            )
        )
    y_ticks = [
        Tick(position=round(TOP + PLOT_HEIGHT * (1 - i / GRIDLINES), 2), label=money(top * i / GRIDLINES, currency))
        for i in range(GRIDLINES + 1)
    ]
    every = -(-len(days) // MOST_DAY_LABELS)  # ceiling division
    x_labels = [
        Tick(position=round(bar.band_x + band / 2, 2), label=f"{bar.day:%b} {bar.day.day}") for bar in bars[::every]
    ]
    return Chart(title=title, summary=_summary(days, currency), bars=bars, y_ticks=y_ticks, x_labels=x_labels)


def _summary(days: list[tuple[date, Decimal]], currency: str) -> str:
    if not days:
        return "No days in the period."
    spent = sum((cost for _, cost in days), Decimal(0))
    peak_day, peak = max(days, key=lambda item: (item[1], -item[0].toordinal()))
    text = f"{money(spent, currency)} over {len(days)} day{'s' if len(days) != 1 else ''}"
    if peak > 0:
        text += f"; the most on {peak_day.isoformat()}: {money(peak, currency)}"
    return text + "."
