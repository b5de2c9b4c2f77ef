"""``vstream levels``: the poor highs and lows of one instrument, and which are still untouched."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import msgspec

from ..errors import ConfigError, StateError
from ..instruments import VaultPaths, kind_of
from ..levels import KINDS, LevelView, find_levels, stamp_seconds
from ..query import format_duration, format_table, parse_duration, parse_time
from ..settings import TIMEFRAMES, tick_fraction
from ..state import read_state
from .common import add_vault_option, vault_of


def age_range(text: str) -> tuple[float, float | None]:
    """``--age 20m..40m`` as (least, most) seconds; either side may be left out (``..2h``,
    ``30m..``)."""
    low_text, sep, high_text = text.partition("..")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected AGE..AGE (e.g. 20m..40m, ..2h, 30m..), got {text!r}")
    try:
        low = parse_duration(low_text) if low_text.strip() else 0.0
        high = parse_duration(high_text) if high_text.strip() else None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if high is not None and low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: the first age must not be more than the second")
    return low, high


def _tick(text: str) -> float:
    """A price step as a footprint tick is one: finite, > 0, at most 12 decimals."""
    try:
        value = float(text)
        tick_fraction(value, "--tick")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a price: {text!r}") from None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--tick: ")) from None
    return value


def register_levels(sub: Any) -> None:
    """``vstream levels``: list poor highs and lows, touched or not."""
    p = sub.add_parser(
        "levels",
        help="list poor highs/lows of footprint bars, their age, whether a later bar traded through them",
        description="List the poor highs and lows (unfinished auctions at a bar's extremes) of one "
        "instrument's footprint bars: when, at what price, how old, whether and when a later bar "
        "traded through them, and how far they are from the last close.",
    )
    p.add_argument("--instId", dest="inst_id", required=True, metavar="ID", help="instrument")
    add_vault_option(p)
    p.add_argument("--timeframe", choices=list(TIMEFRAMES), default="1m", help="which bars (1m)")
    p.add_argument("--kind", choices=list(KINDS), help="only this kind (default: both)")
    p.add_argument("--untouched", action="store_true", help="only levels no later bar has traded through")
    p.add_argument("--age", type=age_range, metavar="MIN..MAX",
                   help="only levels this old, from their bar's end (20m..40m, ..24h, 2h..)")
    p.add_argument("--now", metavar="ISO",
                   help="as of this time (ISO or 2h back): bars ending later are left out (default: the last bar's end)")
    p.add_argument("--tick", type=_tick, metavar="PRICE",
                   help="distances in ticks of this size (default: the instrument's footprint tick)")
    p.add_argument("--json", action="store_true", help="one JSON object per level (JSONL)")

    async def handler(args: Any) -> int:
        return await asyncio.to_thread(_levels, args)

    p.set_defaults(handler=handler)


def _levels(args: Any) -> int:
    vault = vault_of(args)
    kind_of(args.inst_id)
    paths = VaultPaths.of(vault, args.inst_id)
    now: float | None = None
    if args.now:
        try:
            now = float(stamp_seconds(parse_time(args.now, time.time())))
        except ConfigError as exc:
            raise ConfigError(f"--now: {exc}") from None
    low, high = args.age if args.age is not None else (0.0, None)
    tick = args.tick if args.tick is not None else _footprint_tick(paths)
    found = find_levels(
        paths, args.timeframe, now=now, min_age=low, max_age=high,
        kinds=frozenset([args.kind] if args.kind else KINDS), untouched=args.untouched, tick=tick,
    )  # fmt: skip
    out = sys.stdout
    if args.json:
        encoder = msgspec.json.Encoder()
        for view in found:
            out.write(encoder.encode(view.to_dict()).decode() + "\n")
        out.flush()
        return 0
    if not found:
        print("no matching poor highs or lows", file=sys.stderr)
        return 0
    for text in format_table(COLUMNS, (_row(v) for v in found), right={2, 3, 5, 6}):
        out.write(text + "\n")
    out.flush()
    return 0


def _footprint_tick(paths: VaultPaths) -> float | None:
    """The footprint tick stored with the instrument, if its state says."""
    with contextlib.suppress(StateError):
        settings = read_state(paths.state).settings
        if settings is not None and settings.footprint is not None:
            return float(settings.footprint)
    return None


COLUMNS = ("timestamp_utc", "kind", "price", "age", "touched", "ticks", "dist%")


def _row(view: LevelView) -> list[str]:
    level = view.level
    return [
        level.timestamp_utc,
        level.kind,
        level.price,
        format_duration(view.age_seconds) if view.age_seconds >= 0 else "-" + format_duration(-view.age_seconds),
        level.touched_at or "-",
        _signed("%+.1f", view.distance_ticks) if view.distance_ticks is not None else "-",
        _signed("%+.2f", view.distance_pct),
    ]


def _signed(form: str, value: float) -> str:
    text = form % value
    return "+" + text[1:] if text.startswith("-") and not text.strip("-0.") else text
