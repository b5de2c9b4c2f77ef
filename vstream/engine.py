"""The async shell: sources -> bounded queue -> bar assembler -> sinks.

This module only wires things together. The bar logic lives in :mod:`vstream.assembler`,
reading in :mod:`vstream.sources`, writing in :mod:`vstream.sinks`, durability in
:mod:`vstream.state`. The engine never calls ``asyncio.run``, installs no signal handler and
leaves the event-loop policy alone, so it can live inside another program's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from .alerts.rules import AlertRules
from .assembler import Bar, BarAssembler, Counters
from .errors import ConfigError, SinkError, SourceError, StateError, VStreamError
from .instruments import Instrument, Kind, VaultPaths, load_cache, load_meta, resolve
from .kernel import MINUTE_MS
from .settings import SHAPE_FIELDS, Settings
from .sinks import Sink, SinkLike, as_sink
from .sinks.jsonl import JsonlSink
from .sources import Batch, Source
from .state import AlertLog, FilePos, InstrumentStore, RunTally, State
from .takeover import TakeOver

if TYPE_CHECKING:
    from .alerts.detect import Alert, AlertDetector

log = logging.getLogger("vstream")

T = TypeVar("T")
OverflowPolicy = Literal["drop_oldest", "drop_newest", "block"]


@dataclass(slots=True)
class SinkStats:
    """What happened to one user sink's bars."""

    name: str
    delivered: int = 0
    dropped: int = 0
    errors: int = 0
    buffered: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class EngineStats:
    """Counters a bot can read at any time (``engine.stats``)."""

    instruments: dict[str, Counters] = field(default_factory=dict)
    sinks: list[SinkStats] = field(default_factory=list)
    batches: int = 0
    checkpoints: int = 0
    queue_high_water: int = 0
    seconds: float = 0.0


class _SinkRunner:
    """Feeds one user sink from its own bounded buffer, in its own task.

    A slow sink fills only its own buffer; the overflow policy then decides what gives way,
    so the source and the other sinks never wait for it (unless ``block`` was chosen).
    """

    def __init__(
        self,
        sink: Sink,
        name: str,
        maxsize: int,
        policy: OverflowPolicy,
        fatal: bool,
        on_fatal: Callable[[BaseException], None],
        partial: bool = False,
    ) -> None:
        self.sink = sink
        self.stats = SinkStats(name)
        #: Also fed the open minute's bar in progress; every bar it gets carries ``final``.
        self.partial = partial
        self._maxsize = maxsize
        self._policy = policy
        self._fatal = fatal
        self._on_fatal = on_fatal
        self._items: deque[Bar] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"vstream-sink-{self.stats.name}"
        )

    async def offer(self, bar: Bar) -> None:
        items = self._items
        if len(items) >= self._maxsize:
            if self._policy == "block":
                while len(items) >= self._maxsize and not self._closing:
                    self._space.clear()
                    await self._space.wait()
            elif self._policy == "drop_oldest":
                items.popleft()
                self.stats.dropped += 1
            else:
                self.stats.dropped += 1
                return
        items.append(bar)
        self.stats.buffered = len(items)
        self._ready.set()

    async def _run(self) -> None:
        items = self._items
        while True:
            while not items:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
            bar = items.popleft()
            self.stats.buffered = len(items)
            self._space.set()
            try:
                await self.sink.write(bar)
                self.stats.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("sink %s failed on bar %s: %s", self.stats.name, bar.timestamp_utc, exc)
                if self._fatal:
                    self._on_fatal(SinkError(f"sink {self.stats.name} failed: {exc}"))
                    return

    async def close(self, grace_seconds: float) -> None:
        """Deliver what is buffered (within ``grace_seconds``), then close the sink."""
        self._closing = True
        self._ready.set()
        self._space.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), grace_seconds)
            except TimeoutError:
                self.task.cancel()
                self.stats.dropped += len(self._items)
                log.warning("sink %s did not drain in %.1fs", self.stats.name, grace_seconds)
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        try:
            await self.sink.aclose()
        except Exception as exc:
            self.stats.errors += 1
            log.error("sink %s failed to close: %s", self.stats.name, exc)


