"""Server-side SVG plots for the dashboard (no JavaScript, no CDN): latency percentiles over
time, and a call's per-turn latency bars. Every function returns an ``<svg>`` string."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bots.records.store import LatencyPoint

PERCENTILES = (50, 90, 99)
COLORS = {50: "#2a7ae2", 90: "#e29a2a", 99: "#d2423c"}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (``p`` in 0–100); ValueError when empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile p must be within 0..100, got {p}")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LatencyBucket:
    """Latency percentiles of the bot turns that started in ``[start, start + width)``."""

    start: datetime
    count: int
    p: dict[int, float]


def bucket_latencies(points: Sequence[LatencyPoint], width: timedelta) -> list[LatencyBucket]:
    """Group points into time buckets of ``width`` and compute :data:`PERCENTILES` in each."""
    if width.total_seconds() <= 0:
        raise ValueError(f"bucket width must be positive, got {width}")
    groups: dict[datetime, list[float]] = {}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for point in points:
        n = math.floor((point.at - epoch) / width)
        groups.setdefault(epoch + n * width, []).append(point.latency_ms)
    return [
        LatencyBucket(start, len(vals), {p: percentile(vals, p) for p in PERCENTILES})
        for start, vals in sorted(groups.items())
    ]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def percentile_chart(buckets: Sequence[LatencyBucket], width: int = 900, height: int = 260) -> str:
    """Lines of p50/p90/p99 voice-to-voice latency (ms) per time bucket."""
    if not buckets:
        return (
            f'<svg class="chart" width="{width}" height="60" role="img" '
            'aria-label="no latency data"><text x="10" y="35">No latency data in this '
            "period.</text></svg>"
        )
    left, right, top, bottom = 60, 110, 15, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = _nice_max(max(b.p[99] for b in buckets))
    n = len(buckets)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" role="img" '
        f'aria-label="voice-to-voice latency percentiles" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for k in range(5):
        v = y_max * k / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{v:.0f}</text>"
        )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" font-size="11" transform="rotate(-90 14 '
        f'{top + plot_h / 2:.0f})" text-anchor="middle">ms</text>'
    )
    label_every = max(1, n // 8)
    for i, b in enumerate(buckets):
        if i % label_every == 0:
            parts.append(
                f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'font-size="10">{html.escape(b.start.strftime("%m-%d %H:%M"))}</text>'
            )
    for j, p in reversed(list(enumerate(PERCENTILES))):  # p50 drawn last, on top
        coords = " ".join(f"{x(i):.1f},{y(b.p[p]):.1f}" for i, b in enumerate(buckets))
        color = COLORS[p]
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, b in enumerate(buckets):
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(b.p[p]):.1f}" r="3" fill="{color}">'
                f"<title>p{p} {b.p[p]:.0f} ms ({b.count} turns)</title></circle>"
            )
        ly = top + 14 + 18 * j
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{ly - 9}" width="14" height="4" fill="{color}"/>'
            f'<text x="{left + plot_w + 32}" y="{ly - 3}" font-size="12">p{p}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def turn_latency_bars(latencies: Sequence[tuple[str, float | None]], width: int = 640) -> str:
    """Horizontal bars, one per bot turn: ``(label, latency_ms)`` (None: no measurement)."""
    rows = [(label, ms) for label, ms in latencies]
    if not rows:
        return '<p class="muted">No bot turns.</p>'
    bar_h, gap, left, right = 18, 6, 90, 80
    height = len(rows) * (bar_h + gap) + gap
    x_max = _nice_max(max((ms for _, ms in rows if ms is not None), default=1.0))
    plot_w = width - left - right
    parts = [
        f'<svg class="bars" width="{width}" height="{height}" role="img" '
        'aria-label="per-turn latency" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, ms) in enumerate(rows):
        y0 = gap + i * (bar_h + gap)
        parts.append(
            f'<text x="{left - 8}" y="{y0 + 13}" text-anchor="end" font-size="12">'
            f"{html.escape(label)}</text>"
        )
        if ms is None:
            parts.append(f'<text x="{left}" y="{y0 + 13}" font-size="12" fill="#888">—</text>')
            continue
        w = max(1.0, plot_w * ms / x_max)
        color = "#2a7ae2" if ms < 800 else ("#e29a2a" if ms < 1500 else "#d2423c")
        parts.append(
            f'<rect x="{left}" y="{y0}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
            f"<title>{ms:.0f} ms</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y0 + 13}" font-size="12">{ms:.0f} ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
