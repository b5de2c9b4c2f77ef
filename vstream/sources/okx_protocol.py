"""The OKX live source's core, without I/O: frames and fills in, batches out.

:class:`OkxProtocol` is a plain synchronous object. It never touches a socket, a file, the
event loop or a clock: the shell (:mod:`vstream.sources.okx`) hands it what arrived — websocket
messages, REST fill results, connections coming and going, the wall-clock time — and carries
out what it answers: :class:`Emit` (a batch to yield, and the lines to record before it),
:class:`StartFill` / :class:`CancelFill` (REST gap fills to run or drop). Everything here can
thus be driven by a table of inputs in a test (``tests/sources/test_okx_protocol.py``).

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
  If a gap cannot be filled (the shell's fill gives up after ``gap_timeout`` seconds, or more
  than ``max_held`` records wait), what is known is delivered and the minutes next to the hole
  are flagged ``"gap": true``, with a warning in the log.
* **Wall-clock closing in-band.** The protocol, not the engine's ticker, decides when a minute
  is closed on the wall clock: :meth:`OkxProtocol.tick` answers an empty batch with ``now_ms``
  set once ``grace`` has passed after the minute's end (never while the instrument is held
  back). Closing is thus ordered with the trades, which makes a recording reproducible.
* **What is recorded.** With ``record=True`` every delivered trade comes with its line: the
  exact JSON it arrived as. A trade that live finds late *only because its minute was closed on
  the wall clock* (replay would still take it) is wrapped as
  ``{"event":"vstream-late",...,"data":[trade]}``, which replay skips: the replay of a recording
  then yields the very bars live yielded.
* **Exporter lines.** An instrument recorded in the vault exporter's format
  (:meth:`OkxProtocol.record_as`) gets each trade as an exporter line instead. Such a line has
  no ``count`` and carries the instrument's ctVal/ctType, so the trade is delivered as a replay
  reads the line back (:meth:`~vstream.recording.RecordStyle.as_read`: one fill, the line's
  contract facts); the trade-id frontier still follows the record's real ``count``. A trade late
  only by the wall clock cannot be wrapped (the line must be the exporter's twelve keys): it is
  recorded as a plain line and named in :attr:`Emit.late`, for the recorder's late marks
  (:mod:`vstream.sources.late_marks`), which replay drops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgspec

from ..errors import ConfigError
from ..recording import RecordStyle
from ..trades import TRADE_CHANNELS, LineDecoder, Reject, Trade
from . import Batch

log = logging.getLogger("vstream")

MINUTE_MS: Final = 60_000
LATE_EVENT: Final = "vstream-late"
#: The ``file`` named by rejects of REST fill rows (websocket frames name ``ws:{channel}``).
REST_FILE: Final = "rest:history-trades"


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


# --------------------------------------------------- what a frame asks of the connection


@dataclass(slots=True)  # not frozen: one is made per frame, and frozen init is slower
class Push:
    """Trade records pushed for ``inst_id`` (the ``frame_no``-th push: the reject "line")."""

    inst_id: str
    raws: list[msgspec.Raw]
    frame_no: int


@dataclass(frozen=True, slots=True)
class Subscribed:
    """OKX acknowledged the subscription of ``inst_id``."""

    inst_id: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An ``{"event":"error"}`` message."""

    code: str | int | None
    msg: str


@dataclass(frozen=True, slots=True)
class UpgradeNotice:
    """OKX's ``64008`` notice: this connection will be closed for a service upgrade."""

    msg: str


FrameEvent = Push | Subscribed | ErrorFrame | UpgradeNotice


# ----------------------------------------------------------- what the shell must do


@dataclass(slots=True)
class Emit:
    """A batch to hand on, and the lines to record (``(trade ts, line)``) before it.

    ``late`` names the lines (``(index in lines, tradeId)``) that are exporter lines of trades
    late only by the wall clock: the recorder marks them (see the module docs). The shell sets
    ``batch.position`` once the lines are written.
    """

    batch: Batch
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    late: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StartFill:
    """Fetch the fills with ``lo < tradeId <= hi`` (``hi=None``: up to now) and report them
    with :meth:`OkxProtocol.receive_fill` under ``generation``."""

    inst_id: str
    lo: int
    hi: int | None
    generation: int


@dataclass(frozen=True, slots=True)
class CancelFill:
    """The fill of ``generation`` is no longer wanted."""

    inst_id: str
    generation: int


