"""``vstream status``: per instrument last bar, lag, counters and health; exit 1 on a problem."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError
from ..query import (
    STATUS_COLUMNS,
    InstrumentStatus,
    format_table,
    parse_duration,
    status_row,
    vault_status,
)
from .common import add_vault_option, instrument_id, require_vault, stdout_closed, vault_of

if TYPE_CHECKING:
    from ..alerts.status import DestinationStatus


def max_lag(text: str) -> float:
    """``--max-lag``: a duration with its unit (``90s``, ``10m``, ``2h``, ``1d``), > 0.

    A bare number is refused rather than guessed: ``10`` could mean seconds or minutes, and a
    health check silently off by 60x is worse than a usage error.
    """
    value = text.strip()
    if value.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} has no unit: write e.g. {value}s, {value}m, {value}h or {value}d"
        )
    try:
        seconds = parse_duration(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return seconds


def register_status(sub: Any) -> None:
    """``vstream status``: per instrument last bar, lag, counters and health; exit 1 on a problem."""
    p = sub.add_parser(
        "status",
        help="per instrument: last bar, lag, counters, health (exit 1 on a problem)",
        description="Per instrument: the last written bar, its lag, the counters and health. Exit "
        "0 when every instrument is healthy, 1 when any has a problem, 2 on a usage error.",
    )
    add_vault_option(p)
    p.add_argument("--instId", dest="inst_ids", action="append", type=instrument_id, metavar="ID",
                   help="only these instruments (default: all in the vault)")
    p.add_argument("--max-lag", metavar="DURATION", type=max_lag,
                   help="a problem when the last 1m bar ended longer ago than this (90s, 10m, 2h, 1d); off by default")
    p.add_argument("--json", action="store_true", help="one JSON object per instrument")
    p.add_argument("--no-remember", action="store_true",
                   help="do not save the rejects count for the next status to compare with")

    async def handler(args: Any) -> int:
        return await asyncio.to_thread(_status, args)

    p.set_defaults(handler=handler)


def _status(args: Any) -> int:
    vault = vault_of(args)
    require_vault(vault)  # a folder that is not one would pass as "no instruments", exit 0
    result = vault_status(vault, args.inst_ids, max_lag=args.max_lag, remember=not args.no_remember)
    from ..alerts.status import delivery_status

    deliveries = delivery_status(vault)
    verdict = 0 if all(s.ok for s in result) and all(d.ok for d in deliveries) else 1
    try:
        _write(args, vault, result, deliveries)
    except BrokenPipeError as exc:  # nobody reads the table: the verdict still stands
        if not stdout_closed(exc):
            raise
    return verdict


def _write(args: Any, vault: Path, result: list[InstrumentStatus], deliveries: list[DestinationStatus]) -> None:
    out = sys.stdout
    if args.json:
        objects = [st.to_dict() for st in result] + [d.to_dict() for d in deliveries]
        for obj in objects:
            out.write(msgspec.json.encode(obj).decode() + "\n")
    else:
        if not result:
            out.write(f"no instruments in vault {vault} yet (no trade files in raw/okx/trades_*/INSTID/, no replay states)\n")
        for text in [] if not result else format_table(STATUS_COLUMNS, [status_row(s) for s in result], right={2, 3, 4, 5, 6, 7, 8}):
            out.write(text + "\n")
        for st in result:
            for problem in st.problems:
                out.write(f"{st.instId}: PROBLEM: {problem}\n")
            for note in st.notes:
                out.write(f"{st.instId}: note: {note}\n")
        from ..alerts.status import delivery_lines

        for line in delivery_lines(deliveries):
            out.write(line + "\n")
    out.flush()
