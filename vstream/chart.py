"""``vstream chart``: price, volume by tier and the signals of a range of bars, as one picture.

The picture is a self-contained SVG written here (no library, no CDN, no script): price on top
as candles (or a close line when there are too many bars for candles to be readable), volume
below coloured by tier with each bar's whale volume shaded dark inside it, and markers for
absorption (gold diamond above the bar), bearish divergence (red triangle down, above),
bullish divergence (green triangle up, below), whale trades (black dot above the volume
bar, larger with more whale trades) and, on footprint bars, poor highs and lows (a purple dash
across the wick's tip, and a dashed line on to the right edge while no later bar of the chart
has traded through it). Hovering a bar in a browser shows its numbers.

``.svg`` and ``.html`` (the SVG in a minimal page) need nothing else; ``.png`` needs the
optional ``cairosvg`` package (``pip install 'vstream[chart]'``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any, Protocol

from .assembler import Bar
from .errors import ConfigError, SinkError
from .settings import TIMEFRAMES

WIDTH, HEIGHT = 1200, 680
#: More bars than this in one chart is refused: pick a higher timeframe or a shorter range.
MAX_BARS = 6000
#: Up to this many bars are drawn as candles with ``style="auto"``, more as a close line.
CANDLE_LIMIT = 360

BACKGROUND = "#ffffff"
GRID = "#eceff1"
AXIS = "#546e7a"
TEXT = "#263238"
UP = "#26a69a"
DOWN = "#ef5350"
LINE = "#1e88e5"
TIER_COLORS: dict[str | None, str] = {
    None: "#e0e0e0",
    "T1": "#b0bec5",
    "T2": "#78909c",
    "T3": "#fb8c00",
    "T4": "#d81b60",
}
WHALE_SHADE = "#37474f"
MARKER_COLORS = {
    "absorption": "#fbc02d",
    "bearish": "#c62828",
    "bullish": "#2e7d32",
    "whale": "#1a237e",
    "poor_high": "#8e24aa",
    "poor_low": "#8e24aa",
}


@dataclass(frozen=True)
class Marker:
    """A signal drawn on the chart: its kind, bar, and the centre of its symbol in pixels."""

    kind: str
    timestamp_utc: str
    x: float
    y: float
    color: str


@dataclass
class Chart:
    """A rendered chart: the SVG text and where everything was drawn (for checks and tests)."""

    svg: str
    width: int
    height: int
    style: str
    markers: list[Marker] = field(default_factory=list)
    price_panel: tuple[float, float, float, float] = (0, 0, 0, 0)
    volume_panel: tuple[float, float, float, float] = (0, 0, 0, 0)
    bar_x: dict[str, float] = field(default_factory=dict)
    #: The poor highs/lows no later bar of the chart has traded through: where their dashed
    #: line starts (it runs to the price panel's right edge).
    untouched: list[Marker] = field(default_factory=list)
    #: What the chart shows, each number under one name (the legend's labels say the same).
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """``absorption=12 bearish=1 bullish=5 whale_bars=22 whale_trades=36``."""
        return " ".join(f"{name}={n}" for name, n in self.counts.items())


def _minute(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) // 60


def _nice_step(span: float, target: int) -> float:
    """A 1/2/5 × 10^k step that cuts ``span`` into about ``target`` parts."""
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= mult * power:
            return mult * power
    return 10.0 * power


def _price_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step)) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0))
    return f"{value:,.{min(decimals, 8)}f}"


def _usd_text(value: float) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return f"${text}{suffix}"
    return f"${value:.0f}"


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def render(
    bars: Sequence[Bar],
    *,
    title: str | None = None,
    style: str = "auto",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Draw ``bars`` (one instrument, one timeframe, in time order) as an SVG chart."""
    if not bars:
        raise ConfigError("no bars to chart in that range")
    if len(bars) > MAX_BARS:
        raise ConfigError(
            f"{len(bars)} bars is too many for one chart (at most {MAX_BARS}): "
            f"narrow --since/--until or use --timeframe 15m or 1h"
        )
    if style not in ("auto", "candles", "line"):
        raise ConfigError(f"unknown chart style {style!r}; choose auto, candles or line")
    tf = bars[0].timeframe if isinstance(bars[0].timeframe, str) else "1m"
    tf_min = TIMEFRAMES.get(tf, 1)
    minutes = [_minute(b.timestamp_utc) for b in bars]
    first, last = minutes[0], minutes[-1]
    slots = (last - first) // tf_min + 1
    if style == "auto":
        style = "candles" if slots <= CANDLE_LIMIT else "line"

    left, right, top, bottom = 78.0, 24.0, 70.0, 46.0
    plot_w = width - left - right
    plot_h = height - top - bottom
    gap = 22.0
    price_h = (plot_h - gap) * 0.66
    vol_h = plot_h - gap - price_h
    price_top = top
    vol_top = top + price_h + gap
    slot_w = plot_w / slots

    def x_of(minute: int) -> float:
        return left + ((minute - first) // tf_min + 0.5) * slot_w

    highs = [float(b.high) for b in bars]
    lows = [float(b.low) for b in bars]
    lo, hi = min(lows), max(highs)
    pad = (hi - lo) * 0.12 or (hi * 0.001 or 1.0)
    lo, hi = lo - pad, hi + pad

    def y_price(value: float) -> float:
        return price_top + (hi - value) / (hi - lo) * price_h

    volumes = [int(b.total_volume) for b in bars]
    vmax = max(volumes) * 1.15 or 1.0

    def y_vol(value: float) -> float:
        return vol_top + vol_h - value / vmax * vol_h

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="{BACKGROUND}"/>',
    ]
    chart = Chart("", width, height, style)
    chart.price_panel = (left, price_top, plot_w, price_h)
    chart.volume_panel = (left, vol_top, plot_w, vol_h)

    # Title and legend.
    start_text = bars[0].timestamp_utc.replace("T", " ")[:16]
    end_text = bars[-1].timestamp_utc.replace("T", " ")[:16]
    heading = title or f"{bars[0].instId} · {tf} · {start_text} → {end_text} UTC · {len(bars)} bars"
    out.append(f'<text x="{left}" y="26" font-size="17" font-weight="bold" fill="{TEXT}">{escape(heading)}</text>')
    counts = chart.counts = {
        "absorption": sum(b.absorption for b in bars),
        "bearish": sum(b.divergence_type == "bearish" for b in bars),
        "bullish": sum(b.divergence_type == "bullish" for b in bars),
        "whale_bars": sum(b.whale_count > 0 for b in bars),
        "whale_trades": sum(b.whale_count for b in bars),
    }
    # Poor highs/lows only where the bars can have them (footprint bars): without a
    # footprint the summary and legend stay as they were.
    if any(isinstance(b.poor_high, bool) for b in bars):
        counts["poor_high"] = sum(b.poor_high is True for b in bars)
        counts["poor_low"] = sum(b.poor_low is True for b in bars)
    legend_x = left
    legend_y = 50.0
    for label, color in (("T1", TIER_COLORS["T1"]), ("T2", TIER_COLORS["T2"]), ("T3", TIER_COLORS["T3"]),
                         ("T4", TIER_COLORS["T4"]), ("warm-up", TIER_COLORS[None])):  # fmt: skip
        out.append(f'<rect x="{_fmt(legend_x)}" y="{legend_y - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{_fmt(legend_x + 16)}" y="{legend_y}" font-size="12" fill="{TEXT}">{label}</text>')
        legend_x += 26 + 7.5 * len(label)
    legend_x += 14
    for kind, label, count in (("absorption", "absorption", "absorption"),
                               ("bearish", "bearish divergence", "bearish"),
                               ("bullish", "bullish divergence", "bullish"),
                               ("whale", "whale trades", "whale_trades")):  # fmt: skip
        out.append(_symbol(kind, legend_x + 6, legend_y - 4, 6.0))
        text = f"{label} ({counts[count]})"
        out.append(f'<text x="{_fmt(legend_x + 16)}" y="{legend_y}" font-size="12" fill="{TEXT}">{text}</text>')
        legend_x += 30 + 6.8 * len(text)
    if "poor_high" in counts:
        # On the title's line, right-aligned: the legend's line is full.
        text = f"poor high ({counts['poor_high']}) / low ({counts['poor_low']}), untouched"
        end = left + plot_w
        start = end - 6.8 * len(text) - 50
        out.append(_symbol("poor_high", start + 6, 22, 6.0))
        out.append(f'<text x="{_fmt(start + 16)}" y="26" font-size="12" fill="{TEXT}">{text}</text>')
        out.append(_ray(end - 28, 22, end))

    # Grids and axes.
    pstep = _nice_step(hi - lo, 6)
    tick = math.ceil(lo / pstep) * pstep
    while tick <= hi:
        y = y_price(tick)
        out.append(f'<line x1="{left}" y1="{_fmt(y)}" x2="{left + plot_w}" y2="{_fmt(y)}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{left - 8}" y="{_fmt(y + 4)}" font-size="11" text-anchor="end" fill="{AXIS}">'
            f"{_price_text(tick, pstep)}</text>"
        )
        tick += pstep
    vstep = _nice_step(vmax, 3)
    tick = vstep
    while tick <= vmax:
        y = y_vol(tick)
        out.append(f'<line x1="{left}" y1="{_fmt(y)}" x2="{left + plot_w}" y2="{_fmt(y)}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{left - 8}" y="{_fmt(y + 4)}" font-size="11" text-anchor="end" fill="{AXIS}">{_usd_text(tick)}</text>'
        )
        tick += vstep
    span_min = (last - first) + tf_min
    tstep = next((s for s in _TIME_STEPS if s >= tf_min and span_min / s <= 10), _TIME_STEPS[-1])
    t = -(-first // tstep) * tstep
    previous_day = None
    while t <= last:
        x = x_of(t)
        moment = datetime.fromtimestamp(t * 60, UTC)
        day = moment.strftime("%m-%d")
        label = moment.strftime("%H:%M") if day == previous_day else moment.strftime("%m-%d %H:%M")
        previous_day = day
        out.append(f'<line x1="{_fmt(x)}" y1="{price_top}" x2="{_fmt(x)}" y2="{_fmt(vol_top + vol_h)}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{_fmt(x)}" y="{_fmt(vol_top + vol_h + 18)}" font-size="11" text-anchor="middle" fill="{AXIS}">{label}</text>'
        )
        t += tstep
    for y0, h in ((price_top, price_h), (vol_top, vol_h)):
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{h}" fill="none" stroke="{AXIS}" stroke-width="1"/>')
    out.append(f'<text x="{left + 6}" y="{_fmt(vol_top + 14)}" font-size="11" fill="{AXIS}">volume (USD) by tier, whale share dark</text>')

    # Price.
    body_w = max(1.0, min(slot_w * 0.7, 14.0))
    if style == "candles":
        for bar, minute, h, low in zip(bars, minutes, highs, lows, strict=True):
            x = x_of(minute)
            o, c = float(bar.open), float(bar.close)
            color = UP if c >= o else DOWN
            out.append(f'<line x1="{_fmt(x)}" y1="{_fmt(y_price(h))}" x2="{_fmt(x)}" y2="{_fmt(y_price(low))}" stroke="{color}" stroke-width="1"/>')
            y_top, y_bot = y_price(max(o, c)), y_price(min(o, c))
            out.append(
                f'<rect x="{_fmt(x - body_w / 2)}" y="{_fmt(y_top)}" width="{_fmt(body_w)}" '
                f'height="{_fmt(max(1.0, y_bot - y_top))}" fill="{color}"/>'
            )
    else:
        band = " ".join(f"{_fmt(x_of(m))},{_fmt(y_price(h))}" for m, h in zip(minutes, highs, strict=True))
        band_back = " ".join(
            f"{_fmt(x_of(m))},{_fmt(y_price(low))}" for m, low in zip(reversed(minutes), reversed(lows), strict=True)
        )
        out.append(f'<polygon points="{band} {band_back}" fill="{LINE}" fill-opacity="0.15"/>')
        points = " ".join(f"{_fmt(x_of(m))},{_fmt(y_price(float(b.close)))}" for m, b in zip(minutes, bars, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="1.5"/>')

    # Volume by tier, whale share shaded inside.
    vol_w = max(0.6, slot_w * 0.8)
    floor_y = vol_top + vol_h
    for bar, minute, volume in zip(bars, minutes, volumes, strict=True):
        x = x_of(minute)
        y = y_vol(volume)
        out.append(
            f'<rect x="{_fmt(x - vol_w / 2)}" y="{_fmt(y)}" width="{_fmt(vol_w)}" height="{_fmt(floor_y - y)}" '
            f'fill="{TIER_COLORS.get(bar.volume_tier, TIER_COLORS[None])}"/>'
        )
        whale = int(bar.whale_volume)
        if whale > 0:
            yw = y_vol(whale)
            out.append(
                f'<rect x="{_fmt(x - vol_w / 2)}" y="{_fmt(yw)}" width="{_fmt(vol_w)}" height="{_fmt(floor_y - yw)}" '
                f'fill="{WHALE_SHADE}" fill-opacity="0.75"/>'
            )

    # Poor highs/lows no later bar of the chart reached: a dashed line on to the right edge.
    later_high, later_low = -math.inf, math.inf
    for bar, minute, h, low in reversed(list(zip(bars, minutes, highs, lows, strict=True))):
        if bar.poor_high is True and h > later_high:
            chart.untouched.append(Marker("poor_high", bar.timestamp_utc, x_of(minute), y_price(h), MARKER_COLORS["poor_high"]))
        if bar.poor_low is True and low < later_low:
            chart.untouched.append(Marker("poor_low", bar.timestamp_utc, x_of(minute), y_price(low), MARKER_COLORS["poor_low"]))
        later_high, later_low = max(later_high, h), min(later_low, low)
    chart.untouched.reverse()
    for m in chart.untouched:
        out.append(_ray(m.x, m.y, left + plot_w))

    # Signal markers: drawn last so nothing covers them.
    size = max(4.5, min(8.0, slot_w * 0.9))
    for bar, minute, h, low, volume in zip(bars, minutes, highs, lows, volumes, strict=True):
        x = x_of(minute)
        chart.bar_x[bar.timestamp_utc] = x
        above = y_price(h) - size - 4
        if bar.absorption:
            chart.markers.append(Marker("absorption", bar.timestamp_utc, x, above, MARKER_COLORS["absorption"]))
            above -= 2 * size + 3
        if bar.divergence_type == "bearish":
            chart.markers.append(Marker("bearish", bar.timestamp_utc, x, above, MARKER_COLORS["bearish"]))
        elif bar.divergence_type == "bullish":
            chart.markers.append(
                Marker("bullish", bar.timestamp_utc, x, y_price(low) + size + 4, MARKER_COLORS["bullish"])
            )
        if bar.whale_count:
            radius = _whale_radius(bar.whale_count, size)
            y = max(vol_top + radius + 1, y_vol(volume) - radius - 3)
            chart.markers.append(Marker("whale", bar.timestamp_utc, x, y, MARKER_COLORS["whale"]))
        if bar.poor_high is True:
            chart.markers.append(Marker("poor_high", bar.timestamp_utc, x, y_price(h), MARKER_COLORS["poor_high"]))
        if bar.poor_low is True:
            chart.markers.append(Marker("poor_low", bar.timestamp_utc, x, y_price(low), MARKER_COLORS["poor_low"]))
    for m in chart.markers:
        radius = body_w / 2 + 1.5 if m.kind in ("poor_high", "poor_low") else size
        if m.kind == "whale":
            bar = next(b for b in bars if b.timestamp_utc == m.timestamp_utc)
            radius = _whale_radius(bar.whale_count, size)
        out.append(_symbol(m.kind, m.x, m.y, radius))

    # Hover details: one invisible column per bar, on top of everything.
    for bar, minute in zip(bars, minutes, strict=True):
        x = x_of(minute)
        tip = (
            f"{bar.timestamp_utc} O {bar.open} H {bar.high} L {bar.low} C {bar.close} ({bar.price_change_pct}%)\n"
            f"volume ${bar.total_volume} (buy {bar.buy_volume} / sell {bar.sell_volume}) delta {bar.delta}\n"
            f"tier {bar.volume_tier or 'warm-up'} ratio {bar.volume_ratio or '-'} whales {bar.whale_count}"
            f" (${bar.whale_volume})"
            + ("\nabsorption" if bar.absorption else "")
            + (f"\n{bar.divergence_type} divergence" if bar.divergence else "")
            + ("\npoor high" if bar.poor_high is True else "")
            + ("\npoor low" if bar.poor_low is True else "")
        )
        out.append(
            f'<rect x="{_fmt(x - slot_w / 2)}" y="{price_top}" width="{_fmt(slot_w)}" height="{_fmt(plot_h)}" '
            f'fill="#000" fill-opacity="0"><title>{escape(tip)}</title></rect>'
        )
    out.append("</svg>")
    chart.svg = "\n".join(out) + "\n"
    return chart


def _whale_radius(count: int, size: float) -> float:
    # Grows with the number of whale trades, but stays smaller than the signal markers.
    return min(size * 0.75, 2.2 + 0.6 * count)


def _symbol(kind: str, x: float, y: float, r: float) -> str:
    color = MARKER_COLORS[kind]
    if kind == "absorption":
        pts = f"{_fmt(x)},{_fmt(y - r)} {_fmt(x + r)},{_fmt(y)} {_fmt(x)},{_fmt(y + r)} {_fmt(x - r)},{_fmt(y)}"
        return f'<polygon points="{pts}" fill="{color}" stroke="#5d4037" stroke-width="0.8"/>'
    if kind == "bearish":
        pts = f"{_fmt(x - r)},{_fmt(y - r * 0.8)} {_fmt(x + r)},{_fmt(y - r * 0.8)} {_fmt(x)},{_fmt(y + r)}"
        return f'<polygon points="{pts}" fill="{color}"/>'
    if kind == "bullish":
        pts = f"{_fmt(x - r)},{_fmt(y + r * 0.8)} {_fmt(x + r)},{_fmt(y + r * 0.8)} {_fmt(x)},{_fmt(y - r)}"
        return f'<polygon points="{pts}" fill="{color}"/>'
    if kind in ("poor_high", "poor_low"):
        # A dash across the wick's tip: the extreme that did not finish its auction.
        return f'<rect x="{_fmt(x - r)}" y="{_fmt(y - 1.5)}" width="{_fmt(2 * r)}" height="3" fill="{color}"/>'
    return f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="{_fmt(r)}" fill="{color}"/>'


def _ray(x: float, y: float, end: float) -> str:
    color = MARKER_COLORS["poor_high"]
    return (
        f'<line x1="{_fmt(x)}" y1="{_fmt(y)}" x2="{_fmt(end)}" y2="{_fmt(y)}" stroke="{color}" '
        f'stroke-width="2" stroke-dasharray="5 3"/>'
    )


class Drawing(Protocol):
    """What :func:`write_chart` writes: a :class:`Chart` or a footprint view."""

    @property
    def svg(self) -> str: ...


def html_page(chart: Drawing, title: str) -> str:
    """The chart in a minimal, self-contained HTML page (no script, no external resource)."""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title>"
        "<style>body{margin:16px;background:#fafafa;font-family:sans-serif}"
        "svg{background:#fff;box-shadow:0 1px 4px rgba(0,0,0,.15);max-width:100%;height:auto}</style>"
        f"</head><body>\n{chart.svg}</body></html>\n"
    )


def svg_to_png(svg: str) -> bytes:
    """Rasterize an SVG with the optional ``cairosvg`` package."""
    try:
        import cairosvg  # type: ignore[import-untyped, unused-ignore]
    except (ImportError, OSError) as exc:
        raise ConfigError(
            "writing PNG needs the optional cairosvg package (pip install 'vstream[chart]'); "
            "or write .svg / .html"
        ) from exc
    data: Any = cairosvg.svg2png(bytestring=svg.encode())
    return bytes(data)


def write_chart(chart: Drawing, path: str | os.PathLike[str], title: str = "vstream chart") -> Path:
    """Write the chart as ``.svg``, ``.html`` or ``.png`` (by the file's suffix) into an existing
    folder (:class:`ConfigError` if it is missing: it is never created)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        data = chart.svg.encode()
    elif suffix in (".html", ".htm"):
        data = html_page(chart, title).encode()
    elif suffix == ".png":
        data = svg_to_png(chart.svg)
    else:
        raise ConfigError(f"cannot tell the chart format from {target.name!r}: use .svg, .html or .png")
    # Never made here: a mistyped folder would otherwise hide the chart somewhere unexpected.
    folder = target.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"cannot write {target}: folder {folder} {problem}")
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise SinkError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
