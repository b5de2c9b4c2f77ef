"""The OKX websocket source: live trades, with keepalive, reconnects, gap filling and recording.

The source is three parts, each readable on its own:

* :mod:`vstream.sources.okx_protocol` — the core, without I/O: frames, fills, connections
  coming and going and the wall-clock time in; batches, fills to run and lines to record out.
  Trade-id frontier, gaps, held-back records, merging of filled fills and the wall-clock closes
  of minutes live there (see its docs), table-tested without sockets.
* :mod:`vstream.sources.okx_recorder` — the ``--record`` raw-file writer.
* this module — the thin asyncio shell: websocket connections, REST fills
  (:mod:`vstream.okx_rest`), and the one loop that feeds the protocol in the order things
  happened and carries out its answers.

What the spec leaves open, decided here:

* **Connections.** One websocket carries many instruments; the instruments are split over
  several connections only when one subscribe request would pass OKX's 64 KB limit. Each
  connection keeps itself alive the OKX way (text ``ping`` after ``ping_interval`` seconds of
  silence, reconnect when no answer comes within ``pong_timeout``) and reconnects with capped,
  jittered exponential backoff, at most ``max_connects_per_second`` attempts per second over
  all connections. On the ``64008`` service-upgrade notice the replacement connection is opened
  and subscribed first, then the old one is closed.
* **One order.** Connections and fills post what they met to one bounded queue; only the
  iteration feeds the protocol, so its state changes in the order events were queued. A fill
  retries (with backoff) until it has every missing id or ``gap_timeout`` seconds (of the
  event loop's monotonic clock) have passed, then reports what it has.
* **Wall-clock closing in-band.** The protocol decides when a minute is closed on the wall
  clock and the source yields an empty batch with ``now_ms`` at that point of the stream. Hence
  ``live = False``: the engine's own ticker must not race these closes.
* **Recording** (``record_vault``). The lines of a batch are appended and flushed before the
  batch is yielded, and its position is the recorder's after them (see the recorder's docs).
  Each instrument is recorded in the line format its files hold (``record_format`` chooses;
  :func:`vstream.recording.choose_format`): as the OKX JSON that arrived, or as the vault
  exporter's lines (:class:`vstream.recording.RecordStyle`), whose trades are delivered as a
  replay reads them back (one fill each: ``trades-all`` keeps fills exact). The vault's
  instrument file ``meta/okx/instruments/{INSTID}.json`` is written, in the exporter's shape,
  where there is none: from the whole OKX row in the instrument cache, else from OKX (one
  REST call); if neither has it, the recording goes on without it, with a warning.
* **Resume.** When recording, the raw files are first caught up from the saved position with
  the replay reader; a torn last line is cut off. The newest recorded trade id then becomes
  the frontier and the first connection fills what was missed while nothing ran (if it is not
  older than ``backfill_limit`` seconds; otherwise the open minute is flagged as a gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from ..errors import ConfigError, SourceError, VStreamError
from ..formats import FORMATS
from ..instruments import Kind, kind_of, meta_path
from ..okx_rest import DEFAULT_REST_URL, OkxRest
from ..recording import cached_row, choose_format, record_style, write_meta
from ..state import FilePos
from ..trades import TRADE_CHANNELS
from . import Batch
from .okx_protocol import (
    CancelFill,
    Emit,
    ErrorFrame,
    InstState,
    OkxProtocol,
    OkxStats,
    Output,
    Push,
    StartFill,
    Subscribed,
    UpgradeNotice,
    fill_complete,
)
from .okx_recorder import Recorder
from .replay import ReplaySource

log = logging.getLogger("vstream")

PUBLIC_WS_URL: Final = "wss://ws.okx.com:8443/ws/v5/public"
BUSINESS_WS_URL: Final = "wss://ws.okx.com:8443/ws/v5/business"
CHANNELS: Final = TRADE_CHANNELS
#: OKX refuses a subscribe request longer than this; stay clearly below it.
MAX_SUBSCRIBE_BYTES: Final = 64 * 1024 - 512


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * factor**(n-1)`` capped at ``maximum``, minus up to
    ``jitter`` (a fraction) of it at random, for the n-th failed attempt in a row."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial and self.factor >= 1):
            raise ConfigError("backoff needs 0 <= initial <= maximum and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("backoff jitter must be between 0 and 1")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the next attempt after ``failures`` failures in a row."""
        if failures <= 0:
            return 0.0
        base = min(self.maximum, self.initial * self.factor ** min(failures - 1, 60))
        return base * (1.0 - self.jitter * rng.random())


