"""The footprint view of ``vstream chart --footprint``: where inside each bar the volume traded.

One column per bar (placed by time), one row per footprint level. Each cell is split in two:
taker sells on the left (red), taker buys on the right (green), each shaded by its share of
the largest cell in the picture, with the numbers written in when the cell is big enough.
Behind each column the value area (``val``..``vah``) is a pale blue band, the POC cell is
framed in black, an imbalanced side of a cell gets a dark edge (green buy, red sell) and a
stacked run of imbalances a bar beside the column. A thin line marks each bar's high-low
range, with ticks at open (left) and close (right). Hovering a cell shows its numbers.

Plain SVG written here (no script, no network), like :mod:`vstream.chart`, so it is written
as ``.svg``, ``.html`` or ``.png`` by :func:`vstream.chart.write_chart`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from html import escape

from .assembler import Bar
from .errors import ConfigError
from .settings import TIMEFRAMES

#: More bars than this do not fit as readable columns: narrow the range or use a higher timeframe.
MAX_FOOTPRINT_BARS = 120
#: Price rows drawn at most; more levels are drawn merged, a few levels to a row.
MAX_ROWS = 160

BUY = "#26a69a"
SELL = "#ef5350"
BUY_EDGE = "#1b5e20"
SELL_EDGE = "#b71c1c"
POC = "#000000"
VALUE_AREA = "#e3f2fd"
RANGE = "#546e7a"
TEXT = "#263238"
AXIS = "#546e7a"
GRID = "#eceff1"


@dataclass(frozen=True)
class Cell:
    """One drawn row of one bar: the levels it covers and where its halves are (pixels)."""

    timestamp_utc: str
    px: str  # the lowest level in the row
    buy: int
    sell: int
    x: float  # left edge of the sell half
    y: float  # top edge
    w: float  # width of one half
    h: float
    poc: bool
    buy_imbalance: bool
    sell_imbalance: bool


@dataclass
class FootprintChart:
    """A rendered footprint view: the SVG and where each cell went (for checks and tests)."""

    svg: str
    width: int
    height: int
    style: str = "footprint"
    cells: list[Cell] = field(default_factory=list)
    levels_per_row: int = 1
    tick: Decimal = Decimal(1)
    bar_x: dict[str, float] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _short(value: int) -> str:
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if value >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(value)


def _tick(bars: Sequence[Bar]) -> Decimal:
    """The footprint tick as seen in the bars: the greatest step that every level price is a
    multiple of (the replay's tick, or a multiple of it when the bars never show finer)."""
    prices = {Decimal(level.px) for bar in bars if isinstance(bar.footprint, list) for level in bar.footprint}
    exponent = min(p.as_tuple().exponent for p in prices)
    assert isinstance(exponent, int)
    unit = Decimal(1).scaleb(exponent)
    step = 0
    for price in prices:
        step = math.gcd(step, int(price / unit))
    return unit * step if step else unit


def render_footprint(bars: Sequence[Bar], *, title: str | None = None, height: int = 760) -> FootprintChart:
    """Draw ``bars`` (one instrument, one timeframe, in time order, with footprints)."""
    if not bars:
        raise ConfigError("no bars to chart in that range")
    if len(bars) > MAX_FOOTPRINT_BARS:
        raise ConfigError(
            f"{len(bars)} bars is too many for a footprint view (at most {MAX_FOOTPRINT_BARS}): "
            f"narrow --since/--until, use --last N or a higher --timeframe"
        )
    missing = [b.timestamp_utc for b in bars if not isinstance(b.footprint, list)]
    if missing:
        raise ConfigError(
            f"bar {missing[0]} has no footprint: replay with --footprint TICK (and --rebuild) to add them"
        )
    tf = bars[0].timeframe if isinstance(bars[0].timeframe, str) else "1m"
    tf_min = TIMEFRAMES.get(tf, 1)
    tick = _tick(bars)
    lowest = min(Decimal(bar.footprint[0].px) for bar in bars if isinstance(bar.footprint, list))
    highest = max(Decimal(bar.footprint[-1].px) for bar in bars if isinstance(bar.footprint, list))
    levels = int((highest - lowest) / tick) + 1
    per_row = -(-levels // MAX_ROWS)
    rows = -(-levels // per_row)

    def row_of(px: str) -> int:
        # (a bar's high or low floors to the level it traded in)
        return int((Decimal(px) - lowest) // tick) // per_row

    minutes = [
        int(datetime.strptime(b.timestamp_utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) // 60
        for b in bars
    ]
    first = minutes[0]
    slots = (minutes[-1] - first) // tf_min + 1
    left, right, top, bottom = 86.0, 24.0, 64.0, 42.0
    column = max(24.0, min(150.0, 1400.0 / slots))
    width = int(left + right + column * slots)
    plot_h = height - top - bottom
    row_h = plot_h / rows
    half = column * 0.42
    biggest = max(
        max(int(level.buy), int(level.sell)) for bar in bars if isinstance(bar.footprint, list) for level in bar.footprint
    ) or 1

    def y_of(row: int) -> float:
        return top + (rows - 1 - row) * row_h

    chart = FootprintChart("", width, height, levels_per_row=per_row, tick=tick)
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    start_text = bars[0].timestamp_utc.replace("T", " ")[:16]
    end_text = bars[-1].timestamp_utc.replace("T", " ")[:16]
    merged = f" · {per_row} levels a row" if per_row > 1 else ""
    heading = title or (
        f"{bars[0].instId} · {tf} footprint · {start_text} → {end_text} UTC · {len(bars)} bars · tick {tick}{merged}"
    )
    out.append(f'<text x="{left}" y="24" font-size="16" font-weight="bold" fill="{TEXT}">{escape(heading)}</text>')
    legend = [("sell", SELL), ("buy", BUY), ("value area", VALUE_AREA)]
    lx = left
    for label, color in legend:
        out.append(f'<rect x="{_fmt(lx)}" y="36" width="12" height="12" fill="{color}" stroke="{GRID}"/>')
        out.append(f'<text x="{_fmt(lx + 16)}" y="46" font-size="12" fill="{TEXT}">{label}</text>')
        lx += 30 + 7 * len(label)
    out.append(f'<rect x="{_fmt(lx)}" y="36" width="12" height="12" fill="none" stroke="{POC}" stroke-width="2"/>')
    out.append(f'<text x="{_fmt(lx + 16)}" y="46" font-size="12" fill="{TEXT}">POC</text>')
    lx += 58
    out.append(f'<rect x="{_fmt(lx)}" y="36" width="12" height="12" fill="none" stroke="{BUY_EDGE}" stroke-width="2.5"/>')
    out.append(f'<text x="{_fmt(lx + 16)}" y="46" font-size="12" fill="{TEXT}">imbalance (stacked: side bar)</text>')

    # Price axis: a label every few rows.
    every = max(1, math.ceil(14 / row_h))
    for row in range(0, rows, every):
        y = y_of(row) + row_h / 2
        px = lowest + tick * row * per_row
        out.append(f'<line x1="{left}" y1="{_fmt(y)}" x2="{width - right}" y2="{_fmt(y)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{_fmt(y + 4)}" font-size="10" text-anchor="end" fill="{AXIS}">{px}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{_fmt(column * slots)}" height="{_fmt(plot_h)}" fill="none" stroke="{AXIS}"/>')

    show_numbers = half >= 30 and row_h >= 11
    label_every = max(1, math.ceil(70 / column))
    for index, (bar, minute) in enumerate(zip(bars, minutes, strict=True)):
        assert isinstance(bar.footprint, list)
        slot = (minute - first) // tf_min
        x0 = left + slot * column
        mid = x0 + column / 2
        chart.bar_x[bar.timestamp_utc] = mid
        if index % label_every == 0:
            label = bar.timestamp_utc[11:16] if tf_min < 1440 else bar.timestamp_utc[5:10]
            out.append(
                f'<text x="{_fmt(mid)}" y="{_fmt(top + plot_h + 16)}" font-size="10" text-anchor="middle" fill="{AXIS}">{label}</text>'
            )
        # value area band
        if isinstance(bar.val, str) and isinstance(bar.vah, str):
            y_top = y_of(row_of(bar.vah))
            y_bottom = y_of(row_of(bar.val)) + row_h
            out.append(
                f'<rect x="{_fmt(mid - half)}" y="{_fmt(y_top)}" width="{_fmt(2 * half)}" '
                f'height="{_fmt(y_bottom - y_top)}" fill="{VALUE_AREA}"/>'
            )
        buy_imb = {i.px for i in bar.imbalances if i.side == "buy"} if isinstance(bar.imbalances, list) else set()
        sell_imb = {i.px for i in bar.imbalances if i.side == "sell"} if isinstance(bar.imbalances, list) else set()
        grouped: dict[int, list[int]] = {}
        marks: dict[int, tuple[bool, bool, bool, str]] = {}
        for level in bar.footprint:
            row = row_of(level.px)
            cell = grouped.setdefault(row, [0, 0, 0])
            cell[0] += int(level.buy)
            cell[1] += int(level.sell)
            cell[2] += level.trades
            poc, b_imb, s_imb, low_px = marks.get(row, (False, False, False, level.px))
            marks[row] = (poc or level.px == bar.poc, b_imb or level.px in buy_imb, s_imb or level.px in sell_imb, low_px)
        for row, (buy, sell, trades) in sorted(grouped.items()):
            y = y_of(row)
            poc, b_imb, s_imb, low_px = marks[row]
            tip = escape(f"{bar.timestamp_utc} {low_px}: sell {sell} buy {buy} USD, {trades} trades")
            out.append(f"<g><title>{tip}</title>")
            for side, value, x, color in (("sell", sell, mid - half, SELL), ("buy", buy, mid, BUY)):
                shade = 0.12 + 0.88 * (value / biggest) if value else 0.0
                out.append(
                    f'<rect x="{_fmt(x)}" y="{_fmt(y + 0.5)}" width="{_fmt(half)}" height="{_fmt(max(row_h - 1, 0.5))}" '
                    f'fill="{color}" fill-opacity="{shade:.3f}"/>'
                )
                if show_numbers and value:
                    anchor, tx = ("end", mid - 3) if side == "sell" else ("start", mid + 3)
                    out.append(
                        f'<text x="{_fmt(tx)}" y="{_fmt(y + row_h / 2 + 3.5)}" font-size="9.5" '
                        f'text-anchor="{anchor}" fill="{TEXT}">{_short(value)}</text>'
                    )
            if s_imb:
                out.append(
                    f'<rect x="{_fmt(mid - half + 1)}" y="{_fmt(y + 1.5)}" width="{_fmt(half - 2)}" '
                    f'height="{_fmt(max(row_h - 3, 0.5))}" fill="none" stroke="{SELL_EDGE}" stroke-width="2"/>'
                )
            if b_imb:
                out.append(
                    f'<rect x="{_fmt(mid + 1)}" y="{_fmt(y + 1.5)}" width="{_fmt(half - 2)}" '
                    f'height="{_fmt(max(row_h - 3, 0.5))}" fill="none" stroke="{BUY_EDGE}" stroke-width="2"/>'
                )
            if poc:
                out.append(
                    f'<rect x="{_fmt(mid - half - 2)}" y="{_fmt(y)}" width="{_fmt(2 * half + 4)}" '
                    f'height="{_fmt(row_h)}" fill="none" stroke="{POC}" stroke-width="2"/>'
                )
            out.append("</g>")
            chart.cells.append(Cell(bar.timestamp_utc, low_px, buy, sell, mid - half, y, half, row_h, poc, b_imb, s_imb))
        # stacked runs: a bar beside the column (sells left, buys right)
        for stack in bar.stacked if isinstance(bar.stacked, list) else []:
            y_top = y_of(row_of(stack.high))
            y_bottom = y_of(row_of(stack.low)) + row_h
            sx = mid + half + 2.5 if stack.side == "buy" else mid - half - 5.5
            color = BUY_EDGE if stack.side == "buy" else SELL_EDGE
            out.append(
                f'<rect x="{_fmt(sx)}" y="{_fmt(y_top)}" width="3" height="{_fmt(y_bottom - y_top)}" fill="{color}"/>'
            )
        # the bar's range, open and close
        y_high = y_of(row_of(bar.high)) + 1
        y_low = y_of(row_of(bar.low)) + row_h - 1
        out.append(
            f'<line x1="{_fmt(x0 + 3)}" y1="{_fmt(y_high)}" x2="{_fmt(x0 + 3)}" y2="{_fmt(y_low)}" stroke="{RANGE}" stroke-width="1.2"/>'
        )
    out.append("</svg>\n")
    chart.svg = "\n".join(out)
    return chart

