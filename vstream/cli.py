"""The ``vstream`` command line (SPEC §8). The only place that starts an event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

from .assembler import Counters
from .engine import Engine
from .errors import ConfigError, VStreamError
from .instruments import discover, kind_of
from .settings import TIMEFRAMES, Settings, load_config, make_settings
from .sources.replay import ReplaySource

T = TypeVar("T")

_THRESHOLDS: list[tuple[str, str, type, str]] = [
    ("--whale-usd", "whale_usd", float, "notional of a whale trade in USD (100000)"),
    ("--median-window", "median_window", int, "bars in the rolling median (100)"),
    ("--min-history", "min_history", int, "bars needed before tiers are given (20)"),
    ("--absorption-volume-ratio", "absorption_volume_ratio", float, "volume ratio above which a flat bar is absorption (2.0)"),
    ("--absorption-max-price-pct", "absorption_max_price_pct", float, "price change %% below which a bar is flat (0.1)"),
    ("--divergence-min-price-pct", "divergence_min_price_pct", float, "price change %% needed for divergence (0.1)"),
    ("--divergence-min-delta-ratio", "divergence_min_delta_ratio", float, "|delta| / volume needed for divergence (0.1)"),
    ("--grace", "grace", float, "seconds after a minute ends before live mode closes it (2)"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line on stderr and exit 2, as for every usage or configuration error.
        self.exit(2, f"vstream: {message} (see --help)\n")


def _ct_val(text: str) -> tuple[str, float]:
    inst, sep, value = text.partition("=")
    if not sep or not inst:
        raise argparse.ArgumentTypeError(f"expected INST=VALUE, got {text!r}")
    try:
        return inst, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ctVal for {inst} is not a number: {value!r}") from None


def _timeframes(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    for tf in items:
        if tf not in TIMEFRAMES:
            raise argparse.ArgumentTypeError(f"unknown timeframe {tf!r}; choose from {','.join(TIMEFRAMES)}")
    return items


def add_vault_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault", metavar="P", help="vault folder (default: $VSTREAM_VAULT, else ./Vault)")


def add_settings_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="TOML file with settings (keys as in README)")
    p.add_argument(
        "--ct-val", metavar="INST=VALUE", type=_ct_val, action="append", default=[],
        help="contract value override, repeatable",
    )
    p.add_argument("--timeframes", type=_timeframes, metavar="1m,5m,15m,1h", help="bar timeframes to write (1m)")
    for flag, dest, kind, text in _THRESHOLDS:
        p.add_argument(flag, dest=dest, type=kind, metavar="N", help=text)


def register_replay(sub: argparse._SubParsersAction[Any]) -> None:
    replay = sub.add_parser("replay", help="catch the vault up: trades files -> bars")
    group = replay.add_mutually_exclusive_group(required=True)
    group.add_argument("--instId", dest="inst_ids", action="append", metavar="ID", help="instrument, repeatable")
    group.add_argument("--all", action="store_true", help="every instrument with trade files in the vault")
    add_vault_option(replay)
    replay.add_argument("--final", action="store_true", help="the input is complete: close the last minute")
    replay.add_argument("--rebuild", action="store_true", help="start the instruments over from the first input byte")
    replay.add_argument("--strict", action="store_true", help="stop with an error at the first rejected line")
    add_settings_options(replay)
    replay.set_defaults(handler=_replay)


def register_demo(sub: argparse._SubParsersAction[Any]) -> None:
    demo = sub.add_parser("demo", help="generate a sample vault, replay it and show what was found")
    demo.add_argument("--vault", metavar="P", help="where to write the sample vault (default: a new temporary folder)")
    demo.add_argument("--hours", type=float, default=6.0, help="hours of trades to generate (6)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (7)")

    async def handler(args: argparse.Namespace) -> int:
        from .demo import run_demo

        return await run_demo(args)

    demo.set_defaults(handler=handler)


#: Each adds its subcommand and sets ``handler`` (an async function of the parsed arguments).
REGISTRARS: list[Callable[[argparse._SubParsersAction[Any]], None]] = [
    register_replay,
    register_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vstream", description="OKX trades into one-minute order-flow bars.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in REGISTRARS:
        register(sub)
    return parser


def vault_of(args: argparse.Namespace) -> Path:
    value = args.vault or os.environ.get("VSTREAM_VAULT") or "Vault"
    return Path(value)


def settings_of(args: argparse.Namespace) -> Settings:
    base = load_config(args.config) if getattr(args, "config", None) else {}
    overrides: dict[str, Any] = {dest: getattr(args, dest, None) for _, dest, _, _ in _THRESHOLDS}
    overrides["ct_val"] = dict(args.ct_val) if getattr(args, "ct_val", None) else None
    overrides["timeframes"] = getattr(args, "timeframes", None)
    return make_settings(base, **overrides)


def summary_line(inst_id: str, before: Counters, after: Counters, seconds: float) -> str:
    """One line per instrument: this run's counts, time and rate."""
    diff = {f: getattr(after, f) - getattr(before, f) for f in Counters.__struct_fields__}
    rate = diff["trades"] / seconds if seconds > 0 else 0.0
    fields = " ".join(f"{k}={v}" for k, v in diff.items())
    return f"{inst_id} {fields} seconds={seconds:.2f} trades/s={rate:.0f}"


async def replay_one(
    vault: Path, inst_id: str, settings: Settings, *, final: bool, rebuild: bool, strict: bool
) -> str:
    """Catch one instrument up; return its summary line."""
    source = ReplaySource(vault, inst_id, final=final, strict=strict)
    started = time.perf_counter()
    async with Engine([source], settings=settings, vault=vault, rebuild=rebuild) as engine:
        before = msgspec.structs.replace(engine.assembler(inst_id).counters)
        await engine.run()
        after = engine.assembler(inst_id).counters
    return summary_line(inst_id, before, after, time.perf_counter() - started)


async def _replay(args: argparse.Namespace) -> int:
    vault = vault_of(args)
    settings = settings_of(args)
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids or []))
    if args.all:
        inst_ids = discover(vault)
        if not inst_ids:
            raise ConfigError(f"no instruments with trade files under {vault / 'raw' / 'okx'}")
    for inst_id in inst_ids:
        kind_of(inst_id)
    results = await asyncio.gather(
        *(
            replay_one(vault, i, settings, final=args.final, rebuild=args.rebuild, strict=args.strict)
            for i in inst_ids
        ),
        return_exceptions=True,
    )
    status = 0
    for inst_id, result in zip(inst_ids, results, strict=True):
        if isinstance(result, BaseException):
            status = max(status, _report(result, inst_id))
        else:
            print(result, flush=True)
    return status


def _report(exc: BaseException, inst_id: str | None = None) -> int:
    if isinstance(exc, VStreamError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        message, code = "interrupted", 1
    else:
        message, code = f"unexpected {type(exc).__name__}: {exc}", 1
    if inst_id and not message.startswith(inst_id):
        message = f"{inst_id}: {message}"
    print(f"vstream: {message}", file=sys.stderr, flush=True)
    return code


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on uvloop where it is installed (not on Windows), else on asyncio's loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vstream`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING,
        format="vstream: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    try:
        return run_async(lambda: handler(args))
    except KeyboardInterrupt:
        return _report(KeyboardInterrupt())
    except Exception as exc:
        return _report(exc)
