"""The OKX websocket source: live trades, with keepalive, reconnects, gap filling and recording.

Design (what the spec leaves open is decided here):

* **Connections.** One websocket carries many instruments; the instruments are split over
  several connections only when one subscribe request would pass OKX's 64 KB limit. Each
  connection keeps itself alive the OKX way (text ``ping`` after ``ping_interval`` seconds of
  silence, reconnect when no answer comes within ``pong_timeout``) and reconnects with capped,
  jittered exponential backoff, at most ``max_connects_per_second`` attempts per second over
  all connections. On the ``64008`` service-upgrade notice the replacement connection is opened
  and subscribed first, then the old one is closed.
* **No lost trades.** Trade ids are consecutive per instrument; on the ``trades`` channel a
  record covers ``tradeId - count + 1 .. tradeId``. Each instrument keeps a *frontier*: the
  highest id delivered with nothing missing below it. A record that starts above
  ``frontier + 1`` opens a gap; while the connection is down, and after every reconnect, the
  instrument is treated as gapped up to "now". A gap is filled from
  ``GET /api/v5/market/history-trades``; meanwhile later records of that instrument are *held
  back* (not delivered) and its minutes are not closed on the wall clock, so a bar touched by
  the gap is emitted only once the gap is filled: fill trades first, then the held ones, in id
  order. Filled fills of the ``trades`` channel are merged the way OKX merges them (consecutive
  ids, same side, price and time) so bars come out as an uninterrupted session would have them.
  If a gap cannot be filled within ``gap_timeout`` seconds (or more than ``max_held`` records
  wait), what is known is delivered and the minutes next to the hole are flagged
  ``"gap": true``, with a warning in the log.
* **Wall-clock closing in-band.** The source, not the engine's ticker, decides when a minute is
  closed on the wall clock: it yields an empty batch with ``now_ms`` set ``grace`` after the
  minute ends (never while the instrument is held). Closing is thus ordered with the trades, so
  it can be reasoned about exactly — which makes ``--record`` reproducible (below). Hence
  ``live = False``: the engine's own ticker must not race these closes.
* **Recording** (``record_vault``). Every delivered trade is appended, as the flat OKX object it
  arrived as, to ``raw/okx/trades_*/{INSTID}/{DATE}.jsonl`` and flushed *before* the batch
  carrying it is yielded; :meth:`sync` (called by the engine before it commits the state)
  fsyncs it. The position is the replay source's (``{day: FilePos}``), so ``replay`` continues
  where live stopped and the other way round. A trade is written to the file of its UTC day,
  except that the recorder never goes back to an older file than one it already wrote (such a
  trade is late anyway), so a replay reads the lines in the order live saw them. A trade that
  live finds late *only because its minute was closed on the wall clock* (replay would still
  take it) is written wrapped as ``{"event":"vstream-late",...,"data":[trade]}``, which replay
  skips: the replay of a recording then yields the very bars live yielded.
* **Resume.** When recording, the raw files are first caught up from the saved position (the
  lines another process, or a killed session, wrote after it) with the replay reader; a torn
  last line (a recorder killed mid-write) is cut off. The newest recorded trade id then becomes
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
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from io import BufferedWriter
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from ..errors import ConfigError, SourceError, VStreamError
from ..instruments import VaultPaths, kind_of
from ..okx_rest import DEFAULT_REST_URL, OkxRest
from ..state import FilePos
from ..trades import TRADE_CHANNELS, LineDecoder, Reject, Trade
from . import Batch
from .replay import ReplaySource, day_files

log = logging.getLogger("vstream")

PUBLIC_WS_URL: Final = "wss://ws.okx.com:8443/ws/v5/public"
BUSINESS_WS_URL: Final = "wss://ws.okx.com:8443/ws/v5/business"
CHANNELS: Final = TRADE_CHANNELS
#: OKX refuses a subscribe request longer than this; stay clearly below it.
MAX_SUBSCRIBE_BYTES: Final = 64 * 1024 - 512
MINUTE_MS: Final = 60_000
_TAIL: Final = 64
_LATE_EVENT: Final = "vstream-late"


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


@dataclass(slots=True)
class OkxStats:
    """What the source met (read at any time as ``source.stats``)."""

    frames: int = 0
    trades: int = 0
    malformed: int = 0
    connects: int = 0
    reconnects: int = 0
    pings: int = 0
    notices: int = 0
    duplicates: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    gaps_failed: int = 0
    filled_trades: int = 0
    recorded: int = 0
    late_recorded: int = 0


# ----------------------------------------------------------------------- wire shapes


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""


class _Frame(msgspec.Struct):
    event: str | None = None
    code: str | int | None = None
    msg: str = ""
    arg: _Arg | None = None
    data: list[msgspec.Raw] | None = None


_frame_decoder = msgspec.json.Decoder(_Frame)


# ------------------------------------------------------------------ internal events


@dataclass(slots=True)
class _TradesEv:
    inst_id: str
    raws: list[msgspec.Raw]
    recv_ms: int
    frame_no: int


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


_Event = _TradesEv | _LinkEv | _FillEv | _FatalEv | _StopEv


class _Dead(Exception):
    """The connection is no longer usable (closed, silent, refused)."""


# ------------------------------------------------------------------- per instrument


@dataclass(slots=True)
class _Rec:
    """One delivered-or-held trade record with the exact JSON it arrived as."""

    first: int
    last: int
    trade: Trade
    raw: bytes


@dataclass(slots=True)
class _Gap:
    lo: int  # highest id known delivered
    hi: int | None  # highest missing id (None: up to now)
    generation: int
    opened: float  # loop time
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Inst:
    inst_id: str
    decoder: LineDecoder
    frontier: int | None = None
    down: bool = True
    gap: _Gap | None = None
    recheck: bool = False
    held: list[_Rec] = field(default_factory=list)
    mark_next: bool = False
    # The engine's open minute as far as this session's deliveries and closes go.
    shadow_open: int | None = None
    shadow_closed: bool = False
    # recording
    files: dict[str, FilePos] = field(default_factory=dict)
    tails: dict[str, bytes] = field(default_factory=dict)
    handle: BufferedWriter | None = None
    handle_day: str = ""
    dirty: set[str] = field(default_factory=set)
    rec_day: str = ""
    raw_dir: Path | None = None

    @property
    def held_back(self) -> bool:
        """Minutes must not be closed on the wall clock: trades may still be missing."""
        return self.down or self.gap is not None


_Item = _Rec | None  # None marks "flag the open minute as gapped here"


def _utc_day(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ms // 1000))


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

    def __init__(
        self,
        inst_ids: Sequence[str],
        *,
        channel: Literal["trades", "trades-all"] | str = "trades",
        ws_url: str | None = None,
        rest_url: str | None = None,
        record_vault: str | os.PathLike[str] | None = None,
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
        self._clock = clock
        self._rest = rest
        self._owns_rest = rest is None
        self._rng = random.Random(seed)
        self._insts = {i: _Inst(i, LineDecoder(i)) for i in ids}
        self._saved: dict[str, dict[str, FilePos]] = {}
        self._groups = _split_groups(self._ids, channel)
        self._events: asyncio.Queue[_Event] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connect_times: list[float] = []
        self._connect_lock: asyncio.Lock | None = None
        self._generation = 0
        self._frame_no = 0
        self._stopping = False
        self._closed = False
        self._new_dirs: set[Path] = set()
        self._conns: set[ClientConnection] = set()

    # -- Source protocol ----------------------------------------------------------------

    @property
    def inst_ids(self) -> tuple[str, ...]:
        return self._ids

    def resume(self, positions: Mapping[str, Any]) -> None:
        """Take the saved positions (``{day: FilePos}`` per instrument, as replay saves them)."""
        for inst in self._ids:
            saved = positions.get(inst)
            if isinstance(saved, Mapping):
                self._saved[inst] = {
                    str(k): v for k, v in saved.items() if isinstance(v, FilePos)
                }

    def snapshot(self) -> dict[str, Any]:
        if self.record_vault is None:
            return {}
        return {i: dict(s.files) for i, s in self._insts.items()}

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
        for inst in self._insts.values():
            handle = inst.handle
            if handle is not None and inst.dirty:
                inst.dirty.clear()
                await asyncio.to_thread(os.fsync, handle.fileno())
        dirs, self._new_dirs = self._new_dirs, set()
        for folder in dirs:
            await asyncio.to_thread(_fsync_dir, folder)

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
        for inst in self._insts.values():
            for task in [inst.gap.task] if inst.gap is not None and inst.gap.task else []:
                task.cancel()
            if inst.handle is not None:
                with contextlib.suppress(OSError):
                    inst.handle.flush()
                    os.fsync(inst.handle.fileno())
                inst.handle.close()
                inst.handle = None
        if self._rest is not None and self._owns_rest:
            await self._rest.aclose()

    def __repr__(self) -> str:
        return f"OkxSource({list(self._ids)!r}, channel={self.channel!r})"

    # -- the iteration ------------------------------------------------------------------

    async def _iterate(self) -> AsyncIterator[Batch]:
        self._events = asyncio.Queue(maxsize=4096)
        self._connect_lock = asyncio.Lock()
        if self._rest is None:
            self._rest = OkxRest(self.rest_url)
        if self._stopping:
            self._events.put_nowait(_StopEv())
        if self.record_vault is not None:
            for inst_id in self._ids:
                async for batch in self._catch_up(self._insts[inst_id]):
                    yield batch
        for index, group in enumerate(self._groups):
            self._spawn(self._guard(self._run_group(group)), f"vstream-okx-ws-{index}")
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
                for batch in self._ticks():
                    yield batch
                return
            if isinstance(event, _FatalEv):
                raise event.error
            batches = self._handle(event) if event is not None else []
            batches += self._ticks()
            for batch in batches:
                yield batch

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

    def _handle(self, event: _Event) -> list[Batch]:
        if isinstance(event, _TradesEv):
            return self._on_trades(event)
        if isinstance(event, _LinkEv):
            return self._on_link(event)
        if isinstance(event, _FillEv):
            return self._on_fill(event)
        return []

    # -- wall-clock closing -------------------------------------------------------------

    def _due_ms(self, inst: _Inst) -> int | None:
        if inst.shadow_open is None or inst.shadow_closed or inst.held_back:
            return None
        return (inst.shadow_open + 1) * MINUTE_MS + self.grace_ms

    def _next_tick_in(self) -> float | None:
        dues = [d for d in map(self._due_ms, self._insts.values()) if d is not None]
        if not dues:
            return None
        # Wake at the deadline, but often enough to follow a clock a test moves.
        return min(0.25, max(0.0, min(dues) / 1000 - self._clock()))

    def _ticks(self) -> list[Batch]:
        now_ms = int(self._clock() * 1000)
        out = []
        for inst in self._insts.values():
            due = self._due_ms(inst)
            if due is not None and now_ms >= due:
                inst.shadow_closed = True
                out.append(Batch(inst.inst_id, [], position=self._position(inst), now_ms=now_ms))
        return out

    # -- trades and gaps ----------------------------------------------------------------

    def _decode(
        self, inst: _Inst, raws: Sequence[bytes], file: str, frame_no: int
    ) -> tuple[list[_Rec], list[Reject], int]:
        now_ms = int(self._clock() * 1000)
        recs: list[_Rec] = []
        rejects: list[Reject] = []
        skipped = 0
        for raw in raws:
            if b"\n" in raw or b"\r" in raw:
                # A recorded line must stay one line.
                with contextlib.suppress(msgspec.DecodeError):
                    raw = msgspec.json.encode(msgspec.json.decode(raw))
            decoded = inst.decoder.decode([raw], file=file, first_line=frame_no, now_ms=now_ms)
            rejects += decoded.rejects
            skipped += decoded.skipped
            for trade in decoded.trades:
                last = int(trade.tradeId)
                first = last - trade.count + 1 if self.channel == "trades" else last
                recs.append(_Rec(first, last, trade, bytes(raw)))
        return recs, rejects, skipped

    def _on_trades(self, ev: _TradesEv) -> list[Batch]:
        inst = self._insts.get(ev.inst_id)
        if inst is None:
            return []
        self.stats.frames += 1
        recs, rejects, skipped = self._decode(
            inst, [bytes(r) for r in ev.raws], f"ws:{self.channel}", ev.frame_no
        )
        self.stats.trades += len(recs)
        recs.sort(key=lambda r: r.last)
        items: list[_Item] = []
        for rec in recs:
            self._admit(inst, rec, items)
        batches = self._deliver(inst, items)
        if rejects or skipped:
            batches.append(
                Batch(inst.inst_id, [], rejects, skipped, position=self._position(inst))
            )
        return batches

    def _admit(self, inst: _Inst, rec: _Rec, items: list[_Item]) -> None:
        if inst.gap is not None:
            inst.held.append(rec)
            if len(inst.held) > self.max_held:
                log.warning("%s: %d records held back behind a gap; giving up on it", inst.inst_id, len(inst.held))
                items += self._give_up(inst, {})
            return
        frontier = inst.frontier
        if frontier is None or rec.first == frontier + 1:
            if inst.mark_next:
                inst.mark_next = False
                items += [rec, None]
            else:
                items.append(rec)
            inst.frontier = rec.last if frontier is None else max(frontier, rec.last)
        elif rec.last <= frontier:
            self.stats.duplicates += 1
        elif rec.first <= frontier:
            # Straddles the frontier: its fills come one by one from REST instead.
            self._open_gap(inst, frontier, rec.last)
        else:
            self._open_gap(inst, frontier, rec.first - 1)
            inst.held.append(rec)

    def _open_gap(self, inst: _Inst, lo: int, hi: int | None) -> None:
        self._generation += 1
        self.stats.gaps += 1
        loop = asyncio.get_running_loop()
        gap = _Gap(lo, hi, self._generation, loop.time())
        inst.gap = gap
        log.info("%s: trade ids after %d missing (up to %s); filling from REST", inst.inst_id, lo, hi if hi is not None else "now")
        gap.task = self._spawn(self._fill(inst.inst_id, gap), f"vstream-okx-fill-{inst.inst_id}")

    async def _fill(self, inst_id: str, gap: _Gap) -> None:
        assert self._rest is not None
        loop = asyncio.get_running_loop()
        deadline = gap.opened + self.gap_timeout
        rows: dict[int, msgspec.Raw] = {}
        error = ""
        pause = 0.05
        while True:
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    got = await self._rest.history_range(inst_id, gap.lo, gap.hi)
                rows.update(got)
                if _complete(rows, gap.lo, gap.hi):
                    await self._post(_FillEv(inst_id, gap.generation, rows, True))
                    return
                error = "OKX history does not have all the missing trades yet"
            except (SourceError, TimeoutError) as exc:
                error = str(exc) or "timed out"
            if loop.time() + pause >= deadline:
                await self._post(_FillEv(inst_id, gap.generation, rows, False, error))
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _on_fill(self, ev: _FillEv) -> list[Batch]:
        inst = self._insts[ev.inst_id]
        gap = inst.gap
        if gap is None or gap.generation != ev.generation:
            return []
        if not ev.complete:
            log.warning(
                "%s: could not fill the trade-id gap after %d within %.0fs (%s); "
                "emitting its minutes flagged \"gap\": true",
                inst.inst_id, gap.lo, self.gap_timeout, ev.error,
            )
            return self._deliver(inst, self._give_up(inst, ev.rows))
        self.stats.gaps_filled += 1
        filled = self._fill_records(inst, ev.rows)
        self.stats.filled_trades += len(filled)
        inst.gap = None
        held, inst.held = inst.held, []
        items: list[_Item] = []
        for rec in filled:
            self._admit(inst, rec, items)
        if inst.gap is None and gap.hi is not None:
            inst.frontier = max(inst.frontier or gap.hi, gap.hi)
        if inst.gap is None and inst.recheck and inst.frontier is not None:
            # The connection dropped while this gap was filled: fetch what came after it.
            inst.recheck = False
            self._open_gap(inst, inst.frontier, None)
            inst.held += held
        else:
            for rec in held:
                self._admit(inst, rec, items)
        return self._deliver(inst, items)

    def _give_up(self, inst: _Inst, rows: dict[int, msgspec.Raw]) -> list[_Item]:
        """Deliver what is known around an unfillable gap, flagging the minutes at its edges."""
        assert inst.gap is not None
        self.stats.gaps_failed += 1
        lo = inst.gap.lo
        if inst.gap.task is not None:
            inst.gap.task.cancel()
        inst.gap = None
        inst.recheck = False
        recs = self._fill_records(inst, rows) + inst.held
        inst.held = []
        recs = sorted((r for r in recs if r.last > lo), key=lambda r: r.last)
        items: list[_Item] = [None]
        seen = lo
        for rec in recs:
            if rec.last <= seen:
                continue
            items.append(rec)
            if len(items) == 2:
                items.append(None)
            seen = rec.last
        if len(items) == 1:
            inst.mark_next = True
            inst.frontier = None  # the next record starts a new base
        else:
            inst.frontier = seen
        return items

    def _fill_records(self, inst: _Inst, rows: Mapping[int, msgspec.Raw]) -> list[_Rec]:
        ordered = [bytes(rows[k]) for k in sorted(rows)]
        if self.channel == "trades":
            ordered = _merge_fills(ordered)
        recs, rejects, _ = self._decode(inst, ordered, "rest:history-trades", 0)
        for reject in rejects:
            log.warning("%s: bad row from OKX history: %s", inst.inst_id, reject.error)
        return recs

    def _on_link(self, ev: _LinkEv) -> list[Batch]:
        for inst_id in ev.inst_ids:
            inst = self._insts[inst_id]
            if not ev.up:
                inst.down = True
                continue
            inst.down = False
            if inst.frontier is None:
                continue
            if inst.gap is not None:
                inst.recheck = True  # what was pushed while down lies past this gap
            else:
                self._open_gap(inst, inst.frontier, None)
        return []

    # -- delivering (and recording) -----------------------------------------------------

    def _position(self, inst: _Inst) -> dict[str, FilePos] | None:
        return dict(inst.files) if self.record_vault is not None else None

    def _deliver(self, inst: _Inst, items: list[_Item]) -> list[Batch]:
        """Turn delivered records into batches; record them first (flushed)."""
        batches: list[Batch] = []
        trades: list[Trade] = []
        gap_next = False
        lines: list[tuple[str, bytes]] = []
        for item in items:
            if item is None:
                if trades or lines:
                    self._write(inst, lines)
                    lines = []
                    batches.append(
                        Batch(inst.inst_id, trades, position=self._position(inst), gap=gap_next)
                    )
                    trades = []
                    gap_next = True
                else:
                    gap_next = True
                continue
            trade = item.trade
            minute = trade.ts // MINUTE_MS
            late_by_clock = minute == inst.shadow_open and inst.shadow_closed
            if inst.shadow_open is None or minute > inst.shadow_open:
                inst.shadow_open = minute
                inst.shadow_closed = False
            trades.append(trade)
            if self.record_vault is not None:
                day = _utc_day(trade.ts)
                if day < inst.rec_day:
                    day = inst.rec_day
                inst.rec_day = day
                if late_by_clock:
                    self.stats.late_recorded += 1
                    line = (
                        b'{"event":"' + _LATE_EVENT.encode() + b'","arg":'
                        + msgspec.json.encode({"channel": self.channel, "instId": inst.inst_id})
                        + b',"data":[' + item.raw + b"]}\n"
                    )
                else:
                    line = item.raw + b"\n"
                lines.append((day, line))
        if trades or lines or gap_next:
            self._write(inst, lines)
            batches.append(Batch(inst.inst_id, trades, position=self._position(inst), gap=gap_next))
        return batches

    def _write(self, inst: _Inst, lines: list[tuple[str, bytes]]) -> None:
        if not lines:
            return
        start = 0
        while start < len(lines):
            day = lines[start][0]
            end = start
            while end < len(lines) and lines[end][0] == day:
                end += 1
            data = b"".join(line for _, line in lines[start:end])
            self._append(inst, day, data, end - start)
            start = end
        self.stats.recorded += len(lines)

    def _append(self, inst: _Inst, day: str, data: bytes, count: int) -> None:
        assert inst.raw_dir is not None
        path = inst.raw_dir / f"{day}.jsonl"
        try:
            if inst.handle is None or inst.handle_day != day:
                if inst.handle is not None:
                    inst.handle.flush()
                    os.fsync(inst.handle.fileno())
                    inst.handle.close()
                    inst.handle = None
                if (inst.raw_dir / f"{day}.jsonl.gz").exists():
                    raise SourceError(
                        f"{inst.inst_id}: cannot record into {path}: {day} is already archived as .jsonl.gz"
                    )
                if not inst.raw_dir.is_dir():
                    inst.raw_dir.mkdir(parents=True, exist_ok=True)
                    self._new_dirs.add(inst.raw_dir.parent)
                if not path.exists():
                    self._new_dirs.add(inst.raw_dir)
                inst.handle = open(path, "ab")  # noqa: SIM115 - kept open across batches
                inst.handle_day = day
            inst.handle.write(data)
            inst.handle.flush()
        except OSError as exc:
            raise SourceError(f"{inst.inst_id}: cannot record into {path}: {exc.strerror or exc}") from exc
        inst.dirty.add(day)
        pos = inst.files.get(day) or FilePos(name=path.name)
        tail = (inst.tails.get(day, b"") + data)[-_TAIL:]
        inst.tails[day] = tail
        inst.files[day] = msgspec.structs.replace(
            pos, offset=pos.offset + len(data), lines=pos.lines + count, tail_crc=zlib.crc32(tail)
        )

    # -- resuming a recording -----------------------------------------------------------

    async def _catch_up(self, inst: _Inst) -> AsyncIterator[Batch]:
        """Replay what the raw files hold past the saved position, then get ready to append."""
        assert self.record_vault is not None
        paths = VaultPaths.of(self.record_vault, inst.inst_id)
        inst.raw_dir = paths.raw_dir
        replay = ReplaySource(self.record_vault, inst.inst_id, clock=self._clock, missing_ok=True)
        replay.resume({inst.inst_id: self._saved.get(inst.inst_id) or {}})
        newest_id: int | None = None
        newest_ts = 0
        async for batch in replay:
            for trade in batch.trades:
                tid = int(trade.tradeId)
                if newest_id is None or tid > newest_id:
                    newest_id, newest_ts = tid, trade.ts
                minute = trade.ts // MINUTE_MS
                if inst.shadow_open is None or minute > inst.shadow_open:
                    inst.shadow_open = minute
            yield batch
        inst.files = dict(replay.snapshot()[inst.inst_id])
        files = await asyncio.to_thread(day_files, paths.raw_dir)
        if files:
            inst.rec_day = files[-1][0]
        await asyncio.to_thread(self._prepare_append, inst, files)
        if newest_id is None:
            found = await asyncio.to_thread(self._last_recorded, inst)
            if found is not None:
                newest_id, newest_ts = found
        if newest_id is None:
            return
        age = self._clock() - newest_ts / 1000
        if age <= self.backfill_limit:
            inst.frontier = newest_id  # the first connection fills from here
        else:
            log.warning(
                "%s: the last recorded trade is %.0fs old (more than %.0fs): not fetching what "
                "was missed; the open minute, if any, is flagged \"gap\": true",
                inst.inst_id, age, self.backfill_limit,
            )
            inst.mark_next = False
            yield Batch(inst.inst_id, [], position=self._position(inst), gap=True)

    def _prepare_append(self, inst: _Inst, files: list[tuple[str, Path]]) -> None:
        unread = [
            path for day, path in files
            if not path.name.endswith(".gz") and path.stat().st_size > (inst.files[day].offset if day in inst.files else 0)
        ]  # fmt: skip
        if len(unread) > 1:
            # Replay stopped at a torn line of an earlier file: the later files hold whole
            # lines, not a killed recorder's torn write, and must never be cut.
            raise SourceError(
                f"{inst.inst_id}: cannot record: {unread[0]} ends in a torn line and later day files "
                f"follow it; finish that line (or end it with a newline) and start again"
            )
        for day, path in files:
            if path.name.endswith(".gz"):
                continue
            pos = inst.files.get(day)
            offset = pos.offset if pos is not None else 0
            size = path.stat().st_size
            if size > offset:
                # Only a torn last line (no newline) is left unconsumed by the catch-up.
                log.warning(
                    "%s: cutting a torn last line (%d bytes) off %s before recording",
                    inst.inst_id, size - offset, path,
                )
                with open(path, "r+b") as handle:
                    handle.truncate(offset)
                    handle.flush()
                    os.fsync(handle.fileno())
            if offset > 0:
                with open(path, "rb") as handle:
                    handle.seek(max(0, offset - _TAIL))
                    inst.tails[day] = handle.read(offset - max(0, offset - _TAIL))

    def _last_recorded(self, inst: _Inst) -> tuple[int, int] | None:
        """The id and time of the newest trade before the saved offset of the newest file."""
        for day in sorted(inst.files, reverse=True):
            pos = inst.files[day]
            if pos.offset <= 0 or pos.name.endswith(".gz") or inst.raw_dir is None:
                continue
            start = max(0, pos.offset - (256 << 10))
            try:
                with open(inst.raw_dir / pos.name, "rb") as handle:
                    handle.seek(start)
                    blob = handle.read(pos.offset - start)
            except OSError:
                return None
            lines = blob.split(b"\n")
            if start > 0:
                lines = lines[1:]
            decoded = inst.decoder.decode(
                [line for line in lines if line.strip()],
                file=pos.name,
                first_line=0,
                now_ms=int(self._clock() * 1000),
            )
            if decoded.trades:
                best = max(decoded.trades, key=lambda t: int(t.tradeId))
                return int(best.tradeId), best.ts
        return None

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
                frame = self._parse(message)
                if frame is None:
                    continue
                if frame.event == "subscribe" and frame.arg is not None:
                    pending.discard(frame.arg.instId)
                elif frame.event == "error":
                    named = [i for i in inst_ids if i in frame.msg]
                    if named:
                        raise ConfigError(
                            f"OKX refused the {self.channel} subscription for {_names(named)}: "
                            f"{frame.msg} (code {frame.code}); check the instrument id and --channel"
                        )
                    raise _Dead(f"OKX answered the subscription with error {frame.code}: {frame.msg}")
                elif frame.data is not None:
                    await self._on_frame(frame, inst_ids)
        except BaseException:
            await self._close(ws)
            raise
        return ws

    async def _close(self, ws: ClientConnection) -> None:
        self._conns.discard(ws)
        with contextlib.suppress(Exception):
            await ws.close()

    def _parse(self, message: str | bytes) -> _Frame | None:
        if isinstance(message, str):
            if message == "pong":
                return None
            data = message.encode()
        else:
            data = message
        try:
            return _frame_decoder.decode(data)
        except msgspec.DecodeError:
            self.stats.malformed += 1
            log.warning("malformed frame from OKX ignored: %r", data[:200])
            return None

    async def _on_frame(self, frame: _Frame, inst_ids: tuple[str, ...]) -> None:
        arg = frame.arg
        if arg is None or frame.data is None:
            return
        if arg.channel != self.channel or arg.instId not in inst_ids:
            self.stats.malformed += 1
            return
        self._frame_no += 1
        await self._post(
            _TradesEv(arg.instId, frame.data, int(self._clock() * 1000), self._frame_no)
        )

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
            frame = self._parse(message)
            if frame is None:
                continue
            if frame.event is None:
                await self._on_frame(frame, inst_ids)
            elif frame.event == "notice" and str(frame.code) == "64008":
                self.stats.notices += 1
                log.info("OKX service upgrade notice: opening a replacement connection")
                notice.set()
            elif frame.event == "error":
                log.warning("OKX error event: %s (code %s)", frame.msg, frame.code)


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


def _complete(rows: Mapping[int, Any], lo: int, hi: int | None) -> bool:
    if hi is not None:
        return all(i in rows for i in range(lo + 1, hi + 1))
    if not rows:
        return True  # nothing happened while we were away (as far as OKX knows)
    return len(rows) == max(rows) - lo and min(rows) == lo + 1


def _merge_fills(raws: list[bytes]) -> list[bytes]:
    """Merge consecutive fills (same side, price and time) into one record, as OKX's
    ``trades`` channel does: last ``tradeId``, summed ``sz``, ``count`` fills."""
    out: list[bytes] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if not run:
            return
        if len(run) == 1:
            out.append(msgspec.json.encode({**run[0], "count": "1"}))
        else:
            try:
                total = sum((Decimal(str(r["sz"])) for r in run), Decimal(0))
            except (InvalidOperation, KeyError):
                out.extend(msgspec.json.encode({**r, "count": "1"}) for r in run)
            else:
                merged = {**run[-1], "sz": format(total, "f"), "count": str(len(run))}
                out.append(msgspec.json.encode(merged))
        run.clear()

    for raw in raws:
        try:
            row = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            flush()
            out.append(raw)
            continue
        if not isinstance(row, dict):
            flush()
            out.append(raw)
            continue
        prev = run[-1] if run else None
        if prev is not None and not (
            all(prev.get(k) == row.get(k) for k in ("side", "px", "ts"))
            and _int(row.get("tradeId")) == _int(prev.get("tradeId")) + 1
        ):
            flush()
        run.append(row)
    flush()
    return out


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -2


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "BUSINESS_WS_URL",
    "CHANNELS",
    "PUBLIC_WS_URL",
    "Backoff",
    "OkxSource",
    "OkxStats",
]