class _BarStream:
    """The sink behind :meth:`Engine.bars`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Bar | None] = asyncio.Queue()

    async def write(self, bar: Bar) -> None:
        await self.queue.put(bar)

    async def aclose(self) -> None:
        await self.queue.put(None)


@dataclass(slots=True)
class _Tally:
    """What one instrument's input held in this run, to tell a run that rejected (almost)
    everything it read (SPEC §7, "nothing silent")."""

    records: int = 0  # trades and skipped lines delivered
    rejected: int = 0  # lines with at least one reject
    first_error: str = ""
    last_key: tuple[str, int] | None = None
    start_lines: int | None = None  # lines consumed of the vault files before the run

    def add(self, batch: Batch) -> None:
        self.records += len(batch.trades) + batch.skipped
        for reject in batch.rejects:
            key = (reject.file, reject.line)
            if key != self.last_key:  # rejects come in line order: one line may hold several
                self.rejected += 1
                self.last_key = key
                if not self.first_error:
                    self.first_error = f"{reject.file} line {reject.line}: {reject.error}"

    def result(self, position: Any) -> RunTally:
        """The run so far, ``position`` being where its source stands now.

        The lines that held something are at most the rejected ones plus the records kept
        (a websocket envelope holds several), and at most the vault file lines consumed (blank
        ones included): the smaller of the two, exact for files of one trade per line.
        """
        lines = self.rejected + self.records
        consumed = _lines_of(position)
        if consumed is not None and self.start_lines is not None:
            lines = max(self.rejected, min(lines, consumed - self.start_lines))
        return RunTally(
            lines=lines, rejected=self.rejected, kept=self.records, first_error=self.first_error
        )


def _lines_of(position: Any) -> int | None:
    if isinstance(position, dict) and all(isinstance(p, FilePos) for p in position.values()):
        return sum(int(p.lines) for p in position.values())
    return None


@dataclass(slots=True)
class _Pipe:
    """One instrument's assembler and, in vault mode, its durable files."""

    instrument: Instrument
    assembler: BarAssembler
    store: InstrumentStore | None = None
    outputs: dict[str, JsonlSink] = field(default_factory=dict)
    rejects: JsonlSink | None = None
    position: Any = None
    state: State | None = None
    dirty: bool = False
    #: Contract facts of trade lines already reported as differing from the instrument's.
    odd_reported: set[tuple[float, bool]] = field(default_factory=set)
    tally: _Tally = field(default_factory=_Tally)
    #: With alert rules in force: the detector and the alerts file (vault mode).
    detector: AlertDetector | None = None
    alerts: JsonlSink | None = None

    @property
    def provisional(self) -> bool:
        """A swap or future converted only by its lines' own ctVal: a line without one stops
        the run, and nothing of the run is kept before it ends (SPEC §4)."""
        return self.instrument.ct_val is None and self.instrument.kind is not Kind.SPOT


