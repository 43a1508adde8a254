"""A line plot as a standalone SVG file, written without a plotting library (the report embeds it as an image)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 760, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 24, 44, 58
_MARKERS_UP_TO = 100  # points drawn as dots when there are few enough to tell apart


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.6g}"


def _text(x: float, y: float, content: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(content)}</text>'


def _document(title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12" fill="#1e293b">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>'
        + _text(WIDTH / 2, 24, title, extra=' font-size="15" font-weight="bold"')
        + "".join(body)
        + "</svg>\n"
    )


def message_plot(title: str, message: str) -> str:
    """An SVG that says why there is nothing to plot, so the report shows a reason instead of a broken image."""
    return _document(title, [_text(WIDTH / 2, HEIGHT / 2, message, extra=' fill="#475569"')])


def line_plot(title: str, points: Sequence[tuple[float, float]], x_label: str, y_label: str) -> str:
    """`points` (x, y) joined by a line, with labeled axes; fewer than 100 points are also drawn as dots."""
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return message_plot(title, "no values to plot")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    plot_width, plot_height = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            _LEFT + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_width,
            _TOP + plot_height - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_height,
        )

    body = [f'<g stroke="#e2e8f0">{_grid(at, x_ticks, y_ticks)}</g>', _axes(at, x_ticks, y_ticks)]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in points))
    body.append(f'<polyline points="{path}" fill="none" stroke="#2563eb" stroke-width="2"/>')
    if len(points) <= _MARKERS_UP_TO:
        body += [
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="#2563eb"><title>{_label(x)}: {_label(y)}</title></circle>'
            for (x, y), (px, py) in ((point, at(*point)) for point in points)
        ]
    body.append(_text(_LEFT + plot_width / 2, HEIGHT - 14, x_label))
    body.append(
        _text(18, _TOP + plot_height / 2, y_label, extra=f' transform="rotate(-90 18 {_TOP + plot_height / 2})"')
    )
    return _document(title, body)


def _grid(at, x_ticks: list[float], y_ticks: list[float]) -> str:
    lines = []
    for y in y_ticks:
        (x0, py), (x1, _) = at(x_ticks[0], y), at(x_ticks[-1], y)
        lines.append(f'<line x1="{x0:.1f}" y1="{py:.1f}" x2="{x1:.1f}" y2="{py:.1f}"/>')
    return "".join(lines)


def _axes(at, x_ticks: list[float], y_ticks: list[float]) -> str:
    (left, bottom), (right, top) = at(x_ticks[0], y_ticks[0]), at(x_ticks[-1], y_ticks[-1])
    parts = [f'<path d="M{left:.1f},{top:.1f} V{bottom:.1f} H{right:.1f}" fill="none" stroke="#334155"/>']
    for x in x_ticks:
        px, _ = at(x, y_ticks[0])
        parts.append(f'<line x1="{px:.1f}" y1="{bottom:.1f}" x2="{px:.1f}" y2="{bottom + 5:.1f}" stroke="#334155"/>')
        parts.append(_text(px, bottom + 19, _label(x)))
    for y in y_ticks:
        _, py = at(x_ticks[0], y)
        parts.append(f'<line x1="{left - 5:.1f}" y1="{py:.1f}" x2="{left:.1f}" y2="{py:.1f}" stroke="#334155"/>')
        parts.append(_text(left - 8, py + 4, _label(y), anchor="end"))
    return "".join(parts)
