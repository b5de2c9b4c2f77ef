"""``vstream replay``: catch the vault up, one instrument per worker process (SPEC §7, §8)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .. import _interrupts
from ..alerts.rules import AlertRules
from ..assembler import Counters
from ..engine import Engine
from ..errors import ConfigError
from ..instruments import VaultPaths, discover, kind_of
from ..progress import Progress, ProgressSource
from ..settings import Settings
from ..sources.replay import ReplaySource, warn_passed_over
from .alerts import add_alert_options, alert_rules_of
from .common import (
    add_instruments_option,
    add_settings_options,
    add_vault_option,
    checkpoint_interval,
    describe,
    print_out,
    rejects_verdict,
    report,
    run_async,
    settings_of,
    summary_line,
    takeover_notice,
    vault_of,
)


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
    # Ctrl-C is held back (vstream._interrupts) until _replay can stop its instruments cleanly.
    replay.set_defaults(handler=_replay, releases_interrupts=True)


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
    notices: list[str] | None = None,
    stop: Stop | None = None,
    alerts: AlertRules | None = None,
    alerts_given: frozenset[str] | None = None,
) -> str:
    """Catch one instrument up; return its summary line (``progress`` shows how far it got).

    ``given`` names the settings the user chose; the instrument's state supplies the others
    (``None``: all of ``settings`` is chosen). Lines for stderr go to ``notices``: a takeover
    from volume_analyzer.py, a run that rejected most of its lines (one that rejected all of
    them raises :class:`~vstream.errors.InputRejectedError`). When ``stop`` is asked, the run
    ends early and cleanly (flushed and checkpointed, resumed by the next run) and the line
    says what it did so far; asked before it began, it does nothing."""
    started = time.perf_counter()
    if stop is not None and stop.requested:
        return summary_line(inst_id, Counters(), Counters(), 0.0)
    source: Any = ReplaySource(vault, inst_id, final=final, strict=strict)
    if progress is not None and progress.enabled:
        source = ProgressSource(source, progress)
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
    paths = VaultPaths.of(vault, inst_id)
    notices = [] if notices is None else notices
    async with engine:
        took = engine.took_over(inst_id)
        if took is not None:
            notices.append(takeover_notice(paths, took))
        before = msgspec.structs.replace(engine.assembler(inst_id).counters)
        with stop.stops(engine) if stop is not None else contextlib.nullcontext():
            await engine.run()
        after = engine.assembler(inst_id).counters
        tally = engine.run_tally(inst_id)
    verdict = rejects_verdict(paths, tally)  # after the engine closed: the rejects are durable
    if verdict is not None:
        notices.append(verdict)
    return summary_line(inst_id, before, after, time.perf_counter() - started)


class Stop:
    """Ends this process's replays early and cleanly when asked: each engine stops reading,
    flushes and checkpoints, and its summary line says what it did so far.

    Asked by SIGINT (Ctrl-C) in the command's process, by the parent's SIGTERM in a
    ``replay --all`` worker. :meth:`request` may be called from a signal handler.
    """

    def __init__(self) -> None:
        self.requested = False
        self._engines: set[Engine] = set()
        self._hooks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def request(self) -> None:
        if self.requested:
            return  # once: the engines are already stopping
        self.requested = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to stop
                loop.call_soon_threadsafe(self._stop_all)

    def _stop_all(self) -> None:
        for engine in list(self._engines):
            engine.stop()
        for hook in self._hooks:
            hook()

    def when_requested(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the loop when a stop is asked (at once if it was)."""
        self._loop = asyncio.get_running_loop()
        self._hooks.append(hook)
        if self.requested:
            hook()

    @contextlib.contextmanager
    def stops(self, engine: Engine) -> Iterator[None]:
        """While in the block, :meth:`request` stops ``engine`` (at once if already asked)."""
        self._loop = asyncio.get_running_loop()
        self._engines.add(engine)
        if self.requested:
            engine.stop()
        try:
            yield
        finally:
            self._engines.discard(engine)


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """While in the block, SIGINT calls ``callback`` on the running loop (in place of
    asyncio's cancelling the whole command). The main thread only: else nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Outcome(NamedTuple):
    """What one instrument's replay came to: its summary line (so far, when ``interrupted``),
    or the failure's message and exit status; and what else it must say (``notices``)."""

    line: str | None
    error: str | None = None
    code: int = 0
    interrupted: bool = False
    notices: tuple[str, ...] = ()


def _outcome(
    result: BaseException | str | _Outcome, inst_id: str, interrupted: bool, notices: list[str] | None = None
) -> _Outcome:
    said = tuple(notices or ())
    if isinstance(result, _Outcome):
        return result
    if isinstance(result, str):
        return _Outcome(result, code=int(interrupted), interrupted=interrupted, notices=said)
    if isinstance(result, (KeyboardInterrupt, asyncio.CancelledError)):
        # Never got going (a worker's task cancelled, say): it did nothing this run.
        line = summary_line(inst_id, Counters(), Counters(), 0.0)
        return _Outcome(line, code=1, interrupted=True, notices=said)
    message, code = describe(result, inst_id)
    return _Outcome(None, message, code, notices=said)


def _report(outcomes: list[_Outcome], interrupted: bool, quiet: bool) -> int:
    """Print each instrument's notices (stderr, not with ``-q``), then its line (stdout) or
    failure (stderr), in the order given; an interrupted run then says so once. Returns the
    exit status."""
    status = 0
    for outcome in outcomes:
        if not quiet:
            for text in outcome.notices:
                print(f"vstream: {text}", file=sys.stderr, flush=True)
        if outcome.line is not None:
            print_out(outcome.line)
        if outcome.error is not None:
            print(f"vstream: {outcome.error}", file=sys.stderr, flush=True)
            status = max(status, outcome.code)
    if interrupted or any(o.interrupted for o in outcomes):
        status = max(status, report(KeyboardInterrupt()))  # "vstream: interrupted", exit 1
    return status