#: Put in the batch queue by stop() to wake a consumer waiting on it.
_WAKE = object()


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Await to completion even if the caller is cancelled meanwhile; then re-raise that."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class Engine:
    """Runs sources through bar assemblers into sinks.

    ``sources`` deliver :class:`~vstream.sources.Batch` objects; one assembler per instrument
    turns them into :class:`~vstream.Bar` objects; every bar goes to each of ``sinks`` (objects
    with async ``write``/``aclose``, or plain sync/async callables), each fed from its own
    bounded buffer of ``sink_buffer`` bars with the ``sink_overflow`` policy when it falls
    behind (``drop_oldest`` by default; ``block`` makes a slow sink slow everything down).

    With ``vault`` set, each instrument's bars, rejects and state live in the vault (SPEC §2,
    §7): the engine locks the instrument, resumes from its state, appends bars to
    ``volume_1m.jsonl`` and checkpoints every ``checkpoint_interval`` seconds and at the end.
    The state stores the settings that shape the instrument's bars (thresholds, its ctVal,
    timeframes). Without ``settings`` they are taken from there (the defaults for a new
    instrument); with ``settings`` every one of them must equal the stored value, else
    :class:`ConfigError` names it (``rebuild=True`` starts over with the new ones). ``given``
    narrows that: only the :class:`Settings` fields it names count as chosen, the others come
    from the state. A ``ct_val`` mapping entry (or an ``instruments`` entry) counts as chosen for
    its instrument, a value from the instrument cache or the built-in table does not.

    ``partial_sinks`` also get, every ``partial_every`` seconds of ``clock``, each open
    minute's bar as it stands (``final`` false), and every finished bar with ``final`` true;
    ``engine.bars(partial=True)`` is such a stream. Bars in progress reach nothing else.

    ``alerts`` (vault mode) are the :class:`~vstream.alerts.AlertRules` to apply; each alert
    goes to the instrument's ``alerts.jsonl`` in the durability order of the bars. They are
    stored with the instrument's state: without ``alerts`` the stored rules (if any) apply;
    ``alerts_given`` narrows the given rules to the fields it names, the others staying as
    stored. ``on_alerts`` is called (no arguments, on the loop) after a checkpoint made new
    alerts durable: a deliverer in the same process wakes up on it.

    Use it as an async context manager, then ``await engine.run()`` or iterate
    ``engine.bars()``. ``engine.stop()`` ends a run cleanly; cancelling the task running it
    flushes and checkpoints too before the cancellation propagates.
    """

    def __init__(
        self,
        sources: Source | Sequence[Source],
        sinks: Iterable[SinkLike] = (),
        settings: Settings | None = None,
        *,
        vault: str | os.PathLike[str] | None = None,
        rebuild: bool = False,
        given: Iterable[str] | None = None,
        instruments: Mapping[str, Instrument] | None = None,
        queue_size: int = 8,
        checkpoint_interval: float = 5.0,
        sink_buffer: int = 10_000,
        sink_overflow: OverflowPolicy = "drop_oldest",
        sink_errors: Literal["log", "raise"] = "log",
        sink_close_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        partial_sinks: Iterable[SinkLike] = (),
        partial_every: float = 1.0,
        alerts: AlertRules | None = None,
        alerts_given: Iterable[str] | None = None,
        on_alerts: Callable[[], None] | None = None,
    ) -> None:
        self.sources: list[Source] = [sources] if isinstance(sources, Source) else list(sources)
        if not self.sources:
            raise ConfigError("an engine needs at least one source")
        for source in self.sources:
            if not isinstance(source, Source):
                raise ConfigError(f"{source!r} is not a source (see vstream.sources.Source)")
        if queue_size < 1 or sink_buffer < 1:
            raise ConfigError("queue_size and sink_buffer must be >= 1")
        if sink_overflow not in ("drop_oldest", "drop_newest", "block"):
            raise ConfigError(f"unknown sink_overflow policy {sink_overflow!r}")
        if sink_errors not in ("log", "raise"):
            raise ConfigError(f"sink_errors must be 'log' or 'raise', not {sink_errors!r}")
        if not (partial_every > 0):
            raise ConfigError(f"partial_every must be > 0 seconds, got {partial_every!r}")
        self.settings = settings if settings is not None else Settings()
        if given is None:
            chosen = set(Settings.__struct_fields__) if settings is not None else set()
        else:
            chosen = set(given)
            unknown = sorted(chosen - set(Settings.__struct_fields__))
            if unknown:
                raise ConfigError(f"unknown setting(s) in given: {', '.join(unknown)}")
        self._given = frozenset(chosen)
        # Settings passed with no ``given``: every value is chosen, a cached ctVal included.
        self._all_given = given is None and settings is not None
        self.vault = Path(vault) if vault is not None else None
        if alerts is not None and self.vault is None:
            raise ConfigError("alerts are written to the vault: give the engine a vault")
        self._alert_rules = alerts
        self._alerts_given = None if alerts_given is None else frozenset(alerts_given)
        self._on_alerts = on_alerts
        #: Every source ended by itself: the input is caught up with (history ends here).
        self._caught_up = False
        #: A live instrument made alerts: checkpoint after this batch, not at the interval.
        self._urgent = False
        self.rebuild = rebuild
        self._instruments = dict(instruments or {})
        self._queue_size = queue_size
        self._checkpoint_interval = checkpoint_interval
        self._sink_buffer = sink_buffer
        self._sink_overflow: OverflowPolicy = sink_overflow
        self._sink_fatal = sink_errors == "raise"
        self._sink_close_timeout = sink_close_timeout
        self._clock = clock
        self._user_sinks: list[Sink] = [as_sink(s) for s in sinks]
        self._partial_sinks: list[Sink] = [as_sink(s) for s in partial_sinks]
        self._partial_every = partial_every
        self._partial_task: asyncio.Task[None] | None = None
        self._runners: list[_SinkRunner] = []
        self._pipes: dict[str, _Pipe] = {}
        self._opened = False
        self._closed = False
        self._running = False
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[Batch | BaseException | object | None] | None = None
        self._failure: BaseException | None = None
        self._failure_raised = False
        self._broken = False  # a checkpoint failed: durable files are no longer trusted
        self._ckpt_lock = asyncio.Lock()
        self._started = 0.0
        self._batches = 0
        self._checkpoints = 0
        self._high_water = 0
        self._live = any(getattr(s, "live", False) for s in self.sources)
        inst_ids = [i for s in self.sources for i in s.inst_ids]
        if len(set(inst_ids)) != len(inst_ids):
            raise ConfigError("two sources deliver the same instrument")
        self.inst_ids: tuple[str, ...] = tuple(inst_ids)
        self._source_of: dict[str, Source] = {i: s for s in self.sources for i in s.inst_ids}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Resolve instruments, lock and load vault state, resume sources, start sink tasks."""
        if self._opened:
            return
        self._opened = True
        try:
            # Before anything is locked or created: a source with nothing to read (a typo in
            # a vault or instrument) must not leave an empty instrument behind in the vault.
            for source in self.sources:
                check = getattr(source, "check_input", None)
                if check is not None:
                    await asyncio.to_thread(check)
            await asyncio.to_thread(self._open_pipes)
        except BaseException:
            self._release()
            raise
        for source in self.sources:
            source.resume({i: self._pipes[i].position for i in source.inst_ids})
        partial = [False] * len(self._user_sinks) + [True] * len(self._partial_sinks)
        for index, sink in enumerate([*self._user_sinks, *self._partial_sinks]):
            runner = _SinkRunner(
                sink,
                f"{index}:{type(sink).__name__}",
                self._sink_buffer,
                self._sink_overflow,
                self._sink_fatal,
                self._fail,
                partial[index],
            )
            runner.start()
            self._runners.append(runner)

    def _open_pipes(self) -> None:
        cache = load_cache(self.vault) if self.vault is not None else None
        for inst_id in self.inst_ids:
            explicit = self._instruments.get(inst_id)
            ct_chosen = (
                explicit is not None
                or self._all_given
                or ("ct_val" in self._given and inst_id in self.settings.ct_val)
            )
            # Trade lines that carry their own ctVal (exporter lines) convert themselves: the
            # instrument then needs none, until a line without one comes (SPEC §4).
            carries = getattr(self._source_of[inst_id], "carries_contracts", None)
            own = bool(carries(inst_id)) if carries is not None else False
            meta = load_meta(self.vault, inst_id) if self.vault is not None else None
            # A ctVal nobody gave may be in the state: the store raises if it is not.
            instrument = explicit or resolve(
                inst_id,
                self.settings.ct_val,
                cache,
                required=(self.vault is None or ct_chosen) and not own,
                meta=meta,
            )
            if self.vault is None:
                self._pipes[inst_id] = _Pipe(instrument, BarAssembler(instrument, self.settings))
                continue
            paths = VaultPaths.of(self.vault, inst_id)
            given = self._given & set(SHAPE_FIELDS) | ({"ct_val"} if ct_chosen else set())
            if self._all_given or "footprint_tick" in self._given or (
                "footprint" in self._given and inst_id in self.settings.footprint
            ):
                given |= {"footprint"}
            store = InstrumentStore(
                paths, self.settings.shape(instrument.ct_val, inst_id), given=given, own_contracts=own
            )
            state = store.open(rebuild=self.rebuild)
            try:
                shape = store.shape
                instrument = dataclasses.replace(instrument, ct_val=shape.ct_val)
                pipe = _Pipe(instrument, BarAssembler(instrument, self.settings.with_shape(shape, inst_id)))
                pipe.assembler.restore(state.assembler)
            except BaseException:
                store.close()
                raise
            self._pipes[inst_id] = pipe
            pipe.state = state
            pipe.store = store
            pipe.position = state.files or state.position
            pipe.tally.start_lines = _lines_of(state.files)
            pipe.outputs = {
                tf: JsonlSink(paths.output(tf), autoflush=False) for tf in shape.timeframes
            }
            pipe.rejects = JsonlSink(paths.rejects, autoflush=False)
            for note in store.notes:
                log.warning("%s", note)
            self._open_alerts(pipe, state, paths)

    def _open_alerts(self, pipe: _Pipe, state: State, paths: VaultPaths) -> None:
        """Settle the instrument's alert rules (given over stored) and start its detector."""
        if self._alert_rules is None and (state.alerts is None or state.alerts.rules is None):
            return  # no rule ever: nothing of alerts is loaded
        from .alerts.detect import AlertDetector, DetectorState

        inst_id = pipe.instrument.inst_id
        alert_log = state.alerts
        stored: AlertRules | None = None
        if alert_log is not None and alert_log.rules is not None:
            try:
                stored = msgspec.convert(alert_log.rules, AlertRules)
            except (msgspec.ValidationError, ConfigError) as exc:
                if self._alert_rules is None:
                    raise StateError(
                        f"{inst_id}: the alert rules stored in {paths.state} are unreadable ({exc}); "
                        f"give them again (--config with [alerts])"
                    ) from exc
        rules = stored
        if self._alert_rules is not None:
            given = self._alerts_given
            rules = (
                self._alert_rules
                if given is None
                else (stored or AlertRules()).overlay(
                    {f: getattr(self._alert_rules, f) for f in given}
                )
            )
            if stored is not None and stored != rules:
                log.warning(
                    "%s: alert rules changed (%s): applied from the next trade on",
                    inst_id,
                    "; ".join(stored.differences(rules)),
                )
                pipe.dirty = True
        if rules is None:
            return
        if alert_log is None:
            alert_log = AlertLog()
        if not alert_log.generation:
            # A new alerts file. Made from history (a first run or a rebuild, until a run
            # catches up with the input) unless live: those alerts are never delivered.
            alert_log.generation = os.urandom(8).hex()
            fresh = not state.files and state.position is None and state.output_length == 0
            alert_log.catching_up = fresh and not self._realtime(inst_id)
            alert_log.history = state.alerts_length
            pipe.dirty = True
        detector_state = None
        if alert_log.detector is not None:
            try:
                detector_state = msgspec.convert(alert_log.detector, DetectorState)
            except msgspec.ValidationError as exc:
                raise StateError(
                    f"{inst_id}: the alert detector's state in {paths.state} is unreadable ({exc}); "
                    f"run again with --rebuild to start {inst_id} over"
                ) from exc
        alert_log.rules = msgspec.to_builtins(rules)
        state.alerts = alert_log
        pipe.detector = AlertDetector(pipe.instrument, rules, detector_state)
        pipe.assembler.watch(rules.watch_usd())
        pipe.alerts = JsonlSink(paths.alerts, autoflush=False)

    def _release(self) -> None:
        for pipe in self._pipes.values():
            if pipe.store is not None:
                pipe.store.close()

    async def aclose(self) -> None:
        """Stop, flush, checkpoint, close sinks and release locks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await _shielded(self._finish())

    async def _finish(self) -> None:
        error: BaseException | None = None
        for source in self.sources:
            try:
                await source.aclose()
            except Exception as exc:
                log.error("closing source %r failed: %s", source, exc)
        try:
            if self._opened and not self._broken:
                await self.checkpoint()
        except BaseException as exc:
            error = exc
        for runner in self._runners:
            await runner.close(self._sink_close_timeout)
        for pipe in self._pipes.values():
            for sink in (*pipe.outputs.values(), pipe.rejects, pipe.alerts):
                if sink is not None:
                    sink.discard()  # not checkpointed: the next run recomputes them
                    with contextlib.suppress(SinkError):
                        await sink.aclose()
        self._release()
        if error is not None:
            raise error
        self._raise_failure()

    def stop(self) -> None:
        """Ask a running engine to end cleanly: stop reading, flush, checkpoint."""
        self._stop.set()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        # A consumer waiting on an empty queue must notice the stop: hand it a wake-up
        # item. (With items queued it is not waiting: it checks the stop after each batch.)
        queue = self._queue
        if queue is not None and queue.empty():
            queue.put_nowait(_WAKE)

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> EngineStats:
        """Run until every source is exhausted or :meth:`stop` is called; return the stats."""
        if self._running:
            raise VStreamError("this engine is already running")
        if self._closed:
            raise VStreamError("this engine is closed")
        owns = not self._opened
        if owns:
            await self.open()
        self._running = True
        self._started = time.perf_counter()
        queue: asyncio.Queue[Batch | BaseException | object | None] = asyncio.Queue(self._queue_size)
        self._queue = queue
        tasks = [
            asyncio.create_task(self._pump(source, queue), name=f"vstream-source-{index}")
            for index, source in enumerate(self.sources)
        ]
        silent = self._silent_pipes()
        now = self._clock()
        for pipe in silent:
            assert pipe.detector is not None
            pipe.detector.start(now)
        watcher = asyncio.create_task(self._watch_silence(silent), name="vstream-silence") if silent else None
        ticker = asyncio.create_task(self._tick()) if self._live else None
        self._start_partials()
        try:
            await self._consume(queue, len(tasks))
        finally:
            for task in tasks:
                task.cancel()
            if ticker is not None:
                ticker.cancel()
            if watcher is not None:
                watcher.cancel()
                tasks.append(watcher)
            if self._partial_task is not None:
                self._partial_task.cancel()
                tasks.append(self._partial_task)
                self._partial_task = None
            self._queue = None
            await _shielded(self._settle(tasks, ticker, owns))
        self._raise_failure()
        return self.stats

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise failure

    async def _settle(
        self, tasks: list[asyncio.Task[None]], ticker: asyncio.Task[None] | None, owns: bool
    ) -> None:
        await asyncio.gather(*tasks, *(t for t in [ticker] if t is not None), return_exceptions=True)
        if self._live:
            for pipe, bars in self._close_due():
                await self._emit(pipe, bars)
        self._running = False
        if owns:
            await self.aclose()
        elif not self._broken:
            await self.checkpoint()

    async def _pump(self, source: Source, queue: asyncio.Queue[Batch | BaseException | object | None]) -> None:
        try:
            async for batch in source:
                await queue.put(batch)
        except asyncio.CancelledError:
            raise
        except VStreamError as exc:
            await queue.put(exc)
            return
        except Exception as exc:
            await queue.put(SourceError(f"source {source!r} failed: {exc}"))
            return
        await queue.put(None)

    async def _consume(
        self, queue: asyncio.Queue[Batch | BaseException | object | None], active: int
    ) -> None:
        last_checkpoint = self._clock()
        # One plain get per batch (stop() wakes a waiting get with _WAKE): waiting on the
        # stop event beside it cost a task and a wait per batch, 2-3 % of a replay.
        while active and not self._stop.is_set():
            item = await queue.get()
            if item is None:
                active -= 1
                if not active and not self._stop.is_set():
                    self._caught_up = True
                    for pipe in self._pipes.values():
                        if pipe.state is not None and pipe.state.alerts is not None and pipe.state.alerts.catching_up:
                            pipe.dirty = True  # the checkpoint to come ends the history
                continue
            if isinstance(item, BaseException):
                raise item
            if not isinstance(item, Batch):
                continue  # _WAKE: the loop condition sees the stop
            self._high_water = max(self._high_water, queue.qsize() + 1)
            await self._handle(item)
            if self._stop.is_set():
                break
            now = self._clock()
            if self._urgent or now - last_checkpoint >= self._checkpoint_interval:
                self._urgent = False
                await self.checkpoint(periodic=True)
                last_checkpoint = now

    async def _handle(self, batch: Batch) -> None:
        pipe = self._pipes.get(batch.inst_id)
        if pipe is None:
            raise SourceError(f"a source delivered {batch.inst_id}, which it did not announce")
        self._batches += 1
        assembler = pipe.assembler
        detector = pipe.detector
        bars = assembler.close_due(batch.now_ms) if batch.now_ms is not None else []
        if detector is not None and bars:
            self._alert(pipe, detector.bars(bars))
        if batch.gap:
            assembler.mark_gap()
        if batch.trades:
            try:
                fed = assembler.feed(batch.trades)
            except ConfigError:
                # A trade with no contract value to convert it: nothing of this run is kept.
                self._broken = True
                raise
            if detector is not None:
                detector.heard(batch.trades[-1], self._clock())
                self._alert(pipe, detector.feed(assembler.big_trades, fed))
            bars += fed
            odd = assembler.odd_contracts()
            if odd:
                self._report_odd(pipe, odd)
        pipe.tally.add(batch)
        counters = assembler.counters
        if batch.rejects:
            counters.rejects += len(batch.rejects)
            if pipe.rejects is not None:
                pipe.rejects.buffer(batch.rejects)
        counters.skipped += batch.skipped
        if batch.end:
            closed = assembler.close()
            if detector is not None and closed:
                self._alert(pipe, detector.bars(closed))
            bars += closed
        if batch.position is not None:
            pipe.position = batch.position
        pipe.dirty = True
        if bars:
            await self._emit(pipe, bars)

    def _realtime(self, inst_id: str) -> bool:
        """The instrument's source delivers trades as they happen (live)."""
        source = self._source_of[inst_id]
        return bool(getattr(source, "realtime", False) or getattr(source, "live", False))

    def _alert(self, pipe: _Pipe, alerts: list[Alert]) -> None:
        if alerts and pipe.alerts is not None:
            pipe.alerts.buffer(alerts)
            if self._realtime(pipe.instrument.inst_id):
                # Live: an alert is worth a checkpoint of its own (it is delivered once
                # durable), a quiet market may bring no batch for long. Rare: big trades.
                self._urgent = True

    def _report_odd(self, pipe: _Pipe, odd: list[tuple[float, bool]]) -> None:
        """Say once per run what contract facts trade lines carry where they differ from the
        instrument's (they still convert their own trades, SPEC §4)."""
        inst = pipe.instrument
        mine = f"{inst.ct_val!r} ({'inverse' if inst.inverse else 'linear'})"
        for ct, inverse in odd:
            if (ct, inverse) in pipe.odd_reported:
                continue
            pipe.odd_reported.add((ct, inverse))
            log.warning(
                "%s: trade lines carry ctVal %r (%s) where the instrument's is %s; each such "
                "trade is converted with its line's own",
                inst.inst_id,
                ct,
                "inverse" if inverse else "linear",
                mine,
            )

    async def _emit(self, pipe: _Pipe, bars: list[Bar]) -> None:
        if pipe.outputs:
            by_tf: dict[str, list[Bar]] = {}
            for bar in bars:
                tf = bar.timeframe if isinstance(bar.timeframe, str) else "1m"
                by_tf.setdefault(tf, []).append(bar)
            for tf, group in by_tf.items():
                pipe.outputs[tf].buffer(group)
        for runner in self._runners:
            for bar in bars:
                await runner.offer(msgspec.structs.replace(bar, final=True) if runner.partial else bar)

    def _start_partials(self) -> None:
        if self._partial_task is None and self._running and any(r.partial for r in self._runners):
            self._partial_task = asyncio.create_task(self._partials(), name="vstream-partials")

    async def _partials(self) -> None:
        """Every ``partial_every`` seconds of the engine's clock, hand each instrument's open
        minute, as it stands, to the sinks that asked for bars in progress."""
        due = self._clock() + self._partial_every
        while True:
            # Short sleeps, so a clock a test moves is followed.
            await asyncio.sleep(max(0.0, min(due - self._clock(), 0.25)))
            now = self._clock()
            if now < due:
                continue
            due += self._partial_every
            if due <= now:  # the clock jumped (or the loop was held up): no burst to catch up
                due = now + self._partial_every
            # Live: a minute already due to close on the clock is not shown as forming.
            now_ms = int(now * 1000) if self._live else None
            for pipe in self._pipes.values():
                bar = pipe.assembler.partial(now_ms)
                if bar is None:
                    continue
                for runner in self._runners:
                    if runner.partial:
                        await runner.offer(bar)

    def _close_due(self) -> list[tuple[_Pipe, list[Bar]]]:
        now_ms = int(self._clock() * 1000)
        closed = []
        for pipe in self._pipes.values():
            bars = pipe.assembler.close_due(now_ms)
            if bars:
                pipe.dirty = True
                closed.append((pipe, bars))
                if pipe.detector is not None:
                    self._alert(pipe, pipe.detector.bars(bars))
        return closed

    def _silent_pipes(self) -> list[_Pipe]:
        """Live instruments whose alert rules watch for silence."""
        return [
            p for i, p in self._pipes.items()
            if p.detector is not None and p.detector.rules.enabled and p.detector.rules.silence_seconds > 0
            and self._realtime(i)
        ]  # fmt: skip

    async def _watch_silence(self, pipes: list[_Pipe]) -> None:
        """Live: a silence alert for each instrument quiet for too long, made durable at once."""
        while True:
            # Short sleeps, so a clock a test moves is followed.
            await asyncio.sleep(0.25)
            if self._silences(pipes):
                await _shielded(self.checkpoint())

    def _silences(self, pipes: list[_Pipe]) -> bool:
        now = self._clock()
        found = False
        for pipe in pipes:
            if pipe.detector is not None:
                alerts = pipe.detector.silence(now)
                if alerts:
                    self._alert(pipe, alerts)
                    pipe.dirty = found = True
        return found

    async def _tick(self) -> None:
        """Live mode: finish each minute on the wall clock, ``grace`` after it ends."""
        grace = self.settings.grace
        while True:
            now = self._clock()
            next_minute = (int(now * 1000) // MINUTE_MS + 1) * MINUTE_MS / 1000
            # Wake at the earliest deadline, but often enough to follow a clock a test moves.
            await asyncio.sleep(max(0.0, min(next_minute + grace - now, 0.25)))
            # Shielded: a stop cancels this task, and a minute closed here but cut off before
            # its bar is written (and checkpointed) would be lost to a live session.
            await _shielded(self._close_on_clock())

    async def _close_on_clock(self) -> None:
        closed = self._close_due()
        for pipe, bars in closed:
            await self._emit(pipe, bars)
        if closed:
            await self.checkpoint()

    # -- durability ------------------------------------------------------------------------

    async def checkpoint(self, *, periodic: bool = False) -> None:
        """Make bars durable, then save each instrument's state atomically (SPEC §7).

        ``periodic``: a checkpoint on the way, which leaves out instruments whose run may
        still be refused (:attr:`_Pipe.provisional`); the one at the end takes them too."""
        if self._broken:
            raise SinkError("an earlier checkpoint failed; this engine writes no more")
        async with self._ckpt_lock:
            for pipe in self._pipes.values():
                if pipe.store is None or pipe.state is None:
                    continue
                if periodic and pipe.provisional:
                    continue
                if not pipe.dirty:
                    # Nothing taken since the state on disk (opening saved or loaded it):
                    # rewriting it would only move its clock, and a refused run writes nothing.
                    continue
                # Snapshot synchronously: what is written below is exactly what it describes.
                position = pipe.position
                by_file = isinstance(position, dict) and all(
                    isinstance(p, FilePos) for p in position.values()
                )
                state = msgspec.structs.replace(
                    pipe.state,
                    files=dict(position) if by_file else {},
                    position=None if by_file else position,
                    assembler=pipe.assembler.snapshot(),
                )
                tally = pipe.tally.result(position)
                if tally.lines:  # a run that read nothing keeps the last one's
                    state.last_run = tally
                pending = {tf: sink.take() for tf, sink in pipe.outputs.items()}
                assert pipe.rejects is not None
                rejected = pipe.rejects.take()
                alerted = pipe.alerts.take() if pipe.alerts is not None else b""
                if pipe.state.alerts is not None:
                    detector = pipe.detector
                    state.alerts = msgspec.structs.replace(
                        pipe.state.alerts,
                        detector=msgspec.to_builtins(detector.snapshot())
                        if detector is not None
                        else pipe.state.alerts.detector,
                    )
                pipe.dirty = False
                try:
                    lengths = {tf: await pipe.outputs[tf].append(data) for tf, data in pending.items()}
                    state.output_length = lengths.pop("1m")
                    state.timeframe_lengths = lengths
                    state.rejects_length = await pipe.rejects.append(rejected)
                    if alerted:
                        assert pipe.alerts is not None
                        state.alerts_length = await pipe.alerts.append(alerted)
                    if state.alerts is not None and state.alerts.catching_up:
                        # Made from history: the deliverers start after it. The run that
                        # caught up with the input ends the history.
                        state.alerts.history = state.alerts_length
                        state.alerts.catching_up = not self._caught_up
                    # A recording source's raw lines must be durable before a state points at them.
                    sync = getattr(self._source_of.get(pipe.instrument.inst_id), "sync", None)
                    if sync is not None:
                        await sync()
                    await asyncio.to_thread(pipe.store.commit, state)
                except BaseException:
                    # What reached the files past the last state is cut back by the next run.
                    self._broken = True
                    raise
                pipe.state = state
                self._checkpoints += 1
                if alerted and self._on_alerts is not None:
                    try:
                        self._on_alerts()
                    except Exception as exc:  # a listener never stops the bars
                        log.error("on_alerts failed: %s", exc)

    # -- observing -------------------------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        return EngineStats(
            instruments={i: msgspec.structs.replace(p.assembler.counters) for i, p in self._pipes.items()},
            sinks=[SinkStats(**_fields(r.stats)) for r in self._runners],
            batches=self._batches,
            checkpoints=self._checkpoints,
            queue_high_water=self._high_water,
            seconds=(time.perf_counter() - self._started) if self._started else 0.0,
        )

    def assembler(self, inst_id: str) -> BarAssembler:
        """The live assembler of one instrument (after :meth:`open`)."""
        return self._pipes[inst_id].assembler

    def run_tally(self, inst_id: str) -> RunTally:
        """How many input lines of one instrument this engine read and rejected so far."""
        pipe = self._pipes[inst_id]
        return pipe.tally.result(pipe.position)

    def took_over(self, inst_id: str) -> TakeOver | None:
        """Where opening moved ``volume_analyzer.py``'s files of one instrument, if it did."""
        store = self._pipes[inst_id].store
        return store.took_over if store is not None else None

    async def bars(self, partial: bool = False) -> AsyncIterator[Bar]:
        """Iterate over bars as they are finished, running the engine if nobody else does.

        With ``partial``, every ``partial_every`` seconds the open minute's bar as it stands
        comes too, with ``final`` false; finished bars then carry ``final`` true. Bars in
        progress never reach the vault or the other sinks.

        Must be called before the engine starts running (bars finished earlier are not seen).
        """
        stream = _BarStream()
        if not self._opened:
            await self.open()
        runner = _SinkRunner(stream, "bars()", self._sink_buffer, "block", False, self._fail, partial)
        runner.start()
        self._runners.append(runner)
        self._start_partials()
        task = None if self._running else asyncio.create_task(self.run())
        try:
            while True:
                getter = asyncio.ensure_future(stream.queue.get())
                waiters: set[asyncio.Future[Any]] = {getter}
                if task is not None:
                    waiters.add(task)
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    bar = getter.result()
                    if bar is None:
                        break
                    yield bar
                    continue
                getter.cancel()
                # The run ended: deliver what is still queued, then surface its outcome.
                while not stream.queue.empty():
                    item = stream.queue.get_nowait()
                    if item is not None:
                        yield item
                break
            if task is not None:
                await task
        finally:
            if task is not None and not task.done():
                self.stop()
                await _shielded(asyncio.gather(task, return_exceptions=True))


def _fields(stats: SinkStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in SinkStats.__slots__}
