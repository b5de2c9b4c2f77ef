"""Poor highs and lows in the bar files, and which of them later bars have left untouched.

A footprint bar's ``poor_high`` (``poor_low``) says its highest (lowest) level traded both buy
and sell: an auction that did not finish there, a price the market tends to come back to
(docs/levels.md). This module reads a bar file once, front to back, and gives every such
level with the first later bar that traded through it, if any: a poor high is *touched* by the
first later bar whose high is at or above it, a poor low by the first whose low is at or below.

Only the durable part of the file is read (as ``vstream signals`` does), a megabyte at a time
decoded into a Struct of the five keys every line is needed for (the decoder skips the
footprint), so a year of 1m bars takes well under a second (``python -m bench.levels``).
Prices are compared as doubles: exact for the 15 significant digits every OKX price fits in.
"""

from __future__ import annotations

import calendar
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from .errors import ConfigError
from .instruments import VaultPaths
from .settings import TIMEFRAMES

#: The signal words of the two kinds (the ``levels`` command, ``signals`` tags, alerts).
POOR_HIGH = "poor-high"
POOR_LOW = "poor-low"
KINDS = (POOR_HIGH, POOR_LOW)

#: Bytes decoded at a time (whole lines): small enough that the rows just decoded are still
#: in the CPU's cache when the scan reads them (8 MiB pieces cost a fifth more).
CHUNK = 1 << 20


class _Row(msgspec.Struct, gc=False):
    """What the scan reads of every bar line; the decoder skips the rest (the footprint)."""

    timestamp_utc: str
    high: str
    low: str
    poor_high: bool | None = None
    poor_low: bool | None = None


class _Last(msgspec.Struct, gc=False):
    """What the scan reads of the last bar line besides."""

    timestamp_utc: str
    close: str
    poc: str | None = None


_rows = msgspec.json.Decoder(_Row)
_last = msgspec.json.Decoder(_Last)


class Level(msgspec.Struct, frozen=True, gc=False):
    """One poor high or low: the bar it ends (``timestamp_utc``, the bar's start), its kind
    (:data:`POOR_HIGH` or :data:`POOR_LOW`), its price (the bar's high or low, as written) and
    the start of the first later bar that traded through it (None: untouched)."""

    timestamp_utc: str
    kind: str
    price: str
    touched_at: str | None

    @property
    def touched(self) -> bool:
        return self.touched_at is not None


@dataclass
class LevelScan:
    """What :func:`scan_levels` found in one instrument's bar file."""

    inst_id: str
    timeframe: str
    levels: list[Level] = field(default_factory=list)
    #: Bars read, and how many of them carry poor flags (bars without them have no footprint,
    #: or were written before vstream marked them: ``replay --rebuild`` adds them).
    bars: int = 0
    marked: int = 0
    last_timestamp: str | None = None
    last_close: str | None = None
    #: Whether the last bar read has a footprint.
    last_footprint: bool = False

    @property
    def unmarked(self) -> int:
        return self.bars - self.marked

    @property
    def last_end(self) -> int | None:
        """When the last bar read ends (epoch seconds), or None without bars."""
        if self.last_timestamp is None:
            return None
        return stamp_seconds(self.last_timestamp) + 60 * TIMEFRAMES[self.timeframe]


_DAYS: dict[str, int] = {}


def stamp_seconds(stamp: str) -> int:
    """``2025-12-14T21:34:00Z`` as epoch seconds (each day parsed once)."""
    day = _DAYS.get(stamp[:10])
    if day is None:
        if len(_DAYS) > 4096:
            _DAYS.clear()
        day = _DAYS[stamp[:10]] = calendar.timegm(time.strptime(stamp[:10], "%Y-%m-%d"))
    return day + int(stamp[11:13]) * 3600 + int(stamp[14:16]) * 60 + int(stamp[17:19])


def minute_stamp(seconds: float) -> str:
    """The ``timestamp_utc`` of the minute holding ``seconds``; past either end of the years
    1..9999, a text that sorts before (after) every bar."""
    try:
        moment = datetime.fromtimestamp(seconds - seconds % 60, UTC)
    except (OverflowError, OSError, ValueError):
        return "0" if seconds < 0 else "A"
    # isoformat, not strftime: "%Y" writes year 500 as "500", which sorts after "2025".
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _chunks(path: Path, start: int, limit: int) -> Iterator[list[_Row]]:
    """The decoded lines of ``path`` from byte ``start`` (a line start) to the last newline
    before ``limit``, a chunk at a time; a line that does not decode is skipped.

    Plain reads, not a memory map: replay may cut the file back while it is read (a mapped
    file cut short kills the reader on Linux and cannot be cut at all on Windows)."""
    pos = start
    with open(path, "rb") as handle:
        while pos < limit:
            handle.seek(pos)
            data = handle.read(min(CHUNK, limit - pos))
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if pos + len(data) >= limit or not data:
                    return  # a last line without its newline: not durable yet
                data += handle.readline(limit - pos - len(data))  # a line longer than a chunk
                if not data.endswith(b"\n"):
                    return
                cut = len(data)
            with memoryview(data)[:cut] as view:
                try:
                    rows = _rows.decode_lines(view)
                except msgspec.DecodeError:
                    rows = _careful(data[:cut])
            pos += cut
            yield rows


