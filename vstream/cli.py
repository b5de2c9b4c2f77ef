"""The ``vstream`` command line (SPEC §8). The only place that starts an event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

from .archive import register_import_okx
from .assembler import Counters
from .chart import register_chart
from .engine import Engine
from .errors import ConfigError, VStreamError
from .instruments import discover, kind_of
from .live import register_live
from .nats.commands import (
    register_cluster_status,
    register_ingest,
    register_publish,
    register_sink_jsonl,
    register_worker,
)
from .progress import Progress, ProgressSource
from .query import register_signals, register_status
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
    register_import_okx,
    register_signals,
    register_status,
    register_chart,
    register_live,
    register_ingest,
    register_publish,
    register_worker,
    register_sink_jsonl,
    register_cluster_status,
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


def _checkpoint_interval() -> float:
    """Seconds between checkpoints: 5, or ``VSTREAM_CHECKPOINT_INTERVAL`` (undocumented in
    ``--help``; the crash tests set it tiny so kills land between many checkpoints)."""
    text = os.environ.get("VSTREAM_CHECKPOINT_INTERVAL", "")
    if not text:
        return 5.0
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"VSTREAM_CHECKPOINT_INTERVAL is not a number: {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"VSTREAM_CHECKPOINT_INTERVAL must be >= 0, got {text!r}")
    return value


async def replay_one(
    vault: Path,
    inst_id: str,
    settings: Settings,
    *,
    final: bool,
    rebuild: bool,
    strict: bool,
    progress: Progress | None = None,
) -> str:
    """Catch one instrument up; return its summary line (``progress`` shows how far it got)."""
    source: Any = ReplaySource(vault, inst_id, final=final, strict=strict)
    if progress is not None and progress.enabled:
        source = ProgressSource(source, progress)
    started = time.perf_counter()
    engine = Engine(
        [source],
        settings=settings,
        vault=vault,
        rebuild=rebuild,
        checkpoint_interval=_checkpoint_interval(),
    )
    async with engine:
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
    workers = min(len(inst_ids), os.cpu_count() or 1)
    if workers > 1:
        return await _replay_parallel(args, vault, settings, inst_ids, workers)
    progress = Progress(f"replay {len(inst_ids)} instrument(s)", enabled=False if args.quiet else None)
    results = await asyncio.gather(
        *(
            replay_one(
                vault, i, settings, final=args.final, rebuild=args.rebuild, strict=args.strict,
                progress=progress,
            )
            for i in inst_ids
        ),
        return_exceptions=True,
    )
    progress.close()
    status = 0
    for inst_id, result in zip(inst_ids, results, strict=True):
        if isinstance(result, BaseException):
            status = max(status, _report(result, inst_id))
        else:
            print(result, flush=True)
    return status


async def _replay_parallel(
    args: argparse.Namespace, vault: Path, settings: Settings, inst_ids: list[str], workers: int
) -> int:
    """One worker process per instrument, at most ``workers`` at a time.

    Decoding is CPU-bound and holds the GIL, so threads would not help; instruments share
    nothing, so each worker's output is exactly what a run of that instrument alone writes.
    Workers are started with ``spawn`` (as on Windows): no event loop or lock is inherited.
    Results are printed in the order the instruments were given, with the usual exit codes.
    """
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    loop = asyncio.get_running_loop()
    ctx = get_context("spawn")
    progress = Progress(f"replay {len(inst_ids)} instrument(s)", enabled=False if args.quiet else None)
    # Workers report their progress numbers here; this process draws the one line.
    queue: Any = ctx.SimpleQueue() if progress.enabled else None
    relay = threading.Thread(target=_relay_progress, args=(queue, progress), daemon=True)
    if queue is not None:
        relay.start()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(), queue)
    )
    try:
        futures = [
            loop.run_in_executor(
                pool, _replay_worker, str(vault), i, settings, args.final, args.rebuild, args.strict
            )
            for i in inst_ids
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        # On Ctrl-C the workers got the signal too and are checkpointing: wait for them.
        pool.shutdown(wait=True, cancel_futures=True)
        if queue is not None:
            queue.put(None)
            relay.join(5)
        progress.close()
    status = 0
    for inst_id, result in zip(inst_ids, results, strict=True):
        if isinstance(result, BaseException):
            status = max(status, _report(result, inst_id))
        elif result[1]:
            print(f"vstream: {result[0]}", file=sys.stderr, flush=True)
            status = max(status, result[1])
        else:
            print(result[0], flush=True)
    return status


class _RelayProgress(Progress):
    """A worker's progress: the numbers go to the parent, which draws the line."""

    def __init__(self, queue: Any) -> None:
        super().__init__("", enabled=True)
        self._queue = queue

    def add_total(self, nbytes: int) -> None:
        self._queue.put((nbytes, 0, 0))

    def advance(self, nbytes: int = 0, items: int = 0) -> None:
        self._queue.put((0, nbytes, items))


def _relay_progress(queue: Any, progress: Progress) -> None:
    while (item := queue.get()) is not None:
        total, done, items = item
        if total:
            progress.add_total(total)
        if done or items:
            progress.advance(done, items)


_progress_queue: Any = None


def _worker_init(parent_pid: int, queue: Any = None) -> None:
    """Make a replay worker die with its parent (and keep where its progress goes).

    A parent killed outright (SIGKILL, a crashed scheduler) must not leave workers running:
    they would hold the instruments' locks and the parent's pipes, so the next scheduled run
    would find the instruments busy. Dying at any instant is safe (SPEC §7), like the parent.
    """
    global _progress_queue
    _progress_queue = queue
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if sys.platform != "win32":
        import threading

        def watch() -> None:
            # Also covers the parent dying before prctl above, and systems without prctl.
            while os.getppid() == parent_pid:
                time.sleep(0.2)
            os._exit(1)

        threading.Thread(target=watch, name="vstream-parent-watch", daemon=True).start()


def _replay_worker(
    vault: str, inst_id: str, settings: Settings, final: bool, rebuild: bool, strict: bool
) -> tuple[str, int]:
    """Worker-process entry of ``replay``: (summary line, 0) or (error message, exit code)."""
    logging.basicConfig(level=logging.WARNING, format="vstream: %(message)s", stream=sys.stderr)
    try:
        relay = _RelayProgress(_progress_queue) if _progress_queue is not None else None
        line = run_async(
            lambda: replay_one(
                Path(vault), inst_id, settings, final=final, rebuild=rebuild, strict=strict,
                progress=relay,
            )
        )
    except BaseException as exc:  # reported by the parent, like an in-process failure
        message, code = _describe(exc, inst_id)
        return message, code
    return line, 0


def _describe(exc: BaseException, inst_id: str | None = None) -> tuple[str, int]:
    """The one-line message and exit code of a failure."""
    if isinstance(exc, VStreamError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        message, code = "interrupted", 1
    else:
        message, code = f"unexpected {type(exc).__name__}: {exc}", 1
    if inst_id and not message.startswith(inst_id):
        message = f"{inst_id}: {message}"
    return message, code


def _report(exc: BaseException, inst_id: str | None = None) -> int:
    message, code = _describe(exc, inst_id)
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
