"""Small server-side SVG charts: bars (optionally stacked) and lines, no JavaScript needed.

Every piece of text that reaches the SVG (titles, labels, series names, tooltips) goes through
``html.escape``; colours come from CSS classes in the dashboard's stylesheet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 640
HEIGHT = 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 10, 26
_GRID_LINES = 4

Format = Callable[[float], str]


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]
    css: str
    """A class of the stylesheet: s1, s2, s3 or err."""


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times 10^n that is at least ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)


def axis_top(peak: float, least_top: float = 0.0, whole: bool = False) -> float:
    """The top of a y axis over ``peak`` whose grid lines fall on round values (whole numbers
    for counts)."""
    step = nice_ceiling(max(peak, least_top) / _GRID_LINES)
    if whole:
        step = max(1.0, 5.0 if step == 2.5 else step)
    return step * _GRID_LINES


def _frame(title: str, labels: Sequence[str], top: float, fmt: Format) -> list[str]:
    plot_h = HEIGHT - _TOP - _BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(_GRID_LINES + 1):
        value = top * i / _GRID_LINES
        y = _TOP + plot_h - plot_h * i / _GRID_LINES
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(value))}</text>"
        )
    count = len(labels)
    if count:
        plot_w = WIDTH - _LEFT - _RIGHT
        slot = plot_w / count
        shown = sorted({0, count // 2, count - 1})
        for index in shown:
            x = _LEFT + slot * (index + 0.5)
            anchor = (
                "start" if index == 0 and count > 1 else "end" if index == count - 1 else "middle"
            )
            if count == 1:
                anchor = "middle"
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                f"{escape(labels[index])}</text>"
            )
    return parts


def _figure(title: str, series: Sequence[Series], svg: list[str]) -> Markup:
    legend = "".join(f'<span class="key {escape(s.css)}">{escape(s.name)}</span>' for s in series)
    return Markup(
        f'<figure class="chart-box"><figcaption>{escape(title)}'
        f'<span class="legend">{legend}</span></figcaption>{"".join(svg)}</svg></figure>'
    )


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    fmt: Format,
    least_top: float = 0.0,
    whole: bool = False,
) -> Markup:
    """Bars per label, the series stacked bottom to top in the order given; the y axis reaches
    at least ``least_top``, with grid lines on whole numbers when ``whole``."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = axis_top(max(totals, default=0.0), least_top, whole)
    parts = _frame(title, labels, top, fmt)
    plot_h = HEIGHT - _TOP - _BOTTOM
    plot_w = WIDTH - _LEFT - _RIGHT
    slot = plot_w / max(len(labels), 1)
    width = max(slot * 0.7, 1.0)
    for index, label in enumerate(labels):
        base = 0.0
        x = _LEFT + slot * index + (slot - width) / 2
        for s in series:
            value = s.values[index]
            if value <= 0:
                continue
            height = plot_h * value / top
            y = _TOP + plot_h - plot_h * base / top - height
            parts.append(
                f'<rect class="bar {escape(s.css)}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{width:.1f}" height="{height:.1f}">'
                f"<title>{escape(label)}: {escape(fmt(value))} {escape(s.name)}</title></rect>"
            )
            base += value
    return _figure(title, series, parts)


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    fmt: Format,
    least_top: float = 0.0,
    whole: bool = False,
) -> Markup:
    """One line per series; a point with a tooltip at each label (the axis as for bars)."""
    peak = max((v for s in series for v in s.values), default=0.0)
    top = axis_top(peak, least_top, whole)
    parts = _frame(title, labels, top, fmt)
    plot_h = HEIGHT - _TOP - _BOTTOM
    plot_w = WIDTH - _LEFT - _RIGHT
    slot = plot_w / max(len(labels), 1)
    for s in series:
        points = [
            (_LEFT + slot * (i + 0.5), _TOP + plot_h - plot_h * v / top)
            for i, v in enumerate(s.values)
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline class="line {escape(s.css)}" points="{path}"/>')
        for (x, y), label, value in zip(points, labels, s.values, strict=True):
            parts.append(
                f'<circle class="dot {escape(s.css)}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                f"<title>{escape(label)}: {escape(s.name)} {escape(fmt(value))}</title></circle>"
            )
    return _figure(title, series, parts)
