"""``vstream live``: stream OKX trades into bars until SIGINT/SIGTERM (SPEC §6, §8).

The signal handling lives here, in the command-line layer, never in the engine: the first
SIGINT/SIGTERM asks the source to stop (it closes the minutes whose wall-clock end has passed
and ends), the engine then flushes and checkpoints and the command exits 0. A second signal
stops the engine at once (it still checkpoints). A signal during start-up (the instrument
fetch) ends it: nothing is open yet, the command exits 0.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..assembler import Bar
from ..engine import Engine
from ..errors import ConfigError, SourceError
from ..formats import FORMATS
from ..instruments import kind_of
from ..okx_rest import DEFAULT_REST_URL, OkxRest, refresh_instrument_cache
from ..trades import TRADE_CHANNELS
from .alerts import add_alert_options, alert_rules_of, live_deliverer, with_delivery
from .common import (
    add_settings_options,
    add_vault_option,
    checkpoint_interval,
    instrument_id,
    positive_number,
    settings_of,
    stdout_closed,
    summary_line,
    vault_of,
)

if TYPE_CHECKING:
    from ..sources.okx import OkxSource  # imported at run time only by live (websockets)

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
        "--instId", dest="inst_ids", action="append", type=instrument_id, required=True, metavar="ID",
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
        "--record-format", choices=FORMATS, metavar="okx|exporter",
        help="with --record: write OKX objects or the vault exporter's lines (default: the "
        "format the instrument's files hold; a new instrument gets exporter lines when the "
        "vault's other instruments hold them, else OKX objects)",
    )
    live.add_argument(
        "--gap-timeout", type=positive_number, default=60.0, metavar="S",
        help="seconds a trade-id gap may stay unfilled before its minutes are emitted flagged (60)",
    )
    live.add_argument(
        "--partial", type=positive_number, metavar="SECONDS",
        help='also print the open minute\'s bar every SECONDS with "final": false (finished bars: true)',
    )
    add_settings_options(live)
    add_alert_options(live, live=True)
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
    alerts, alerts_given = alert_rules_of(args)
    deliverer = live_deliverer(args, vault)  # its secrets are checked before anything starts
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids))
    for inst_id in inst_ids:
        kind_of(inst_id)
    if args.record_format is not None and not args.record:
        raise ConfigError("--record-format chooses how --record writes trades: give --record too")
    # The handlers go in before any start-up work (the instrument fetch may retry for seconds):
    # a stop then ends start-up, with nothing opened yet to flush or checkpoint, and exit 0.
    stop = _Stop()
    undo = _install_signals(asyncio.get_running_loop(), stop.signal)
    rest = OkxRest(args.rest_url or DEFAULT_REST_URL)
    try:
        starting = asyncio.ensure_future(_start_up(vault, inst_ids, rest))
        stop.starting = starting
        try:
            okx_source = await starting
        except asyncio.CancelledError:
            if not stop.requested:
                raise  # cancelled from outside, not by a signal
            okx_source = None
        if stop.requested or okx_source is None:
            log.warning("stopped during start-up: nothing to flush or checkpoint yet")
            return 0
        source = okx_source(
            inst_ids,
            channel=args.channel,
            ws_url=args.ws_url,
            rest=rest,
            record_vault=vault if args.record else None,
            record_format=args.record_format,
            ct_val=settings.ct_val,
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

        partial = getattr(args, "partial", None)
        engine = Engine(
            [source],
            sinks=[] if partial else [show],
            settings=settings,
            vault=vault,
            given=given,
            checkpoint_interval=checkpoint_interval(),
            partial_sinks=[show] if partial else [],
            partial_every=partial or 1.0,
            alerts=alerts,
            alerts_given=alerts_given,
            on_alerts=deliverer.wake if deliverer is not None else None,
        )
        stop.running(source, engine)
        started = time.perf_counter()
        async with engine:
            before = {i: msgspec.structs.replace(engine.assembler(i).counters) for i in inst_ids}
            await with_delivery(deliverer, engine.run())
            after = {i: engine.assembler(i).counters for i in inst_ids}
        seconds = time.perf_counter() - started
        if not getattr(args, "quiet", False):
            for inst_id in inst_ids:
                print(summary_line(inst_id, before[inst_id], after[inst_id], seconds), file=sys.stderr)
    finally:
        undo()
        await rest.aclose()
    return 0


async def _start_up(vault: Path, inst_ids: list[str], rest: OkxRest) -> type[OkxSource]:
    """Refresh the instrument cache; return the source class (its import is not free)."""
    from ..sources.okx import OkxSource  # websockets: only live mode needs it

    try:
        await refresh_instrument_cache(vault, inst_ids, rest)
    except SourceError as exc:
        log.warning("could not refresh the instrument cache (%s); using cached or built-in ctVal", exc)
    return OkxSource


class _Stop:
    """Where SIGINT/SIGTERM go. While starting, a signal cancels the start-up; once running,
    the first asks the source to stop (it closes what is due and ends, the engine flushes and
    checkpoints), a second stops the engine at once (it still checkpoints)."""

    def __init__(self) -> None:
        self.requested = False
        self.starting: asyncio.Future[Any] | None = None
        self._source: OkxSource | None = None
        self._engine: Engine | None = None

    def running(self, source: OkxSource, engine: Engine) -> None:
        self._source, self._engine = source, engine

    def signal(self) -> None:
        first = not self.requested
        self.requested = True
        if self._source is None or self._engine is None:
            if self.starting is not None:
                self.starting.cancel()
        elif first:
            log.warning("stopping: closing what is due, flushing and checkpointing")
            self._source.stop()
        else:
            self._engine.stop()


__all__ = ["register_live", "run_live"]