# ------------------------------------------------------------------ internal events


@dataclass(slots=True)
class _LinkEv:
    inst_ids: tuple[str, ...]
    up: bool


@dataclass(slots=True)
class _FillEv:
    inst_id: str
    generation: int
    rows: dict[int, msgspec.Raw]
    complete: bool
    error: str = ""


@dataclass(slots=True)
class _FatalEv:
    error: BaseException


@dataclass(slots=True)
class _StopEv:
    pass


_Event = Push | _LinkEv | _FillEv | _FatalEv | _StopEv


class _Dead(Exception):
    """The connection is no longer usable (closed, silent, refused)."""


class OkxSource:
    """Live trades of ``inst_ids`` from the OKX public websocket, as :class:`Batch` objects.

    Args:
        inst_ids: instruments to subscribe (validated; at least one).
        channel: ``"trades"`` (public path, merged records) or ``"trades-all"`` (business
            path, one record per fill).
        ws_url: websocket URL (default: OKX's public or business URL for ``channel``).
        rest_url: base URL of the REST API (default ``https://www.okx.com``).
        record_vault: when set, record every delivered trade into this vault's raw files and
            report positions in the replay format (see module docs).
        record_format: ``"okx"`` or ``"exporter"``: the line format to record in; None: the
            one each instrument's files hold (see :func:`vstream.recording.choose_format`).
        ct_val: contract value overrides by instrument (``Settings.ct_val``): the ctVal of
            exporter lines of an instrument with no instrument file in the vault.
        grace: seconds after a minute ends before it is closed on the wall clock; pass the
            engine's ``Settings.grace``.
        ping_interval: seconds of silence before sending ``ping``.
        pong_timeout: seconds to wait for an answer to ``ping`` before reconnecting.
        subscribe_timeout: seconds to wait for all subscribe acks of a connection.
        open_timeout: seconds for the websocket handshake.
        backoff: reconnect delay policy.
        max_connects_per_second: connection attempts allowed per second (OKX: 3).
        gap_timeout: seconds a gap may stay unfilled before its minutes are emitted flagged.
        max_held: records held back per instrument before a gap is given up early.
        backfill_limit: after a restart with a recording, the missed trades are fetched only
            if the last recorded one is at most this many seconds old.
        clock: wall clock in seconds (minute closing, far-future check).
        rest: a ready :class:`~vstream.okx_rest.OkxRest` to use instead of one for ``rest_url``.
        seed: seed of the backoff jitter (tests).

    The constructor validates and does no I/O. Stop it with :meth:`stop` (the iteration then
    closes what is due on the wall clock and ends) or by cancelling; always :meth:`aclose`.
    """

    #: The engine's wall-clock ticker is not used: this source closes minutes in-band
    #: (``Batch.now_ms``), ordered with its trades.
    live = False
    #: Trades as they happen: alerts from them are new (never history), silence is watched.
    realtime = True

    def __init__(
        self,
        inst_ids: Sequence[str],
        *,
        channel: Literal["trades", "trades-all"] | str = "trades",
        ws_url: str | None = None,
        rest_url: str | None = None,
        record_vault: str | os.PathLike[str] | None = None,
        record_format: str | None = None,
        ct_val: Mapping[str, float] | None = None,
        grace: float = 2.0,
        ping_interval: float = 20.0,
        pong_timeout: float = 5.0,
        subscribe_timeout: float = 10.0,
        open_timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_connects_per_second: int = 3,
        gap_timeout: float = 60.0,
        max_held: int = 500_000,
        backfill_limit: float = 3600.0,
        clock: Callable[[], float] = time.time,
        rest: OkxRest | None = None,
        seed: int | None = None,
    ) -> None:
        ids = list(dict.fromkeys(inst_ids))
        if not ids:
            raise ConfigError("OkxSource needs at least one instrument")
        for inst in ids:
            kind_of(inst)
        if channel not in CHANNELS:
            raise ConfigError(f"channel must be 'trades' or 'trades-all', not {channel!r}")
        if record_format is not None and record_format not in FORMATS:
            raise ConfigError(f"record_format must be 'okx' or 'exporter', not {record_format!r}")
        if ws_url is not None and not ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"websocket URL must start with ws:// or wss://, got {ws_url!r}")
        for name, value in (
            ("grace", grace),
            ("ping_interval", ping_interval),
            ("pong_timeout", pong_timeout),
            ("subscribe_timeout", subscribe_timeout),
            ("open_timeout", open_timeout),
            ("gap_timeout", gap_timeout),
            ("backfill_limit", backfill_limit),
        ):
            if not value >= 0 or (name != "grace" and not value > 0):
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if max_connects_per_second < 1 or max_held < 1:
            raise ConfigError("max_connects_per_second and max_held must be >= 1")
        self._ids = tuple(ids)
        self.channel = channel
        self.ws_url = ws_url or (PUBLIC_WS_URL if channel == "trades" else BUSINESS_WS_URL)
        self.rest_url = rest_url or DEFAULT_REST_URL
        self.record_vault = Path(record_vault) if record_vault is not None else None
        self.record_format = record_format
        self._ct_overrides = dict(ct_val) if ct_val else {}
        self.grace_ms = round(grace * 1000)
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.subscribe_timeout = subscribe_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff if backoff is not None else Backoff()
        self.max_connects_per_second = max_connects_per_second
        self.gap_timeout = gap_timeout
        self.max_held = max_held
        self.backfill_limit = backfill_limit
        self.stats = OkxStats()
        self._protocol = OkxProtocol(
            self._ids,
            channel=channel,
            grace_ms=self.grace_ms,
            max_held=max_held,
            gap_timeout=gap_timeout,
            backfill_limit=backfill_limit,
            record=self.record_vault is not None,
            stats=self.stats,
        )
        self._recorder = (
            Recorder(self.record_vault, self._ids) if self.record_vault is not None else None
        )
        self._clock = clock
        self._rest = rest
        self._owns_rest = rest is None
        self._rng = random.Random(seed)
        self._saved: dict[str, dict[str, FilePos]] = {}
        self._groups = _split_groups(self._ids, channel)
        self._events: asyncio.Queue[_Event] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fills: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._connect_times: list[float] = []
        self._connect_lock: asyncio.Lock | None = None
        self._stopping = False
        self._closed = False
        self._conns: set[ClientConnection] = set()

    # -- Source protocol ----------------------------------------------------------------

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return self._ids

    @property
    def _insts(self) -> dict[str, InstState]:
        """Each instrument's stream state (gap, down, frontier ...), for tests and debugging."""
        return self._protocol.instruments

    def resume(self, positions: Mapping[str, Any]) -> None:
        """Take the saved positions (``{day: FilePos}`` per instrument, as replay saves them)."""
        for inst in self._ids:
            saved = positions.get(inst)
            if isinstance(saved, Mapping):
                self._saved[inst] = {
                    str(k): v for k, v in saved.items() if isinstance(v, FilePos)
                }

    def snapshot(self) -> dict[str, Any]:
        if self._recorder is None:
            return {}
        return dict(self._recorder.snapshot())

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    def stop(self) -> None:
        """End the iteration cleanly: close the minutes that are due, then stop (no I/O).

        Safe to call from a signal handler running on the event loop.
        """
        self._stopping = True
        if self._events is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(_StopEv())

    async def sync(self) -> None:
        """Make the recorded raw lines durable (fsync); the engine calls this before it
        commits a state that points at them."""
        if self._recorder is not None:
            await self._recorder.sync()

    async def aclose(self) -> None:
        """Stop connections and fill tasks, close the recorded files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in list(self._conns):
            await self._close(ws)
        for _, task in self._fills.values():
            task.cancel()
        self._fills.clear()
        if self._recorder is not None:
            self._recorder.close()
        if self._rest is not None and self._owns_rest:
            await self._rest.aclose()

    def __repr__(self) -> str:
        return f"OkxSource({list(self._ids)!r}, channel={self.channel!r})"

    # -- the iteration ------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _iterate(self) -> AsyncIterator[Batch]:
        self._events = asyncio.Queue(maxsize=4096)
        self._connect_lock = asyncio.Lock()
        if self._rest is None:
            self._rest = OkxRest(self.rest_url)
        if self._stopping:
            self._events.put_nowait(_StopEv())
        if self._recorder is not None:
            for inst_id in self._ids:
                async for batch in self._catch_up(inst_id, self._recorder):
                    yield batch
        for index, group in enumerate(self._groups):
            self._spawn(self._guard(self._run_group(group)), f"vstream-okx-ws-{index}")
        protocol = self._protocol
        while True:
            timeout = self._next_tick_in()
            try:
                # asyncio.timeout, never wait_for: on 3.11 wait_for can swallow a cancellation.
                if timeout is None:
                    event: _Event | None = await self._events.get()
                else:
                    async with asyncio.timeout(max(timeout, 0.0)):
                        event = await self._events.get()
            except TimeoutError:
                event = None
            if isinstance(event, _StopEv) or self._stopping:
                for batch in self._carry_out(protocol.tick(self._now_ms())):
                    yield batch
                return
            if isinstance(event, _FatalEv):
                raise event.error
            outputs = self._feed(event) if event is not None else []
            outputs += protocol.tick(self._now_ms())
            for batch in self._carry_out(outputs):
                yield batch

    def _feed(self, event: _Event) -> list[Output]:
        """Hand one queued event to the protocol."""
        protocol = self._protocol
        if isinstance(event, Push):
            return protocol.receive_push(event, self._now_ms())
        if isinstance(event, _LinkEv):
            if event.up:
                return protocol.connection_opened(event.inst_ids)
            return protocol.connection_lost(event.inst_ids)
        if isinstance(event, _FillEv):
            return protocol.receive_fill(
                event.inst_id,
                event.generation,
                event.rows,
                complete=event.complete,
                now_ms=self._now_ms(),
                error=event.error,
            )
        return []

    def _carry_out(self, outputs: list[Output]) -> list[Batch]:
        """Do what the protocol answered: start or cancel fills, record each batch's lines
        (flushed) and give it the position after them. All of it before any batch is
        yielded, as the answer was given at one instant."""
        batches: list[Batch] = []
        recorder = self._recorder
        for out in outputs:
            if isinstance(out, Emit):
                if recorder is not None:
                    if out.lines:
                        recorder.write(out.batch.inst_id, out.lines, out.late)
                        self.stats.recorded += len(out.lines)
                    out.batch.position = recorder.position(out.batch.inst_id)
                batches.append(out.batch)
            elif isinstance(out, StartFill):
                opened = asyncio.get_running_loop().time()
                task = self._spawn(self._fill(out, opened), f"vstream-okx-fill-{out.inst_id}")
                self._fills[out.inst_id] = (out.generation, task)
            elif isinstance(out, CancelFill):
                running = self._fills.get(out.inst_id)
                if running is not None and running[0] == out.generation:
                    del self._fills[out.inst_id]
                    running[1].cancel()
        return batches

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _post(self, event: _Event) -> None:
        assert self._events is not None
        await self._events.put(event)

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except VStreamError as exc:
            await self._post(_FatalEv(exc))
        except Exception as exc:
            await self._post(_FatalEv(SourceError(f"OKX connection failed: {exc!r}")))

    def _next_tick_in(self) -> float | None:
        due = self._protocol.next_deadline()
        if due is None:
            return None
        # Wake at the deadline, but often enough to follow a clock a test moves.
        return min(0.25, max(0.0, due / 1000 - self._clock()))

    # -- gap fills ----------------------------------------------------------------------

    async def _fill(self, req: StartFill, opened: float) -> None:
        """Fetch the gap's fills until complete or ``gap_timeout`` has passed since
        ``opened`` (loop time); report them."""
        assert self._rest is not None
        loop = asyncio.get_running_loop()
        deadline = opened + self.gap_timeout
        rows: dict[int, msgspec.Raw] = {}
        error = ""
        pause = 0.05
        while True:
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    got = await self._rest.history_range(req.inst_id, req.lo, req.hi)
                rows.update(got)
                if fill_complete(rows, req.lo, req.hi):
                    await self._post(_FillEv(req.inst_id, req.generation, rows, True))
                    return
                error = "OKX history does not have all the missing trades yet"
            except (SourceError, TimeoutError) as exc:
                error = str(exc) or "timed out"
            if loop.time() + pause >= deadline:
                await self._post(_FillEv(req.inst_id, req.generation, rows, False, error))
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    # -- resuming a recording -----------------------------------------------------------

    async def _catch_up(self, inst_id: str, recorder: Recorder) -> AsyncIterator[Batch]:
        """Replay what the raw files hold past the saved position, then get ready to append."""
        assert self.record_vault is not None
        replay = ReplaySource(self.record_vault, inst_id, clock=self._clock, missing_ok=True)
        replay.resume({inst_id: self._saved.get(inst_id) or {}})
        async for batch in replay:
            self._protocol.replayed(inst_id, batch.trades)
            yield batch
        recorder.start(inst_id, replay.snapshot()[inst_id])
        await asyncio.to_thread(recorder.prepare, inst_id)
        await self._write_meta(inst_id)
        vault = self.record_vault
        fmt = await asyncio.to_thread(choose_format, vault, inst_id, self.record_format)
        if fmt == "exporter":
            style = await asyncio.to_thread(record_style, vault, inst_id, self._ct_overrides)
            self._protocol.record_as(inst_id, style)
            if self.channel == "trades":
                log.info(
                    "%s: recording exporter lines, which carry no count: each record counts "
                    "as one fill (--channel trades-all keeps fills exact)", inst_id,
                )
        recorded = None
        if self._protocol.instruments[inst_id].replayed_newest is None:
            recorded = await asyncio.to_thread(recorder.last_recorded, inst_id, self._now_ms())
        for batch in self._carry_out(self._protocol.resume_from(inst_id, recorded, self._now_ms())):
            yield batch

    async def _write_meta(self, inst_id: str) -> None:
        """Write the vault's instrument file of ``inst_id`` where there is none (module docs)."""
        assert self.record_vault is not None
        vault = self.record_vault
        if await asyncio.to_thread(meta_path(vault, inst_id).exists):
            return
        row = await asyncio.to_thread(cached_row, vault, inst_id)
        if row is None and self._rest is not None:
            inst_type = {Kind.SWAP: "SWAP", Kind.FUTURES: "FUTURES", Kind.SPOT: "SPOT"}[kind_of(inst_id)]
            try:
                async with asyncio.timeout(max(self.open_timeout, 1.0)):
                    rows = await self._rest.instruments(inst_type, inst_id)
            except (SourceError, TimeoutError) as exc:
                log.warning(
                    "%s: cannot fetch its OKX instrument row (%s); %s is not written this time",
                    inst_id, exc or "timed out", meta_path(vault, inst_id),
                )
                return
            row = next((r for r in rows if r.get("instId") == inst_id), None)
        if row is None:
            log.warning("%s: OKX lists no instrument row for it; %s is not written", inst_id,
                        meta_path(vault, inst_id))
            return
        try:
            await asyncio.to_thread(write_meta, vault, inst_id, row)
        except OSError as exc:
            raise SourceError(
                f"{inst_id}: cannot write {meta_path(vault, inst_id)}: {exc.strerror or exc}"
            ) from exc

    # -- connections --------------------------------------------------------------------

    async def _run_group(self, inst_ids: tuple[str, ...]) -> None:
        ws = await self._connect(inst_ids)
        await self._post(_LinkEv(inst_ids, True))
        while True:
            notice = asyncio.Event()
            reader = asyncio.ensure_future(self._read(ws, inst_ids, notice))
            noticed = asyncio.ensure_future(notice.wait())
            try:
                await asyncio.wait({reader, noticed}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    self._reader_ended(reader, inst_ids)
                    await self._post(_LinkEv(inst_ids, False))
                    ws = await self._connect(inst_ids)
                    self.stats.reconnects += 1
                    await self._post(_LinkEv(inst_ids, True))
                    continue
                # 64008: open and subscribe the replacement while the old one still delivers.
                replacement = asyncio.ensure_future(self._connect(inst_ids))
                try:
                    await asyncio.wait({reader, replacement}, return_when=asyncio.FIRST_COMPLETED)
                    if replacement.done():
                        new_ws = replacement.result()
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await reader
                        await self._close(ws)
                        ws = new_ws
                        self.stats.reconnects += 1
                        continue
                    self._reader_ended(reader, inst_ids)
                    await self._post(_LinkEv(inst_ids, False))
                    ws = await replacement
                    self.stats.reconnects += 1
                    await self._post(_LinkEv(inst_ids, True))
                finally:
                    if not replacement.done():
                        replacement.cancel()
            finally:
                noticed.cancel()
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader

    def _reader_ended(self, reader: asyncio.Future[None], inst_ids: tuple[str, ...]) -> None:
        exc = reader.exception()
        if isinstance(exc, VStreamError):
            raise exc
        log.warning("OKX connection for %s lost (%s); reconnecting", _names(inst_ids), exc or "closed")

    async def _connect(self, inst_ids: tuple[str, ...]) -> ClientConnection:
        """Connect and subscribe, retrying with backoff until it works (or fails for good)."""
        failures = 0
        while True:
            if failures:
                await asyncio.sleep(self.backoff.delay(failures, self._rng))
            await self._connect_slot()
            try:
                return await self._open(inst_ids)
            except VStreamError:
                raise
            except (OSError, WebSocketException, TimeoutError, _Dead) as exc:
                failures += 1
                log.warning("cannot connect to %s (%s); attempt %d failed", self.ws_url, exc or type(exc).__name__, failures)

    async def _connect_slot(self) -> None:
        """At most ``max_connects_per_second`` connection attempts in any second."""
        assert self._connect_lock is not None
        loop = asyncio.get_running_loop()
        async with self._connect_lock:
            while True:
                now = loop.time()
                self._connect_times = [t for t in self._connect_times if now - t < 1.0]
                if len(self._connect_times) < self.max_connects_per_second:
                    self._connect_times.append(now)
                    return
                await asyncio.sleep(1.0 - (now - self._connect_times[0]) + 1e-3)

    async def _open(self, inst_ids: tuple[str, ...]) -> ClientConnection:
        self.stats.connects += 1
        ws = await websockets.connect(
            self.ws_url,
            ping_interval=None,  # OKX wants its own text ping, not protocol pings
            open_timeout=self.open_timeout,
            close_timeout=1.0,
            max_size=16 << 20,
            max_queue=64,
        )
        self._conns.add(ws)
        try:
            request = _subscribe_request(self.channel, inst_ids)
            await ws.send(request)
            pending = set(inst_ids)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.subscribe_timeout
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _Dead(f"no subscribe ack for {_names(pending)} within {self.subscribe_timeout}s")
                async with asyncio.timeout(remaining):
                    message = await ws.recv()
                got = self._protocol.receive_frame(message, inst_ids)
                if isinstance(got, Subscribed):
                    pending.discard(got.inst_id)
                elif isinstance(got, ErrorFrame):
                    named = [i for i in inst_ids if i in got.msg]
                    if named:
                        raise ConfigError(
                            f"OKX refused the {self.channel} subscription for {_names(named)}: "
                            f"{got.msg} (code {got.code}); check the instrument id and --channel"
                        )
                    raise _Dead(f"OKX answered the subscription with error {got.code}: {got.msg}")
                elif isinstance(got, Push):
                    await self._post(got)
        except BaseException:
            await self._close(ws)
            raise
        return ws

    async def _close(self, ws: ClientConnection) -> None:
        self._conns.discard(ws)
        with contextlib.suppress(Exception):
            await ws.close()

    async def _read(
        self, ws: ClientConnection, inst_ids: tuple[str, ...], notice: asyncio.Event
    ) -> None:
        """Read until the connection dies; raises :class:`_Dead` (or ConnectionClosed)."""
        while True:
            try:
                async with asyncio.timeout(self.ping_interval):
                    message = await ws.recv()
            except TimeoutError:
                self.stats.pings += 1
                await ws.send("ping")
                try:
                    async with asyncio.timeout(self.pong_timeout):
                        message = await ws.recv()
                except TimeoutError:
                    await self._close(ws)
                    raise _Dead(f"no pong within {self.pong_timeout}s") from None
            got = self._protocol.receive_frame(message, inst_ids)
            if isinstance(got, Push):
                await self._post(got)
            elif isinstance(got, UpgradeNotice):
                self.stats.notices += 1
                log.info("OKX service upgrade notice: opening a replacement connection")
                notice.set()
            elif isinstance(got, ErrorFrame):
                log.warning("OKX error event: %s (code %s)", got.msg, got.code)



# ----------------------------------------------------------------------------- helpers


def _names(inst_ids: Iterable[str]) -> str:
    return ", ".join(sorted(inst_ids))


def _subscribe_request(channel: str, inst_ids: Sequence[str]) -> str:
    args = [{"channel": channel, "instId": i} for i in inst_ids]
    return msgspec.json.encode({"op": "subscribe", "args": args}).decode()


def _split_groups(inst_ids: Sequence[str], channel: str) -> list[tuple[str, ...]]:
    """Split instruments so that each connection's subscribe request fits OKX's limit."""
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    for inst in inst_ids:
        if current and len(_subscribe_request(channel, [*current, inst])) > MAX_SUBSCRIBE_BYTES:
            groups.append(tuple(current))
            current = []
        current.append(inst)
    if current:
        groups.append(tuple(current))
    return groups


__all__ = [
    "BUSINESS_WS_URL",
    "CHANNELS",
    "PUBLIC_WS_URL",
    "Backoff",
    "OkxSource",
    "OkxStats",
]