async def _replay(args: argparse.Namespace) -> int:
    vault = vault_of(args)
    settings, given = settings_of(args)
    alerts = alert_rules_of(args)
    inst_ids: list[str] = list(dict.fromkeys(args.inst_ids or []))
    if args.all:
        inst_ids = discover(vault)
        await asyncio.to_thread(warn_passed_over, vault)  # nothing in raw/ passed over silently
        if not inst_ids:
            raise ConfigError(f"no instruments with trade files under {vault / 'raw' / 'okx'}")
    for inst_id in inst_ids:
        kind_of(inst_id)
    workers = min(len(inst_ids), os.cpu_count() or 1)
    stop = Stop()
    with _on_sigint(stop.request):  # Ctrl-C: every instrument stops cleanly and reports
        _interrupts.release()  # one held back since start-up is taken now
        if workers > 1:
            return await _replay_parallel(args, vault, settings, given, inst_ids, workers, stop, alerts)
        return await _replay_here(args, vault, settings, given, inst_ids, stop, alerts)


async def _replay_here(
    args: argparse.Namespace,
    vault: Path,
    settings: Settings,
    given: frozenset[str],
    inst_ids: list[str],
    stop: Stop,
    alerts: tuple[AlertRules | None, frozenset[str]] = (None, frozenset()),
) -> int:
    """The instruments side by side in this process."""
    progress = Progress(f"replay {len(inst_ids)} instrument(s)", enabled=False if args.quiet else None)
    notices: dict[str, list[str]] = {i: [] for i in inst_ids}
    try:
        results = await asyncio.gather(
            *(
                replay_one(
                    vault, i, settings, final=args.final, rebuild=args.rebuild, strict=args.strict,
                    progress=progress, given=given, notices=notices[i], stop=stop,
                    alerts=alerts[0], alerts_given=alerts[1],
                )
                for i in inst_ids
            ),
            return_exceptions=True,
        )
    finally:
        progress.close()
    outcomes = [_outcome(r, i, stop.requested, notices[i]) for i, r in zip(inst_ids, results, strict=True)]
    return _report(outcomes, stop.requested, args.quiet)


async def _replay_parallel(
    args: argparse.Namespace,
    vault: Path,
    settings: Settings,
    given: frozenset[str],
    inst_ids: list[str],
    workers: int,
    stop: Stop,
    alerts: tuple[AlertRules | None, frozenset[str]] = (None, frozenset()),
) -> int:
    """One worker process per instrument, at most ``workers`` at a time.

    Decoding is CPU-bound and holds the GIL, so threads would not help; instruments share
    nothing, so each worker's output is exactly what a run of that instrument alone writes.
    Workers are started with ``spawn`` (as on Windows): no event loop or lock is inherited.
    Results are printed in the order the instruments were given, with the usual exit codes.
    """
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
        with _children_start_deaf():  # the pool starts its workers as tasks are given
            futures = [
                loop.run_in_executor(
                    pool, _replay_worker, str(vault), i, settings, given, args.final,
                    args.rebuild, args.strict, alerts,
                )
                for i in inst_ids
            ]
        # Ctrl-C (now, or before the workers were there): each is told once, and reports.
        stop.when_requested(lambda: _stop_workers(pool))
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
    outcomes = [_outcome(r, i, stop.requested) for i, r in zip(inst_ids, results, strict=True)]
    return _report(outcomes, stop.requested, args.quiet)


@contextlib.contextmanager
def _children_start_deaf() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while the block starts worker processes.

    A child inherits the mask: a Ctrl-C, or the SIGTERM that :func:`_stop_workers` sends,
    that comes while it is still starting (Python loading, the pickled task arriving) waits
    until :func:`_worker_init` has its handling in place, instead of printing a
    KeyboardInterrupt traceback from the child or killing it (bpo-33613; multiprocessing
    starts its resource tracker the same way). Here, the signal is only held back for as
    long as the block lasts. POSIX only.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    # Started first, outside the block: it unblocks both signals after starting itself.
    resource_tracker.ensure_running()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


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


_progress_queue: Any = None
#: A worker's replays stop when the parent asks (SIGTERM; on Windows the console's Ctrl-C).
_worker_stop = Stop()


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
        signal.signal(signal.SIGTERM, lambda signum, frame: _worker_stop.request())
        # Both were blocked since the parent started this process (_children_start_deaf): a
        # SIGTERM that came meanwhile is taken now, a Ctrl-C dropped.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    else:
        # Windows has no SIGTERM to send: a console's Ctrl-C reaches every process on it.
        signal.signal(signal.SIGINT, lambda signum, frame: _worker_stop.request())
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if sys.platform != "win32":

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
) -> _Outcome:
    """Worker-process entry of ``replay``: its outcome (notices included), which the parent
    reports."""
    logging.basicConfig(level=logging.WARNING, format="vstream: %(message)s", stream=sys.stderr)
    notices: list[str] = []
    try:
        relay = _RelayProgress(_progress_queue) if _progress_queue is not None else None
        line = run_async(
            lambda: replay_one(
                Path(vault), inst_id, settings, final=final, rebuild=rebuild, strict=strict,
                progress=relay, given=given, notices=notices, stop=_worker_stop,
                alerts=alerts[0], alerts_given=alerts[1],
            )
        )
    except BaseException as exc:  # reported by the parent, like an in-process failure
        return _outcome(exc, inst_id, False, notices)
    return _outcome(line, inst_id, _worker_stop.requested, notices)
