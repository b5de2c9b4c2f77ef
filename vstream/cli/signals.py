"""``vstream signals``: print the bars of one or more instruments that show a signal."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from ..assembler import Bar
from ..errors import ConfigError
from ..instruments import VaultPaths, kind_of
from ..query import (
    SIGNAL_COLUMNS,
    TIERS,
    SignalFilter,
    find_signals,
    format_table,
    known_instruments,
    signal_row,
)
from ..settings import TIMEFRAMES
from .common import add_instruments_option, add_vault_option, bar_count, existing_vault, time_range


def _tiers(text: str) -> list[str]:
    items = [t.strip().upper() for t in text.split(",") if t.strip()]
    for tier in items:
        if tier not in TIERS:
            raise argparse.ArgumentTypeError(f"unknown tier {tier!r}; choose from {','.join(TIERS)}")
    return items


def register_signals(sub: Any) -> None:
    """``vstream signals``: print matching bars of one or more instruments."""
    p = sub.add_parser(
        "signals",
        help="print bars with signals (tier, absorption, divergence, whales, footprint stacks and POC shifts)",
        description="Print the written bars of one or more instruments that show a signal (tier, "
        "absorption, divergence, whale trades), as a table or as their JSON lines.",
    )
    add_instruments_option(p, "every instrument with bars in the vault")
    add_vault_option(p)
    p.add_argument("--timeframe", choices=list(TIMEFRAMES), default="1m", help="which bars (1m)")
    p.add_argument("--tier", dest="tiers", type=_tiers, action="append", default=[], metavar="T4",
                   help="only bars of these tiers (repeatable or T3,T4)")
    p.add_argument("--absorption", action="store_true", help="bars with absorption")
    p.add_argument("--divergence", nargs="?", const="any", choices=["any", "bearish", "bullish"],
                   help="bars with divergence (of this type)")
    p.add_argument("--whale", action="store_true", help="bars with whale trades")
    p.add_argument("--stacked-imbalance", dest="stacked", choices=["buy", "sell"],
                   help="footprint bars with a stacked imbalance of this side")
    p.add_argument("--poc-shift", nargs="?", const="any", choices=["any", "up", "down"],
                   help="footprint bars whose POC moved (this way) from the previous bar's POC")
    p.add_argument("--poc-shift-min", type=_price, default=Decimal(0), metavar="PRICE",
                   help="with --poc-shift: the least move, in price (0: any move)")
    p.add_argument("--poor-high", action="store_true", help="footprint bars whose high is poor (an unfinished auction)")
    p.add_argument("--poor-low", action="store_true", help="footprint bars whose low is poor")
    p.add_argument("--untouched", action="store_true",
                   help="with --poor-high/--poor-low: only those no later bar in the file has traded through")
    p.add_argument("--since", metavar="ISO", help="from this time (2025-12-14T21:00Z, or 6h, 2d back)")
    p.add_argument("--until", metavar="ISO", help="before this time (same forms)")
    p.add_argument("--last", type=bar_count, metavar="N", help="only the last N matching bars")
    p.add_argument("--json", action="store_true", help="output lines exactly as in the bar files (JSONL)")

    async def handler(args: Any) -> int:
        return await asyncio.to_thread(_signals, args)

    p.set_defaults(handler=handler)


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"not a price: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a price >= 0: {text!r}")
    return value


def _signals(args: Any) -> int:
    vault = existing_vault(args)
    now = time.time()
    if args.all:
        inst_ids = [i for i in known_instruments(vault) if VaultPaths.of(vault, i).output(args.timeframe).exists()]
        if not inst_ids:
            raise ConfigError(f"no {args.timeframe} bars in vault {vault}")
    else:
        inst_ids = list(dict.fromkeys(args.inst_ids))
        for inst in inst_ids:
            kind_of(inst)
    flt = SignalFilter(
        tiers=frozenset(t for group in args.tiers for t in group),
        absorption=args.absorption,
        divergence=args.divergence,
        whale=args.whale,
        stacked=args.stacked,
        poc_shift=args.poc_shift,
        poc_shift_min=args.poc_shift_min,
        poor_high=args.poor_high,
        poor_low=args.poor_low,
        untouched=args.untouched,
    )
    if args.untouched and not (args.poor_high or args.poor_low):
        raise ConfigError("--untouched needs --poor-high or --poor-low")
    since, until = time_range(args, now)
    found: Iterable[tuple[Bar, bytes]] = find_signals(
        vault, inst_ids, flt, timeframe=args.timeframe, since=since, until=until
    )
    if args.last is not None:
        found = deque(found, maxlen=args.last)
    out = sys.stdout
    if args.json:
        for _, line in found:
            out.write(line.decode())
        out.flush()
        return 0
    rows = [signal_row(bar) for bar, _ in found]
    if not rows:
        print("no matching bars", file=sys.stderr)
        return 0
    for text in format_table(SIGNAL_COLUMNS, rows, right={2, 3, 4, 5, 6}):
        out.write(text + "\n")
    out.flush()
    return 0
