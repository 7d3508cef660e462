"""Metric-vs-step line charts as plain geometry, rendered to inline SVG by a Jinja macro.

Hand-built rather than matplotlib: a chart is a few polylines and a band polygon, computing it
takes well under a millisecond where importing and rendering matplotlib costs a second and
tens of milliseconds per figure, the SVG stays small and selectable, every label goes through
the template's autoescaping, and each point carries a ``<title>`` tooltip with its exact
values. Geometry is computed here; the template only draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass(frozen=True)
class SeriesPoint:
    """One x position of a series: the mean, an optional band (p25..p75) and the count."""

    x: float
    mean: float | None
    low: float | None = None
    high: float | None = None
    count: int = 0


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[SeriesPoint]


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class DrawnPoint:
    cx: float
    cy: float
    tooltip: str


@dataclass(frozen=True)
class DrawnSeries:
    label: str
    color: str
    line: str  # SVG polyline points
    band: str  # SVG polygon points (empty without a band)
    points: list[DrawnPoint]


@dataclass
class Chart:
    """Everything the SVG template needs, in pixel coordinates."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    x_label: str
    y_label: str
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    series: list[DrawnSeries] = field(default_factory=list)
    empty: bool = True
    band_label: str = "band: p25–p75"


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def format_number(value: float) -> str:
    """Short human form: 0.734, 12.5, 1,204, 3.2e-05."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.3g}" if magnitude < 100 else f"{value:.0f}"
    if magnitude >= 0.001:
        return f"{value:.3g}"
    return f"{value:.2e}"


def line_chart(
    series: Sequence[Series],
    *,
    x_label: str = "step",
    y_label: str = "",
    width: int = 760,
    height: int = 340,
) -> Chart:
    """Lay out ``series`` (mean lines, p25-p75 bands) on shared axes."""
    left, right, top, bottom = 64, 16, 16, 44
    chart = Chart(
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=width - left - right,
        plot_height=height - top - bottom,
        x_label=x_label,
        y_label=y_label,
    )
    xs = [p.x for s in series for p in s.points if p.mean is not None]
    ys = [
        v
        for s in series
        for p in s.points
        if p.mean is not None
        for v in (p.mean, p.low, p.high)
        if v is not None
    ]
    if not xs or not ys:
        return chart
    chart.empty = False
    y_ticks = nice_ticks(min(ys), max(ys))
    x_ticks = nice_ticks(min(xs), max(xs), target=8)
    x_lo, x_hi = (min(xs), max(xs)) if max(xs) > min(xs) else (x_ticks[0], x_ticks[-1])
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return round(left + (x - x_lo) / (x_hi - x_lo) * chart.plot_width, 2)

    def py(y: float) -> float:
        return round(top + (y_hi - y) / (y_hi - y_lo) * chart.plot_height, 2)

    chart.x_ticks = [
        Tick(px(x), format_number(x)) for x in x_ticks if x_lo - 1e-9 <= x <= x_hi + 1e-9
    ]
    chart.y_ticks = [Tick(py(y), format_number(y)) for y in y_ticks]
    for index, one in enumerate(series):
        drawn = [p for p in one.points if p.mean is not None]
        if not drawn:
            continue
        banded = [p for p in drawn if p.low is not None and p.high is not None]
        band = ""
        if banded:
            upper = [_pt(px(p.x), py(p.high)) for p in banded]  # type: ignore[arg-type]
            lower = [_pt(px(p.x), py(p.low)) for p in reversed(banded)]  # type: ignore[arg-type]
            band = " ".join(upper + lower)
        chart.series.append(
            DrawnSeries(
                label=one.label,
                color=PALETTE[index % len(PALETTE)],
                line=" ".join(_pt(px(p.x), py(p.mean)) for p in drawn),  # type: ignore[arg-type]
                band=band,
                points=[
                    DrawnPoint(px(p.x), py(p.mean), _tooltip(one.label, x_label, p))  # type: ignore[arg-type]
                    for p in drawn
                ],
            )
        )
    return chart


def _pt(x: float, y: float) -> str:
    return f"{x:g},{y:g}"


def _tooltip(label: str, x_label: str, point: SeriesPoint) -> str:
    text = f"{label}, {x_label} {format_number(point.x)}: mean {point.mean:.6g}"
    if point.low is not None and point.high is not None:
        text += f", p25 {point.low:.6g}, p75 {point.high:.6g}"
    return text + f", n={point.count}"
