"""``vstream chart``: draw one instrument's bars and signals to a file."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ..assembler import Bar
from ..chart import CANDLE_LIMIT, render, write_chart
from ..footprint_chart import render_footprint
from ..instruments import VaultPaths
from ..query import read_bars
from ..settings import TIMEFRAMES
from .common import add_vault_option, bar_count, existing_vault, instrument_id, time_range


def register_chart(sub: Any) -> None:
    """``vstream chart``: draw one instrument's bars and signals to a file."""
    p = sub.add_parser(
        "chart",
        help="draw price, volume by tier and signals to an .svg/.html/.png file",
        description="Draw one instrument's price, volume coloured by tier and signal markers to "
        "a self-contained .svg or .html file, or a .png.",
    )
    p.add_argument("--instId", dest="inst_id", type=instrument_id, required=True, metavar="ID", help="instrument")
    add_vault_option(p)
    p.add_argument("--timeframe", choices=list(TIMEFRAMES), default="1m", help="which bars (1m)")
    p.add_argument("--since", metavar="ISO", help="from this time (ISO, or 6h/2d back)")
    p.add_argument("--until", metavar="ISO", help="before this time")
    p.add_argument("--last", type=bar_count, metavar="N", help=f"the last N bars of the range (default {CANDLE_LIMIT // 2} without --since)")
    p.add_argument("--style", choices=["auto", "candles", "line"], default="auto",
                   help=f"price as candles or a close line (auto: candles up to {CANDLE_LIMIT} bars)")
    p.add_argument("--footprint", action="store_true",
                   help="draw the bars' footprints (levels, POC, value area, imbalances) instead")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write (.svg, .html or .png)")

    async def handler(args: Any) -> int:
        return await asyncio.to_thread(_chart, args)

    p.set_defaults(handler=handler)


def _chart(args: Any) -> int:
    vault = existing_vault(args)
    paths = VaultPaths.of(vault, args.inst_id)
    now = time.time()
    since, until = time_range(args, now)
    last = args.last if args.last is not None else (None if since else CANDLE_LIMIT // 2)
    found = (bar for bar, _ in read_bars(paths, args.timeframe, since, until))
    bars = list(deque(found, maxlen=last)) if last is not None else list(found)
    if args.footprint:
        return _footprint_chart(args, bars)
    chart = render(bars, style=args.style)
    target = write_chart(chart, args.output, title=f"{args.inst_id} {args.timeframe}")
    print(
        f"{target}: {len(bars)} {args.timeframe} bars {bars[0].timestamp_utc} .. {bars[-1].timestamp_utc}, "
        f"{chart.style}; {chart.summary()}"
    )
    return 0


def _footprint_chart(args: Any, bars: list[Bar]) -> int:
    view = render_footprint(bars)
    target = write_chart(view, args.output, title=f"{args.inst_id} {args.timeframe} footprint")
    rows = f", {view.levels_per_row} levels a row" if view.levels_per_row > 1 else ""
    print(
        f"{target}: {len(bars)} {args.timeframe} bars {bars[0].timestamp_utc} .. {bars[-1].timestamp_utc}, "
        f"footprint tick {view.tick}{rows}; cells={len(view.cells)} "
        f"imbalances={sum(c.buy_imbalance + c.sell_imbalance for c in view.cells)}"
    )
    return 0