Output = Emit | StartFill | CancelFill


# ------------------------------------------------------------------- per instrument


@dataclass(slots=True)
class _Rec:
    """One delivered-or-held trade record with the exact JSON it arrived as."""

    first: int
    last: int
    trade: Trade
    raw: bytes


@dataclass(slots=True)
class Gap:
    """Trade ids after ``lo`` are missing, up to ``hi`` (None: up to now)."""

    lo: int
    hi: int | None
    generation: int


@dataclass(slots=True)
class InstState:
    """Where one instrument's stream stands."""

    inst_id: str
    decoder: LineDecoder
    frontier: int | None = None
    down: bool = True
    gap: Gap | None = None
    recheck: bool = False
    held: list[_Rec] = field(default_factory=list)
    mark_next: bool = False
    # The engine's open minute as far as this session's deliveries and closes go.
    shadow_open: int | None = None
    shadow_closed: bool = False
    # The newest trade (id, ts) the catch-up of a recording replayed.
    replayed_newest: tuple[int, int] | None = None
    # Recorded as exporter lines in this style (None: as the OKX JSON that arrived).
    style: RecordStyle | None = None

    @property
    def held_back(self) -> bool:
        """Minutes must not be closed on the wall clock: trades may still be missing."""
        return self.down or self.gap is not None


_Item = _Rec | None  # None marks "flag the open minute as gapped here"


def _last(rec: _Rec) -> int:
    return rec.last