def _careful(chunk: bytes) -> list[_Row]:
    rows = []
    for line in chunk.split(b"\n"):
        if line.strip():
            with contextlib.suppress(msgspec.DecodeError):
                rows.append(_rows.decode(line))
    return rows


def scan_levels(
    paths: VaultPaths,
    timeframe: str = "1m",
    *,
    since: str | None = None,
    until: str | None = None,
    touched: bool = True,
) -> LevelScan:
    """Every poor high and low among the durable bars of ``timeframe`` with
    ``since <= timestamp_utc < until``, in time order (a bar's high before its low), each
    with the first later bar in that range that traded through it (without ``touched``, only
    the levels no later bar has traded through).

    Raises :class:`ConfigError` when the file is missing (``durable_length``).
    """
    from .query import _last_line, _seek, durable_length

    path, limit = durable_length(paths, timeframe)
    scan = LevelScan(paths.inst_id, timeframe)
    start = 0
    if since is not None or until is not None:
        with open(path, "rb") as handle:
            if since is not None:
                start = _seek(handle, limit, since)
            if until is not None:
                limit = _seek(handle, limit, until)
    stamps: list[str] = []
    kinds: list[str] = []
    prices: list[str] = []
    touches: list[str | None] = []
    # The poor highs not yet traded through, as parallel stacks: each one's price is above
    # every high since (else it would be touched), so the prices fall from bottom to top and
    # a new high touches a run from the top. The same for lows, rising.
    high_px: list[float] = []
    high_at: list[int] = []
    low_px: list[float] = []
    low_at: list[int] = []
    inf = float("inf")
    top_high, top_low = inf, -inf
    bars = marked = 0
    for rows in _chunks(path, start, limit):
        bars += len(rows)
        for row in rows:
            stamp = row.timestamp_utc
            high = float(row.high)
            if high >= top_high:
                while high_px and high_px[-1] <= high:
                    high_px.pop()
                    touches[high_at.pop()] = stamp
                top_high = high_px[-1] if high_px else inf
            low = float(row.low)
            if low <= top_low:
                while low_px and low_px[-1] >= low:
                    low_px.pop()
                    touches[low_at.pop()] = stamp
                top_low = low_px[-1] if low_px else -inf
            poor_high = row.poor_high
            if poor_high is None:
                continue
            marked += 1
            if poor_high:
                high_px.append(high)
                high_at.append(len(stamps))
                top_high = high
                stamps.append(stamp)
                kinds.append(POOR_HIGH)
                prices.append(row.high)
                touches.append(None)
            if row.poor_low:
                low_px.append(low)
                low_at.append(len(stamps))
                top_low = low
                stamps.append(stamp)
                kinds.append(POOR_LOW)
                prices.append(row.low)
                touches.append(None)
    scan.bars, scan.marked = bars, marked
    line = _last_line(path, limit) if bars else None
    if line is not None:
        with contextlib.suppress(msgspec.DecodeError):
            last = _last.decode(line)
            scan.last_timestamp, scan.last_close = last.timestamp_utc, last.close
            scan.last_footprint = last.poc is not None
    if touched:
        scan.levels = list(map(Level, stamps, kinds, prices, touches))
    else:
        scan.levels = [Level(stamps[i], kinds[i], prices[i], None) for i in sorted(high_at + low_at)]
    return scan


def require_marks(scan: LevelScan) -> None:
    """:class:`ConfigError` (exit 2) when the scanned bars have bars but no poor flags: they
    were built without a footprint, or before vstream marked poor highs and lows."""
    if scan.bars == 0 or scan.marked > 0:
        return
    where = f"{scan.inst_id}: the {scan.timeframe} bars"
    if scan.last_footprint:
        raise ConfigError(
            f"{where} were written before vstream marked poor highs and lows: "
            f"replay --instId {scan.inst_id} --rebuild (the stored footprint is kept) to add them"
        )
    raise ConfigError(
        f"{where} have no footprint, and poor highs and lows need one: "
        f"replay --instId {scan.inst_id} --rebuild --footprint TICK"
    )


