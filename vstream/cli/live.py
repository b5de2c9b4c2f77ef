"""``vstream live``: stream OKX trades into bars until SIGINT/SIGTERM (SPEC §6, §8).

The signal handling lives here, in the command-line layer, never in the engine: the first
SIGINT/SIGTERM asks the source to stop (it closes the minutes whose wall-clock end has passed
and ends), the engine then flushes and checkpoints and the command exits 0. A second signal
stops the engine at once (it still checkpoints).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..assembler import Bar
from ..engine import Engine
from ..errors import SourceError
from ..instruments import kind_of
from ..okx_rest import DEFAULT_REST_URL, OkxRest, refresh_instrument_cache
from ..trades import TRADE_CHANNELS
from .common import (
    add_settings_options,
    add_vault_option,
    checkpoint_interval,
    positive_number,
    settings_of,
    stdout_closed,
    summary_line,
    vault_of,
)

log = logging.getLogger("vstream")
_encoder = msgspec.json.Encoder()


def register_live(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``live`` subcommand."""
    live = sub.add_parser(
        "live",
        help="stream trades from the OKX websocket into bars until SIGINT/SIGTERM",
        description="Subscribe to OKX's public trades, print each bar (a JSON line) as its minute "
        "closes and append it to the vault, like replay does.",
    )
    live.add_argument(
        "--instId", dest="inst_ids", action="append", required=True, metavar="ID",
        help="instrument, repeatable",
    )
    add_vault_option(live)
    live.add_argument(
        "--channel", choices=TRADE_CHANNELS, default="trades",
        help="trades (merged records, /ws/v5/public) or trades-all (every fill, /ws/v5/business)",
    )
    live.add_argument("--ws-url", metavar="U", help="websocket URL (default: OKX's for --channel)")
    live.add_argument("--rest-url", metavar="U", help=f"REST base URL (default {DEFAULT_REST_URL})")
    live.add_argument(
        "--record", action="store_true",
        help="append every received trade to the vault's raw files, so replay can continue",
    )
    live.add_argument(
        "--gap-timeout", type=positive_number, default=60.0, metavar="S",
        help="seconds a trade-id gap may stay unfilled before its minutes are emitted flagged (60)",
    )
    add_settings_options(live)
    live.set_defaults(handler=run_live)


def _install_signals(loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``on_signal`` on the loop; returns the undo function."""
    signals = [signal.SIGINT, signal.SIGTERM]
    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            # Windows: no loop signal handlers; a plain handler hops onto the loop.
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(
                    sig, lambda *_: loop.call_soon_threadsafe(on_signal)
                )

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)

    return undo


async def run_live(args: argparse.Namespace) -> int:
    """The ``live`` command: returns 0 after a clean stop."""
    vault = vault_of(args)
    settings, given = settings_of(args)
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids))
    for inst_id in inst_ids:
        kind_of(inst_id)
    from ..sources.okx import OkxSource  # websockets: only live mode needs it

    rest = OkxRest(args.rest_url or DEFAULT_REST_URL)
    try:
        try:
            await refresh_instrument_cache(vault, inst_ids, rest)
        except SourceError as exc:
            log.warning("could not refresh the instrument cache (%s); using cached or built-in ctVal", exc)
        source = OkxSource(
            inst_ids,
            channel=args.channel,
            ws_url=args.ws_url,
            rest=rest,
            record_vault=vault if args.record else None,
            grace=settings.grace,
            gap_timeout=args.gap_timeout,
        )

        def show(bar: Bar) -> None:
            try:
                sys.stdout.buffer.write(_encoder.encode(bar) + b"\n")
                sys.stdout.flush()
            except BrokenPipeError as exc:
                if not stdout_closed(exc):
                    raise
                # Nobody reads the bars any more (``live | head``): end as on SIGTERM.
                source.stop()

        engine = Engine(
            [source],
            sinks=[show],
            settings=settings,
            vault=vault,
            given=given,
            checkpoint_interval=checkpoint_interval(),
        )
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.warning("stopping: closing what is due, flushing and checkpointing")
                source.stop()
            else:
                engine.stop()

        undo = _install_signals(asyncio.get_running_loop(), on_signal)
        started = time.perf_counter()
        try:
            async with engine:
                before = {i: msgspec.structs.replace(engine.assembler(i).counters) for i in inst_ids}
                await engine.run()
                after = {i: engine.assembler(i).counters for i in inst_ids}
        finally:
            undo()
        seconds = time.perf_counter() - started
        if not getattr(args, "quiet", False):
            for inst_id in inst_ids:
                print(summary_line(inst_id, before[inst_id], after[inst_id], seconds), file=sys.stderr)
    finally:
        await rest.aclose()
    return 0


__all__ = ["register_live", "run_live"]
