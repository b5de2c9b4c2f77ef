"""``vstream replay``: catch the vault up, one instrument per worker process (SPEC §7, §8)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..alerts.rules import AlertRules
from ..engine import Engine
from ..errors import ConfigError
from ..instruments import discover, kind_of
from ..progress import Progress, ProgressSource
from ..settings import Settings
from ..sources.replay import ReplaySource
from .alerts import add_alert_options, alert_rules_of
from .common import (
    add_instruments_option,
    add_settings_options,
    add_vault_option,
    checkpoint_interval,
    describe,
    print_out,
    report,
    run_async,
    settings_of,
    summary_line,
    vault_of,
)

T = TypeVar("T")


def register_replay(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``replay`` subcommand."""
    replay = sub.add_parser(
        "replay",
        help="catch the vault up: trades files -> bars",
        description="Read each instrument's trade files from where the last run stopped, append "
        "the new bars and print one summary line per instrument. Without --final the last minute "
        "stays open for the next run.",
    )
    add_instruments_option(replay, "every instrument with trade files in the vault")
    add_vault_option(replay)
    replay.add_argument("--final", action="store_true", help="the input is complete: close the last minute")
    replay.add_argument("--rebuild", action="store_true", help="start the instruments over from the first input byte")
    replay.add_argument("--strict", action="store_true", help="stop with an error at the first rejected line")
    add_settings_options(replay)
    add_alert_options(replay)
    replay.set_defaults(handler=_replay)


async def replay_one(
    vault: Path,
    inst_id: str,
    settings: Settings,
    *,
    final: bool,
    rebuild: bool,
    strict: bool,
    progress: Progress | None = None,
    given: frozenset[str] | None = None,
    alerts: AlertRules | None = None,
    alerts_given: frozenset[str] | None = None,
) -> str:
    """Catch one instrument up; return its summary line (``progress`` shows how far it got).

    ``given`` names the settings the user chose; the instrument's state supplies the others
    (``None``: all of ``settings`` is chosen)."""
    source: Any = ReplaySource(vault, inst_id, final=final, strict=strict)
    if progress is not None and progress.enabled:
        source = ProgressSource(source, progress)
    started = time.perf_counter()
    engine = Engine(
        [source],
        settings=settings,
        vault=vault,
        rebuild=rebuild,
        given=given,
        checkpoint_interval=checkpoint_interval(),
        alerts=alerts,
        alerts_given=alerts_given,
    )
    async with engine:
        before = msgspec.structs.replace(engine.assembler(inst_id).counters)
        await engine.run()
        after = engine.assembler(inst_id).counters
    return summary_line(inst_id, before, after, time.perf_counter() - started)


async def _replay(args: argparse.Namespace) -> int:
    vault = vault_of(args)
    settings, given = settings_of(args)
    alerts = alert_rules_of(args)
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids or []))
    if args.all:
        inst_ids = discover(vault)
        if not inst_ids:
            raise ConfigError(f"no instruments with trade files under {vault / 'raw' / 'okx'}")
    for inst_id in inst_ids:
        kind_of(inst_id)
    workers = min(len(inst_ids), os.cpu_count() or 1)
    if workers > 1:
        return await _replay_parallel(args, vault, settings, given, inst_ids, workers, alerts)
    progress = Progress(f"replay {len(inst_ids)} instrument(s)", enabled=False if args.quiet else None)
    results = await asyncio.gather(
        *(
            replay_one(
                vault, i, settings, final=args.final, rebuild=args.rebuild, strict=args.strict,
                progress=progress, given=given, alerts=alerts[0], alerts_given=alerts[1],
            )
            for i in inst_ids
        ),
        return_exceptions=True,
    )
    progress.close()
    status = 0
    for inst_id, result in zip(inst_ids, results, strict=True):
        if isinstance(result, BaseException):
            status = max(status, report(result, inst_id))
        else:
            print_out(result)
    return status


async def _replay_parallel(
    args: argparse.Namespace,
    vault: Path,
    settings: Settings,
    given: frozenset[str],
    inst_ids: list[str],
    workers: int,
    alerts: tuple[AlertRules | None, frozenset[str]] = (None, frozenset()),
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
                pool, _replay_worker, str(vault), i, settings, given, args.final, args.rebuild,
                args.strict, alerts,
            )
            for i in inst_ids
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        # Interrupted, the workers are checkpointing: wait for them.
        pool.shutdown(wait=True, cancel_futures=True)
        if queue is not None:
            queue.put(None)
            relay.join(5)
        progress.close()
    status = 0
    for inst_id, result in zip(inst_ids, results, strict=True):
        if isinstance(result, BaseException):
            status = max(status, report(result, inst_id))
        elif result[1]:
            print(f"vstream: {result[0]}", file=sys.stderr, flush=True)
            status = max(status, result[1])
        else:
            print_out(result[0])
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


def _stop_workers(pool: Any) -> None:
    """Ask each live replay worker to stop: it checkpoints and returns "interrupted".

    Workers ignore SIGINT (see :func:`_worker_init`), so whether the interrupt went to this
    process alone (``kill -INT``, a scheduler) or to a terminal's whole process group, each
    worker is told exactly once, here, with SIGTERM.
    """
    if sys.platform == "win32":
        return  # a console's Ctrl-C reaches every process attached to it
    processes = getattr(pool, "_processes", None) or {}  # pid -> Process; None once shut down
    for process in list(processes.values()):
        with contextlib.suppress(OSError):
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)


async def _until_sigterm(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main``; SIGTERM cancels it (the engine then flushes and checkpoints)."""
    if sys.platform == "win32":
        return await main()  # no signal handlers on Windows' event loop
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await main()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


_progress_queue: Any = None


def _worker_init(parent_pid: int, queue: Any = None) -> None:
    """Make a replay worker die with its parent (and keep where its progress goes).

    A parent killed outright (SIGKILL, a crashed scheduler) must not leave workers running:
    they would hold the instruments' locks and the parent's pipes, so the next scheduled run
    would find the instruments busy. Dying at any instant is safe (SPEC §7), like the parent.
    """
    global _progress_queue
    _progress_queue = queue
    if sys.platform != "win32":
        # The parent tells workers when to stop (SIGTERM, once): a terminal's Ctrl-C, sent to
        # the whole process group, would otherwise reach them a second time.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    vault: str,
    inst_id: str,
    settings: Settings,
    given: frozenset[str],
    final: bool,
    rebuild: bool,
    strict: bool,
    alerts: tuple[AlertRules | None, frozenset[str]] = (None, frozenset()),
) -> tuple[str, int]:
    """Worker-process entry of ``replay``: (summary line, 0) or (error message, exit code)."""
    logging.basicConfig(level=logging.WARNING, format="vstream: %(message)s", stream=sys.stderr)
    try:
        relay = _RelayProgress(_progress_queue) if _progress_queue is not None else None
        line = run_async(
            lambda: _until_sigterm(
                lambda: replay_one(
                    Path(vault), inst_id, settings, final=final, rebuild=rebuild, strict=strict,
                    progress=relay, given=given, alerts=alerts[0], alerts_given=alerts[1],
                )
            )
        )
    except BaseException as exc:  # reported by the parent, like an in-process failure
        message, code = describe(exc, inst_id)
        return message, code
    return line, 0