class LevelView(msgspec.Struct, frozen=True, gc=False):
    """A level as ``vstream levels`` shows it: its age at ``now`` and its distance from the
    last close (price − close: positive above it), in price, ticks and percent."""

    level: Level
    inst_id: str
    timeframe: str
    age_seconds: int
    distance: Decimal
    distance_ticks: float | None
    distance_pct: float

    def to_dict(self) -> dict[str, object]:
        lv = self.level
        return {
            "timestamp_utc": lv.timestamp_utc,
            "instId": self.inst_id,
            "timeframe": self.timeframe,
            "kind": lv.kind,
            "price": lv.price,
            "age_seconds": self.age_seconds,
            "touched": lv.touched,
            "touched_at": lv.touched_at,
            "distance": signed(self.distance),
            "distance_ticks": self.distance_ticks,
            "distance_pct": self.distance_pct,
        }


def signed(value: Decimal) -> str:
    """``+21.7``, ``-3``, ``+0`` (never ``-0``)."""
    text = f"{value:f}"
    return text if text.startswith("-") and value != 0 else "+" + text.lstrip("-")


def views(
    scan: LevelScan,
    *,
    now: float | None = None,
    tick: float | None = None,
    kinds: frozenset[str] = frozenset(KINDS),
    untouched: bool = False,
    min_age: float = 0.0,
    max_age: float | None = None,
) -> list[LevelView]:
    """The levels of ``scan`` that pass the filters, with their age at ``now`` (default: the
    end of the last bar read) measured from their bar's end, ``min_age <= age <= max_age``."""
    if scan.last_close is None:
        return []
    moment = now if now is not None else scan.last_end
    assert moment is not None
    minutes = TIMEFRAMES[scan.timeframe]
    close = Decimal(scan.last_close)
    step = Decimal(repr(float(tick))) if tick is not None else None
    out = []
    for level in scan.levels:
        if level.kind not in kinds or (untouched and level.touched):
            continue
        age = moment - (stamp_seconds(level.timestamp_utc) + 60 * minutes)
        if age < min_age or (max_age is not None and age > max_age):
            continue
        distance = Decimal(level.price) - close
        out.append(
            LevelView(
                level=level,
                inst_id=scan.inst_id,
                timeframe=scan.timeframe,
                age_seconds=int(age),
                distance=distance,
                distance_ticks=round(float(distance / step), 2) if step is not None else None,
                distance_pct=round(float(distance / close * 100), 4),
            )
        )
    return out


def find_levels(
    paths: VaultPaths,
    timeframe: str = "1m",
    *,
    now: float | None = None,
    min_age: float = 0.0,
    max_age: float | None = None,
    kinds: frozenset[str] = frozenset(KINDS),
    untouched: bool = False,
    tick: float | None = None,
) -> list[LevelView]:
    """The poor highs and lows of one instrument as they stand at ``now`` (epoch seconds;
    default the end of the last durable bar): only bars that ended by then count, for the
    levels, their touches and the last close alike. With ``max_age`` the file is read from
    the first bar that can still be that young, not from its start.

    :class:`ConfigError` when there is no such bar file, or its bars carry no poor flags.
    """
    from .query import _last_line, durable_length

    seconds = 60 * TIMEFRAMES[timeframe]
    until = minute_stamp(now - seconds + 60) if now is not None else None
    since = None
    if max_age is not None:
        moment = now
        if moment is None:
            path, limit = durable_length(paths, timeframe)
            line = _last_line(path, limit)
            with contextlib.suppress(msgspec.DecodeError, ValueError):
                moment = stamp_seconds(_last.decode(line).timestamp_utc) + seconds if line else None
        if moment is not None:
            # A bar starting at or after this ends at most max_age before the moment.
            since = minute_stamp(math.ceil((moment - max_age - seconds) / 60) * 60)
    scan = scan_levels(paths, timeframe, since=since, until=until, touched=not untouched)
    require_marks(scan)
    return views(scan, now=now, tick=tick, kinds=kinds, untouched=untouched, min_age=min_age, max_age=max_age)


def untouched_marks(paths: VaultPaths, timeframe: str = "1m", since: str | None = None) -> set[tuple[str, str]]:
    """``(timestamp_utc, kind)`` of the poor highs and lows at or after ``since`` that no later
    bar in the file has traded through (``vstream signals --untouched``)."""
    scan = scan_levels(paths, timeframe, since=since, touched=False)
    return {(lv.timestamp_utc, lv.kind) for lv in scan.levels}
