"""Alerts on the command line: the rule options of ``replay`` and ``live``, the delivery
task of ``live``, and the ``vstream alerts`` commands (``deliver``, ``list``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from ..alerts.config import AlertsConfig, load_alerts
from ..alerts.rules import KINDS, AlertRules, bar_rules
from ..errors import ConfigError
from ..instruments import kind_of
from .common import add_vault_option, bar_count, positive_number, print_out, time_range, vault_of

# Loaded by the commands that use them: the others start without them.
if TYPE_CHECKING:
    from ..alerts.deliver import Deliverer
    from ..alerts.detect import Alert

log = logging.getLogger("vstream")
T = TypeVar("T")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_number(text)


def add_alert_options(p: argparse.ArgumentParser, *, live: bool = False) -> None:
    """The alert rule options (each also a key of ``[alerts]`` in ``--config``)."""
    group = p.add_argument_group("alerts", "written to derived/alerts/ in the vault (README \"Alerts\")")
    group.add_argument("--whale-trade-usd", type=positive_number, metavar="N",
                       help="alert on each trade of at least this notional (1000000)")  # fmt: skip
    group.add_argument("--burst-count", type=_count, metavar="N",
                       help="alert when N trades of --burst-usd or more hit one side within --burst-seconds (3; 0: off)")  # fmt: skip
    group.add_argument("--burst-seconds", type=positive_number, metavar="S", help="the burst window (60)")
    group.add_argument("--burst-usd", type=positive_number, metavar="N",
                       help="least notional of a burst's trades (default: --whale-trade-usd)")  # fmt: skip
    group.add_argument("--alert-bar", dest="alert_bars", action="append", default=[], metavar="FILTER",
                       help="alert on each finished bar matching FILTER, e.g. 'tier=T4 and absorption' (repeatable)")  # fmt: skip
    if live:
        group.add_argument("--silence", dest="silence_seconds", type=_seconds, metavar="S",
                           help="alert when an instrument has no trade for longer than S seconds (0: off)")  # fmt: skip
        group.add_argument("--deliver-history", action="store_true",
                           help="also deliver the alerts a first run or a rebuild made from history")  # fmt: skip
    group.add_argument("--no-alerts", action="store_true", help="make no alerts (stored with the instrument)")


def alerts_config(args: argparse.Namespace, *, destinations: bool = True) -> AlertsConfig:
    """The ``[alerts]`` table of ``--config`` (empty without one); ``destinations`` as for
    :func:`~vstream.alerts.config.parse_alerts`."""
    return load_alerts(getattr(args, "config", None), destinations=destinations)


def alert_rules_of(args: argparse.Namespace, config: AlertsConfig | None = None) -> tuple[AlertRules | None, frozenset[str]]:
    """The alert rules a command was given (config file, then options) and the names of the
    fields given: (None, empty) when none were, so each instrument keeps its stored rules."""
    config = alerts_config(args, destinations=False) if config is None else config
    given: dict[str, Any] = dict(config.rules)
    for name in ("whale_trade_usd", "burst_count", "burst_seconds", "burst_usd", "silence_seconds"):
        value = getattr(args, name, None)
        if value is not None:
            given[name] = value
    texts = getattr(args, "alert_bars", None) or []
    if texts:
        given["bars"] = {**given.get("bars", {}), **bar_rules(texts)}
    if getattr(args, "no_alerts", False):
        if texts:
            raise ConfigError("--alert-bar and --no-alerts contradict each other")
        given["enabled"] = False
    if not given:
        return None, frozenset()
    given.setdefault("enabled", True)  # giving a rule turns alerts (back) on
    return AlertRules().overlay(given), frozenset(given)


# -- live: delivery beside the engine -------------------------------------------------------


def live_deliverer(args: argparse.Namespace, vault: Path, config: AlertsConfig | None = None) -> Deliverer | None:
    """The deliverer ``live`` runs beside its engine (None without destinations)."""
    config = alerts_config(args) if config is None else config
    if not config.destinations:
        return None
    from ..alerts.deliver import Deliverer

    return Deliverer(vault, config.destinations, follow=True, deliver_history=getattr(args, "deliver_history", False))


async def with_delivery(deliverer: Deliverer | None, main: Awaitable[T], drain: float = 2.0) -> T:
    """Await ``main`` (the engine's run) with ``deliverer`` running in its own task.

    Delivery never holds the bars up: a destination that is down only makes its alerts wait
    in the file. When ``main`` ends the deliverer gets ``drain`` seconds to send what the last
    checkpoint made durable, then stops (what is left goes next time)."""
    if deliverer is None:
        return await main
    task = asyncio.create_task(_deliver_quietly(deliverer), name="vstream-alerts-delivery")
    try:
        return await main
    finally:
        deliverer.follow = False  # stop once caught up ...
        deliverer.wake()
        try:
            await asyncio.wait_for(asyncio.shield(task), drain)
        except TimeoutError:
            deliverer.stop()  # ... or now
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _deliver_quietly(deliverer: Deliverer) -> None:
    try:
        report = await deliverer.run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("alerts delivery stopped: %s", deliverer.redact(str(exc)))
        return
    for name, reason in report.failed.items():
        log.warning("alerts destination %s: not delivered by this session: %s", name, reason)


# -- vstream alerts ... ----------------------------------------------------------------------


def register_alerts(sub: argparse._SubParsersAction[Any]) -> None:
    """``vstream alerts deliver`` and ``vstream alerts list``."""
    p = sub.add_parser(
        "alerts",
        help="deliver alerts to Discord, Telegram, webhooks; list them",
        description="Alerts are written by replay and live to derived/alerts/ in the vault; "
        "these commands deliver them and show them.",
    )
    commands = p.add_subparsers(dest="alerts_command", required=True, metavar="{deliver,list}")
    quiet = {"action": "store_true", "default": argparse.SUPPRESS, "help": "only errors on stderr"}

    d = commands.add_parser(
        "deliver",
        help="post new alerts to the destinations of --config",
        description="Post the alerts written since the last delivery to each destination of "
        "[[alerts.destinations]] in --config (Discord, Telegram, JSON webhooks), retrying failures "
        "with backoff; each keeps its own position. Without --follow it stops once caught up.",
    )
    add_vault_option(d)
    d.add_argument("--config", metavar="F", required=True, help="TOML file with [[alerts.destinations]]")
    d.add_argument("--follow", action="store_true", help="keep delivering new alerts until SIGINT/SIGTERM")
    d.add_argument("--deliver-history", action="store_true",
                   help="also deliver the alerts a first run or a rebuild made from history")  # fmt: skip
    d.add_argument("--destination", dest="names", action="append", metavar="NAME",
                   help="only this destination (repeatable)")  # fmt: skip
    d.add_argument("--instId", dest="inst_ids", action="append", metavar="ID", help="only this instrument (repeatable)")
    d.add_argument("--max-attempts", type=bar_count, metavar="N",
                   help="without --follow: give a destination up after N failed tries at one alert (5)")  # fmt: skip
    d.add_argument("-q", "--quiet", **quiet)
    d.set_defaults(handler=_deliver)

    ls = commands.add_parser(
        "list",
        help="print the alerts of one or more instruments",
        description="Print the written alerts (those the state records as durable), oldest first.",
    )
    group = ls.add_mutually_exclusive_group(required=True)
    group.add_argument("--instId", dest="inst_ids", action="append", metavar="ID", help="instrument, repeatable")
    group.add_argument("--all", action="store_true", help="every instrument with alerts in the vault")
    add_vault_option(ls)
    ls.add_argument("--kind", dest="kinds", action="append", choices=list(KINDS), help="only this kind (repeatable)")
    ls.add_argument("--since", metavar="ISO", help="from this time (2025-12-14T21:00Z, or 6h, 2d back)")
    ls.add_argument("--until", metavar="ISO", help="before this time (same forms)")
    ls.add_argument("--last", type=bar_count, metavar="N", help="only the last N")
    ls.add_argument("--json", action="store_true", help="the alert lines as they are in the files")
    ls.add_argument("-q", "--quiet", **quiet)

    async def list_handler(args: Any) -> int:
        return await asyncio.to_thread(_list, args)

    ls.set_defaults(handler=list_handler)


async def _deliver(args: argparse.Namespace) -> int:
    vault = vault_of(args)
    if not vault.is_dir():
        raise ConfigError(f"vault {vault} does not exist")
    config = alerts_config(args)
    destinations = config.destinations
    if args.names:
        unknown = sorted(set(args.names) - {d.name for d in destinations})
        if unknown:
            raise ConfigError(f"no alerts destination named {', '.join(unknown)} in {args.config}")
        destinations = [d for d in destinations if d.name in args.names]
    for inst in args.inst_ids or []:
        kind_of(inst)
    from ..alerts.deliver import Deliverer

    deliverer = Deliverer(
        vault, destinations, follow=args.follow, deliver_history=args.deliver_history,
        inst_ids=args.inst_ids, max_attempts=args.max_attempts,
    )  # fmt: skip
    with _stop_on_signals(deliverer.stop):
        report = await deliverer.run()
    status = 0
    for dest in destinations:
        name = dest.name
        if name in report.failed:
            print(f"vstream: {report.failed[name]}", file=sys.stderr, flush=True)
            status = 1
        elif not getattr(args, "quiet", False):
            print_out(f"{name} delivered={report.delivered.get(name, 0)} skipped={report.skipped.get(name, 0)}")
    return status


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``stop`` (the deliverer ends after the alert in hand)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows: Ctrl-C interrupts; the cursor is durable after every alert
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _list(args: argparse.Namespace) -> int:
    from ..alerts.files import alert_instruments
    from ..alerts.message import summary

    vault = vault_of(args)
    if not vault.is_dir():
        raise ConfigError(f"vault {vault} does not exist")
    inst_ids = alert_instruments(vault) if args.all else list(dict.fromkeys(args.inst_ids))
    for inst in inst_ids:
        kind_of(inst)
    since, until = time_range(args, time.time())
    streams = [_alerts_of(vault, inst, args.kinds, since, until) for inst in inst_ids]
    # Each file in its own order (the stream's), instruments merged by time.
    found = heapq.merge(*streams, key=lambda item: item[0].time)
    shown = deque(found, maxlen=args.last) if args.last is not None else found
    empty = True
    for alert, line in shown:
        empty = False
        print_out(line.decode() if args.json else f"{alert.time}  {alert.kind:<7}  {summary(alert)}")
    if empty:
        print("no alerts", file=sys.stderr)
    return 0


def _alerts_of(
    vault: Path, inst: str, kinds: list[str] | None, since: str | None, until: str | None
) -> Iterator[tuple[Alert, bytes]]:
    from ..alerts.detect import Alert
    from ..alerts.files import alert_file, read_lines

    decoder = msgspec.json.Decoder(Alert)
    af = alert_file(vault, inst)
    if af is None:
        return
    pos = 0
    while lines := read_lines(af.path, pos, af.length, 10_000):
        for _, end, line in lines:
            pos = end
            try:
                alert = decoder.decode(line)
            except msgspec.DecodeError:
                continue
            if kinds and alert.kind not in kinds:
                continue
            if (since and alert.time < since) or (until and alert.time >= until):
                continue
            yield alert, line


__all__ = [
    "add_alert_options",
    "alert_rules_of",
    "alerts_config",
    "live_deliverer",
    "register_alerts",
    "with_delivery",
]