class OkxProtocol:
    """The live OKX stream of ``inst_ids`` as a synchronous state machine (see module docs).

    Args:
        inst_ids: the instruments (already validated by the caller).
        channel: ``"trades"`` (a record covers ``count`` ids) or ``"trades-all"``.
        grace_ms: milliseconds after a minute ends before it is closed on the wall clock.
        max_held: records held back per instrument before a gap is given up early.
        gap_timeout: seconds the shell lets a fill try (only named in the give-up warning).
        backfill_limit: seconds; a recording whose newest trade is older is not filled from.
        record: answer every delivered trade with the line to record.
        stats: counters to add to (shared with the shell), or a fresh :class:`OkxStats`.

    Every method takes the time it needs (``now_ms``, wall clock in milliseconds) and returns
    what the shell must do, in order. Nothing here blocks or awaits.
    """

    def __init__(
        self,
        inst_ids: Sequence[str],
        *,
        channel: str = "trades",
        grace_ms: int = 2000,
        max_held: int = 500_000,
        gap_timeout: float = 60.0,
        backfill_limit: float = 3600.0,
        record: bool = False,
        stats: OkxStats | None = None,
    ) -> None:
        if channel not in TRADE_CHANNELS:
            raise ConfigError(f"channel must be 'trades' or 'trades-all', not {channel!r}")
        self.inst_ids = tuple(dict.fromkeys(inst_ids))
        self.channel = channel
        self.grace_ms = grace_ms
        self.max_held = max_held
        self.gap_timeout = gap_timeout
        self.backfill_limit = backfill_limit
        self.record = record
        self.stats = stats if stats is not None else OkxStats()
        #: Per instrument state, by id.
        self.instruments = {i: InstState(i, LineDecoder(i)) for i in self.inst_ids}
        self._generation = 0
        self._frame_no = 0
        self._ws_file = f"ws:{channel}"
        self._late_prefix = b'{"event":"' + LATE_EVENT.encode() + b'","arg":'

    def record_as(self, inst_id: str, style: RecordStyle | None) -> None:
        """Record ``inst_id``'s trades as exporter lines of ``style`` (None: as OKX JSON); set
        before its first delivery (the shell does it once the recording is caught up)."""
        self.instruments[inst_id].style = style

    # -- frames -------------------------------------------------------------------------

    def receive_frame(
        self, message: str | bytes, inst_ids: Collection[str] | None = None
    ) -> FrameEvent | None:
        """What one websocket message means, for a connection subscribed to ``inst_ids``
        (default: all). None for what needs nothing: ``pong``, acks of other kinds, other
        notices, and malformed frames or pushes of another channel or instrument (counted as
        ``malformed``). A frame carrying an ``event`` is never a push."""
        if isinstance(message, str):
            if message == "pong":
                return None
            data = message.encode()
        else:
            data = message
        try:
            frame = _frame_decoder.decode(data)
        except msgspec.DecodeError:
            self.stats.malformed += 1
            log.warning("malformed frame from OKX ignored: %r", data[:200])
            return None
        event = frame.event
        if event is None:
            arg = frame.arg
            if arg is None or frame.data is None:
                return None
            members = self.inst_ids if inst_ids is None else inst_ids
            if arg.channel != self.channel or arg.instId not in members:
                self.stats.malformed += 1
                return None
            self._frame_no += 1
            return Push(arg.instId, frame.data, self._frame_no)
        if event == "subscribe":
            return Subscribed(frame.arg.instId) if frame.arg is not None else None
        if event == "error":
            return ErrorFrame(frame.code, frame.msg)
        if event == "notice" and str(frame.code) == "64008":
            return UpgradeNotice(frame.msg)
        return None

    def receive_push(self, push: Push, now_ms: int) -> list[Output]:
        """Take the records of a push: deliver, hold back behind a gap, or open one."""
        st = self.instruments.get(push.inst_id)
        if st is None:
            return []
        self.stats.frames += 1
        recs, rejects, skipped = self._decode(
            st, [bytes(r) for r in push.raws], self._ws_file, push.frame_no, now_ms
        )
        self.stats.trades += len(recs)
        recs.sort(key=_last)
        out: list[Output] = []
        items: list[_Item] = []
        for rec in recs:
            self._admit(st, rec, items, out, now_ms)
        out += self._deliver(st, items)
        if rejects or skipped:
            out.append(Emit(Batch(st.inst_id, [], rejects, skipped)))
        return out

    # -- connections --------------------------------------------------------------------

    def connection_opened(self, inst_ids: Iterable[str]) -> list[Output]:
        """A connection for ``inst_ids`` is subscribed: what was pushed while they were down
        (from the frontier on) must be fetched."""
        out: list[Output] = []
        for inst_id in inst_ids:
            st = self.instruments[inst_id]
            st.down = False
            if st.frontier is None:
                continue
            if st.gap is not None:
                st.recheck = True  # what was pushed while down lies past this gap
            else:
                self._open_gap(st, st.frontier, None, out)
        return out

    def connection_lost(self, inst_ids: Iterable[str]) -> list[Output]:
        """The connection for ``inst_ids`` is gone: hold their minutes open until refilled."""
        for inst_id in inst_ids:
            self.instruments[inst_id].down = True
        return []

    # -- gap fills ----------------------------------------------------------------------

    def receive_fill(
        self,
        inst_id: str,
        generation: int,
        rows: Mapping[int, msgspec.Raw | bytes],
        *,
        complete: bool,
        now_ms: int,
        error: str = "",
    ) -> list[Output]:
        """The answer to :class:`StartFill` ``generation``: the fills found by trade id, and
        whether they cover the gap (if not, the gap is given up: known trades are delivered,
        the minutes at its edges flagged). A stale generation is ignored."""
        st = self.instruments[inst_id]
        gap = st.gap
        if gap is None or gap.generation != generation:
            return []
        out: list[Output] = []
        if not complete:
            log.warning(
                "%s: could not fill the trade-id gap after %d within %.0fs (%s); "
                "emitting its minutes flagged \"gap\": true",
                st.inst_id, gap.lo, self.gap_timeout, error,
            )
            items = self._give_up(st, rows, out, now_ms)
            out += self._deliver(st, items)
            return out
        self.stats.gaps_filled += 1
        filled = self._fill_records(st, rows, now_ms)
        self.stats.filled_trades += len(filled)
        st.gap = None
        held, st.held = st.held, []
        items = []
        for rec in filled:
            self._admit(st, rec, items, out, now_ms)
        if st.gap is None and gap.hi is not None:
            st.frontier = max(st.frontier or gap.hi, gap.hi)
        if st.gap is None and st.recheck and st.frontier is not None:
            # The connection dropped while this gap was filled: fetch what came after it.
            st.recheck = False
            self._open_gap(st, st.frontier, None, out)
            st.held += held
        else:
            for rec in held:
                self._admit(st, rec, items, out, now_ms)
        out += self._deliver(st, items)
        return out

    # -- wall-clock closing -------------------------------------------------------------

    def _due_ms(self, st: InstState) -> int | None:
        if st.shadow_open is None or st.shadow_closed or st.held_back:
            return None
        return (st.shadow_open + 1) * MINUTE_MS + self.grace_ms

    def next_deadline(self) -> int | None:
        """Wall-clock ms at which :meth:`tick` will next close a minute (None: nothing due)."""
        dues = [d for d in map(self._due_ms, self.instruments.values()) if d is not None]
        return min(dues) if dues else None

    def tick(self, now_ms: int) -> list[Output]:
        """Close, in-band, every open minute whose end + grace has passed at ``now_ms``."""
        out: list[Output] = []
        for st in self.instruments.values():
            due = self._due_ms(st)
            if due is not None and now_ms >= due:
                st.shadow_closed = True
                out.append(Emit(Batch(st.inst_id, [], now_ms=now_ms)))
        return out

    # -- resuming a recording -----------------------------------------------------------

    def replayed(self, inst_id: str, trades: Iterable[Trade]) -> None:
        """The catch-up of a recording handed these trades to the engine."""
        st = self.instruments[inst_id]
        for trade in trades:
            tid = int(trade.tradeId)
            if st.replayed_newest is None or tid > st.replayed_newest[0]:
                st.replayed_newest = (tid, trade.ts)
            minute = trade.ts // MINUTE_MS
            if st.shadow_open is None or minute > st.shadow_open:
                st.shadow_open = minute

    def resume_from(
        self, inst_id: str, recorded: tuple[int, int] | None, now_ms: int
    ) -> list[Output]:
        """Continue after the newest replayed trade, else ``recorded`` (id, ts): the first
        connection then fills what was missed — unless it is older than ``backfill_limit``,
        when the open minute is flagged as a gap instead."""
        st = self.instruments[inst_id]
        newest = st.replayed_newest or recorded
        if newest is None:
            return []
        newest_id, newest_ts = newest
        age = (now_ms - newest_ts) / 1000
        if age <= self.backfill_limit:
            st.frontier = newest_id  # the first connection fills from here
            return []
        log.warning(
            "%s: the last recorded trade is %.0fs old (more than %.0fs): not fetching what "
            "was missed; the open minute, if any, is flagged \"gap\": true",
            inst_id, age, self.backfill_limit,
        )
        st.mark_next = False
        return [Emit(Batch(inst_id, [], gap=True))]

    # -- trades and gaps ----------------------------------------------------------------

    def _decode(
        self, st: InstState, raws: Sequence[bytes], file: str, frame_no: int, now_ms: int
    ) -> tuple[list[_Rec], list[Reject], int]:
        recs: list[_Rec] = []
        rejects: list[Reject] = []
        skipped = 0
        per_count = self.channel == "trades"
        for raw in raws:
            if b"\n" in raw or b"\r" in raw:
                # A recorded line must stay one line.
                with contextlib.suppress(msgspec.DecodeError):
                    raw = msgspec.json.encode(msgspec.json.decode(raw))
            decoded = st.decoder.decode([raw], file=file, first_line=frame_no, now_ms=now_ms)
            rejects += decoded.rejects
            skipped += decoded.skipped
            for trade in decoded.trades:
                last = int(trade.tradeId)
                first = last - trade.count + 1 if per_count else last
                recs.append(_Rec(first, last, trade, bytes(raw)))
        return recs, rejects, skipped

    def _admit(
        self, st: InstState, rec: _Rec, items: list[_Item], out: list[Output], now_ms: int
    ) -> None:
        if st.gap is not None:
            st.held.append(rec)
            if len(st.held) > self.max_held:
                log.warning(
                    "%s: %d records held back behind a gap; giving up on it",
                    st.inst_id, len(st.held),
                )
                items += self._give_up(st, {}, out, now_ms)
            return
        frontier = st.frontier
        if frontier is None or rec.first == frontier + 1:
            if st.mark_next:
                st.mark_next = False
                items += [rec, None]
            else:
                items.append(rec)
            st.frontier = rec.last if frontier is None else max(frontier, rec.last)
        elif rec.last <= frontier:
            self.stats.duplicates += 1
        elif rec.first <= frontier:
            # Straddles the frontier: its fills come one by one from REST instead.
            self._open_gap(st, frontier, rec.last, out)
        else:
            self._open_gap(st, frontier, rec.first - 1, out)
            st.held.append(rec)

    def _open_gap(self, st: InstState, lo: int, hi: int | None, out: list[Output]) -> None:
        self._generation += 1
        self.stats.gaps += 1
        st.gap = Gap(lo, hi, self._generation)
        log.info(
            "%s: trade ids after %d missing (up to %s); filling from REST",
            st.inst_id, lo, hi if hi is not None else "now",
        )
        out.append(StartFill(st.inst_id, lo, hi, self._generation))

    def _give_up(
        self,
        st: InstState,
        rows: Mapping[int, msgspec.Raw | bytes],
        out: list[Output],
        now_ms: int,
    ) -> list[_Item]:
        """Deliver what is known around an unfillable gap, flagging the minutes at its edges."""
        assert st.gap is not None
        self.stats.gaps_failed += 1
        lo = st.gap.lo
        out.append(CancelFill(st.inst_id, st.gap.generation))
        st.gap = None
        st.recheck = False
        recs = self._fill_records(st, rows, now_ms) + st.held
        st.held = []
        recs = sorted((r for r in recs if r.last > lo), key=_last)
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
            st.mark_next = True
            st.frontier = None  # the next record starts a new base
        else:
            st.frontier = seen
        return items

    def _fill_records(
        self, st: InstState, rows: Mapping[int, msgspec.Raw | bytes], now_ms: int
    ) -> list[_Rec]:
        ordered = [bytes(rows[k]) for k in sorted(rows)]
        if self.channel == "trades":
            ordered = merge_fills(ordered)
        recs, rejects, _ = self._decode(st, ordered, REST_FILE, 0, now_ms)
        for reject in rejects:
            log.warning("%s: bad row from OKX history: %s", st.inst_id, reject.error)
        return recs

    # -- delivering ---------------------------------------------------------------------

    def _deliver(self, st: InstState, items: list[_Item]) -> list[Emit]:
        """Turn delivered records into batches (with their lines, when recording)."""
        out: list[Emit] = []
        trades: list[Trade] = []
        gap_next = False
        lines: list[tuple[int, bytes]] = []
        late: list[tuple[int, str]] = []
        style = st.style if self.record else None
        for item in items:
            if item is None:
                if trades or lines:
                    out.append(Emit(Batch(st.inst_id, trades, gap=gap_next), lines, late))
                    lines = []
                    trades = []
                    late = []
                gap_next = True
                continue
            trade = item.trade
            minute = trade.ts // MINUTE_MS
            late_by_clock = minute == st.shadow_open and st.shadow_closed
            if st.shadow_open is None or minute > st.shadow_open:
                st.shadow_open = minute
                st.shadow_closed = False
            if style is not None:
                # The line is written from the trade as it arrived (the contract's texts), the
                # engine gets it as a replay will read that line.
                line = style.line(trade)
                trade = style.as_read(trade)
                if late_by_clock:
                    self.stats.late_recorded += 1
                    late.append((len(lines), trade.tradeId))
                lines.append((trade.ts, line))
            elif self.record:
                if late_by_clock:
                    self.stats.late_recorded += 1
                    line = (
                        self._late_prefix
                        + msgspec.json.encode({"channel": self.channel, "instId": st.inst_id})
                        + b',"data":[' + item.raw + b"]}\n"
                    )
                else:
                    line = item.raw + b"\n"
                lines.append((trade.ts, line))
            trades.append(trade)
        if trades or lines or gap_next:
            out.append(Emit(Batch(st.inst_id, trades, gap=gap_next), lines, late))
        return out


# ----------------------------------------------------------------------------- helpers


def fill_complete(rows: Mapping[int, Any], lo: int, hi: int | None) -> bool:
    """Do ``rows`` (by trade id) hold every id of ``lo < id <= hi`` (``hi=None``: a run
    from ``lo + 1`` without holes, or nothing at all)?"""
    if hi is not None:
        return all(i in rows for i in range(lo + 1, hi + 1))
    if not rows:
        return True  # nothing happened while we were away (as far as OKX knows)
    return len(rows) == max(rows) - lo and min(rows) == lo + 1


def merge_fills(raws: list[bytes]) -> list[bytes]:
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


__all__ = [
    "CancelFill",
    "Emit",
    "ErrorFrame",
    "FrameEvent",
    "Gap",
    "InstState",
    "OkxProtocol",
    "OkxStats",
    "Output",
    "Push",
    "StartFill",
    "Subscribed",
    "UpgradeNotice",
    "fill_complete",
    "merge_fills",
]
