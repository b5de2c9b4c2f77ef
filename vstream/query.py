"""``vstream signals`` and ``vstream status``: reading what replay wrote, without locking.

Both read only the durable part of an output file — the length the state records — so bars
a running (or crashed) replay appended after its last checkpoint are never shown: they may be
cut back and recomputed by the next run.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import re
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Protocol

import msgspec

from .assembler import Bar
from .errors import ConfigError, StateError
from .instruments import Kind, VaultPaths, discover, kind_of
from .levels import POOR_HIGH, POOR_LOW, untouched_marks
from .settings import TIMEFRAMES
from .sources.replay import day_files, describe_ignored, ignored_files
from .state import State, read_state, write_atomic
from .takeover import would_take_over

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TIERS = ("T1", "T2", "T3", "T4")


class _Stamp(msgspec.Struct):
    timestamp_utc: str = ""


_stamp = msgspec.json.Decoder(_Stamp)
_bar = msgspec.json.Decoder(Bar)


def parse_time(text: str, now: float) -> str:
    """A ``--since``/``--until`` value as a ``timestamp_utc`` string (minute precision).

    Accepts ISO dates and times (``2025-12-14``, ``2025-12-14T21:34``, ``...Z``, ``+08:00``;
    no zone means UTC) and durations back from now (``90m``, ``6h``, ``2d``, ``1w``).
    """
    value = text.strip()
    match = _RELATIVE.match(value)
    try:
        if match:
            moment = datetime.fromtimestamp(now - parse_duration(value), UTC)
        else:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ConfigError(
                    f"cannot read time {text!r}: use ISO (2025-12-14T21:34Z) or a duration (6h, 2d)"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            moment = moment.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        # A duration reaching before year 1, or an ISO time whose zone moves it past year 9999.
        raise ConfigError(f"time {text!r} is out of range (UTC years 1 to 9999)") from None
    # isoformat, not strftime: "%Y" gives year 500 as "500", which sorts after "2025".
    return moment.replace(second=0, microsecond=0, tzinfo=None).isoformat() + "Z"


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1d`` as seconds."""
    match = _RELATIVE.match(text.strip())
    if not match:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 90s, 15m, 2h, 1d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ConfigError(f"duration {text!r} is too large")
    return seconds


# -- reading outputs ----------------------------------------------------------------------


def durable_length(paths: VaultPaths, timeframe: str) -> tuple[Path, int]:
    """The output file of ``timeframe`` and how many of its bytes are durable.

    Without a readable state the whole file counts (a vault copied without its state).
    """
    path = paths.output(timeframe)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        hint = "" if timeframe == "1m" else f" (replay with --timeframes 1m,{timeframe})"
        raise ConfigError(f"{paths.inst_id}: no {timeframe} bars in {path.parent}{hint}") from None
    try:
        state = read_state(paths.state)
    except StateError:
        return path, size
    recorded = state.output_length if timeframe == "1m" else state.timeframe_lengths.get(timeframe)
    return path, size if recorded is None else min(size, recorded)


def _line_at(handle: IO[bytes], pos: int, limit: int) -> tuple[int, bytes]:
    """The first line starting at or after ``pos`` (its start and bytes); ``b""`` at the end."""
    if pos > 0:
        handle.seek(pos - 1)
        handle.readline()
        pos = handle.tell()
    else:
        handle.seek(0)
    if pos >= limit:
        return limit, b""
    return pos, handle.readline()[: limit - pos]


def _seek(handle: IO[bytes], limit: int, key: str) -> int:
    """Byte offset of the first bar at or after ``key`` (bars are in time order)."""
    wanted = key.encode()

    def at_or_after(pos: int) -> bool:
        _, line = _line_at(handle, pos, limit)
        if not line.strip():
            return True
        try:
            return _stamp.decode(line).timestamp_utc.encode() >= wanted
        except msgspec.DecodeError:
            return False

    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if at_or_after(mid):
            hi = mid
        else:
            lo = mid + 1
    return _line_at(handle, lo, limit)[0]


def read_bars(
    paths: VaultPaths, timeframe: str = "1m", since: str | None = None, until: str | None = None
) -> Iterator[tuple[Bar, bytes]]:
    """Durable bars of one instrument with ``since <= timestamp_utc < until``, with their lines."""
    for bar, line, _ in read_bars_after(paths, timeframe, since, until, previous=False):
        yield bar, line


def read_bars_after(
    paths: VaultPaths,
    timeframe: str = "1m",
    since: str | None = None,
    until: str | None = None,
    *,
    previous: bool = True,
) -> Iterator[tuple[Bar, bytes, Bar | None]]:
    """As :func:`read_bars`, each bar with the bar before it in the file (the one before
    ``since`` for the first; None at the start of the file, or without ``previous``)."""
    path, limit = durable_length(paths, timeframe)
    before: Bar | None = None
    with open(path, "rb") as handle:
        start = _seek(handle, limit, since) if since else 0
        if previous and start > 0:
            last = _last_line(path, start)
            if last is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    before = _bar.decode(last)
        handle.seek(start)
        pos = start
        while pos < limit:
            line = handle.readline()
            if not line:
                break
            line = line[: limit - pos]
            pos += len(line)
            if not line.endswith(b"\n") or not line.strip():
                continue
            try:
                bar = _bar.decode(line)
            except msgspec.DecodeError:
                continue
            if until is not None and bar.timestamp_utc >= until:
                break
            yield bar, line, before
            if previous:
                before = bar


# -- signals ------------------------------------------------------------------------------


# The meaning of each signal word, shared by ``vstream signals`` (its options) and by filter
# expressions (``tier=T4 and (absorption or divergence)``, :mod:`vstream.filters`): one
# definition, so an alert rule and the signals command never disagree about a bar.


def tier_in(bar: Bar, tiers: frozenset[str]) -> bool:
    """The bar's volume tier is one of ``tiers`` (a bar warming up has none)."""
    return bar.volume_tier in tiers


def has_absorption(bar: Bar) -> bool:
    return bar.absorption


def has_divergence(bar: Bar, kind: str = "any") -> bool:
    """Divergence of ``kind``: ``any``, ``bearish`` or ``bullish``."""
    return bar.divergence and kind in ("any", bar.divergence_type)


def has_whale(bar: Bar) -> bool:
    """At least one trade of the bar reached ``whale_usd``."""
    return bar.whale_count > 0


def has_stack(bar: Bar, side: str = "any") -> bool:
    """A stacked imbalance of ``side`` (``buy``, ``sell`` or ``any``); footprint bars only."""
    return isinstance(bar.stacked, list) and any(side in ("any", s.side) for s in bar.stacked)


def is_poor(bar: Bar, end: str) -> bool:
    """The bar's ``poor_high`` / ``poor_low`` key (``end`` is ``high`` or ``low``) is true.

    Bars written without those keys (no footprint, or by a vstream that did not make them)
    never match."""
    return getattr(bar, f"poor_{end}", None) is True


def timeframe_of(bar: Bar) -> str:
    """``1m`` for a one-minute bar, else its ``timeframe`` key."""
    return bar.timeframe if isinstance(bar.timeframe, str) else "1m"


@dataclass(frozen=True)
class SignalFilter:
    """Which bars ``vstream signals`` prints.

    A bar matches when its tier is one of ``tiers`` (if given) and it carries at least one of
    the asked-for signals (if any): absorption, divergence (``"any"``, ``"bearish"``,
    ``"bullish"``), whale trades.
    """

    tiers: frozenset[str] = frozenset()
    absorption: bool = False
    divergence: str | None = None
    whale: bool = False
    #: ``"buy"``/``"sell"``: a stacked imbalance of that side (footprint bars only).
    stacked: str | None = None
    #: ``"up"``/``"down"``/``"any"``: the POC moved that way from the previous bar's POC by
    #: more than nothing and at least ``poc_shift_min`` (a price difference).
    poc_shift: str | None = None
    poc_shift_min: Decimal = Decimal(0)
    #: A poor high / poor low (footprint bars only); with ``untouched``, only one that no
    #: later bar in the file has traded through.
    poor_high: bool = False
    poor_low: bool = False
    untouched: bool = False

    @property
    def needs_previous(self) -> bool:
        return self.poc_shift is not None

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = (),
    ) -> bool:
        """Whether ``bar`` is wanted; ``untouched`` holds the ``(timestamp_utc, kind)`` of the
        poor highs and lows no later bar has traded through (:func:`levels.untouched_marks`)."""
        if self.tiers and not tier_in(bar, self.tiers):
            return False
        if not (self.absorption or self.divergence or self.whale or self.stacked or self.poc_shift
                or self.poor_high or self.poor_low):  # fmt: skip
            return True
        for wanted, end, kind in ((self.poor_high, "high", POOR_HIGH), (self.poor_low, "low", POOR_LOW)):
            if wanted and is_poor(bar, end) and (not self.untouched or (bar.timestamp_utc, kind) in untouched):
                return True
        if self.absorption and has_absorption(bar):
            return True
        if self.divergence and has_divergence(bar, self.divergence):
            return True
        if self.stacked and has_stack(bar, self.stacked):
            return True
        if self.poc_shift and poc_shift(bar, previous, self.poc_shift, self.poc_shift_min):
            return True
        return self.whale and has_whale(bar)


def poc_shift(bar: Bar, previous: Bar | None, direction: str, at_least: Decimal = Decimal(0)) -> bool:
    """Whether ``bar``'s POC moved from ``previous``'s (``up``, ``down`` or ``any``) by more
    than zero and at least ``at_least`` in price. False when either has no footprint."""
    before = previous.poc if previous is not None else None
    return poc_moved(bar.poc, before, direction, at_least)


def poc_moved(poc: object, before: object, direction: str, at_least: Decimal = Decimal(0)) -> bool:
    """:func:`poc_shift` on the two POC values themselves (a bar's ``poc``, or None/UNSET
    where there is no footprint)."""
    if not isinstance(poc, str) or not isinstance(before, str):
        return False
    try:
        move = Decimal(poc) - Decimal(before)
    except ArithmeticError:
        return False
    if move == 0 or abs(move) < at_least:
        return False
    return direction == "any" or (direction == "up") == (move > 0)


class BarMatcher(Protocol):
    """What :func:`find_signals` needs of a filter: a :class:`SignalFilter`, or a parsed
    expression (:func:`vstream.filters.parse_filter`)."""

    @property
    def needs_previous(self) -> bool: ...

    @property
    def untouched(self) -> bool: ...

    def matches(
        self, bar: Bar, previous: Bar | None = None, untouched: Container[tuple[str, str]] = ()
    ) -> bool: ...


def find_signals(
    vault: Path,
    inst_ids: Sequence[str],
    flt: BarMatcher,
    *,
    timeframe: str = "1m",
    since: str | None = None,
    until: str | None = None,
) -> Iterator[tuple[Bar, bytes]]:
    """Matching bars of all ``inst_ids``, merged in time order (then by instrument)."""
    streams = []
    for inst in inst_ids:
        paths = VaultPaths.of(vault, inst)
        durable_length(paths, timeframe)  # fail early and clearly for a missing output
        # Touched or not is decided by every later bar in the file, past --until too.
        marks = untouched_marks(paths, timeframe, since) if flt.untouched else set()
        bars = read_bars_after(paths, timeframe, since, until, previous=flt.needs_previous)
        streams.append(
            ((b.timestamp_utc, b.instId, line, b) for b, line, prev in bars if flt.matches(b, prev, marks))
        )
    for _, _, line, bar in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        yield bar, line


def signal_tags(bar: Bar) -> str:
    """The signals of a bar in words: ``absorption bearish-divergence whale×2``."""
    tags = []
    if bar.absorption:
        tags.append("absorption")
    if bar.divergence:
        tags.append(f"{bar.divergence_type}-divergence")
    if bar.whale_count:
        tags.append(f"whale×{bar.whale_count}")
    if bar.gap is True:
        tags.append("gap")
    if isinstance(bar.stacked, list):
        for side in ("buy", "sell"):
            if any(s.side == side for s in bar.stacked):
                tags.append(f"stacked-{side}")
    if bar.poor_high is True:
        tags.append(POOR_HIGH)
    if bar.poor_low is True:
        tags.append(POOR_LOW)
    return " ".join(tags)


SIGNAL_COLUMNS = ("timestamp_utc", "instId", "close", "chg%", "volume", "delta", "ratio", "tier", "signals")


def signal_row(bar: Bar) -> list[str]:
    return [
        bar.timestamp_utc,
        bar.instId + (f" {bar.timeframe}" if isinstance(bar.timeframe, str) else ""),
        bar.close,
        bar.price_change_pct,
        bar.total_volume,
        bar.delta,
        bar.volume_ratio or "-",
        bar.volume_tier or "-",
        signal_tags(bar),
    ]


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    """Plain aligned text columns (``right`` holds the indexes of right-aligned ones)."""
    rows = [list(header), *map(list, rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return out


# -- status -------------------------------------------------------------------------------


@dataclass
class InstrumentStatus:
    """One instrument's health, as ``vstream status`` prints it."""

    instId: str
    last_bar: str | None = None
    lag_seconds: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    rejects_new: int | None = None
    backlog_bytes: int = 0
    timeframes: dict[str, str | None] = field(default_factory=dict)
    replayed: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


class _Memo(msgspec.Struct):
    """What the previous ``status`` saw, to tell whether rejects keep coming."""

    checked_at: str = ""
    rejects: dict[str, int] = msgspec.field(default_factory=dict)


def memo_path(vault: Path) -> Path:
    return vault / "state" / "volume" / "status.json"


def _last_line(path: Path, limit: int) -> bytes | None:
    """The last complete line within the first ``limit`` bytes of ``path``."""
    if limit <= 0:
        return None
    with open(path, "rb") as handle:
        block = 4096
        while True:
            start = max(0, limit - block)
            handle.seek(start)
            data = handle.read(limit - start)
            body = data[: data.rfind(b"\n") + 1] if start + len(data) >= limit else data
            lines = [ln for ln in body.split(b"\n") if ln.strip()]
            if len(lines) >= 2 or start == 0:
                return lines[-1] if lines else None
            block *= 4


def known_instruments(vault: Path) -> list[str]:
    """Instruments with a state file (replay's or sink-jsonl's) or trade files in the vault
    (files replay would not read included, so that status can point at them)."""
    found = set(discover(vault))
    for kind in Kind:
        raw = vault / "raw" / "okx" / f"trades_{kind.folder}"
        with contextlib.suppress(OSError):
            for child in raw.iterdir():
                with contextlib.suppress(ConfigError):
                    if child.name not in found and kind_of(child.name) is kind and ignored_files(child):
                        found.add(child.name)
        folder = vault / "state" / "volume" / "okx" / kind.folder
        if folder.is_dir():
            for child in [*folder.glob("*.state.json"), *folder.glob("*.nats-sink.json")]:
                inst = child.name[: -len(".state.json")] if child.name.endswith(".state.json") else child.name[: -len(".nats-sink.json")]
                try:
                    kind_of(inst)
                except ConfigError:
                    continue
                found.add(inst)
    return sorted(found)


def _backlog(paths: VaultPaths, state: State) -> int:
    total = 0
    for day, path in day_files(paths.raw_dir):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        pos = state.files.get(day)
        if path.name.endswith(".gz"):
            total += 0 if pos is not None and pos.complete else size
        else:
            total += max(0, size - (pos.offset if pos is not None else 0))
    return total


_PENDING_TAKEOVER = (
    "written by volume_analyzer.py: the next replay takes it over (moves its files aside, rebuilds)"
)


def instrument_status(
    vault: Path,
    inst_id: str,
    *,
    now: float,
    max_lag: float | None = None,
    previous_rejects: int | None = None,
    required: bool = True,
) -> InstrumentStatus:
    """Check one instrument: state readable, outputs consistent, lag, rejects since last time."""
    paths = VaultPaths.of(vault, inst_id)
    status = InstrumentStatus(inst_id)
    ignored = ignored_files(paths.raw_dir)
    if ignored:
        status.problems.append(
            f"replay does not read {len(ignored)} file(s) in {paths.raw_dir}, not named "
            f"YYYY-MM-DD.jsonl or .jsonl.gz: {describe_ignored(ignored)}"
        )
    if not paths.state.exists() and _sink_status(paths, status, now, max_lag):
        return status
    if not paths.state.exists():
        status.replayed = False
        has_output = paths.output().exists()
        if has_output and would_take_over(paths):
            (status.problems if required else status.notes).append(_PENDING_TAKEOVER)
        elif has_output:
            status.problems.append(f"output {paths.output()} exists without a state (replay needs --rebuild)")
        elif required:
            status.problems.append("never replayed (no state file)")
        else:
            status.notes.append("never replayed")
        return status
    try:
        state = read_state(paths.state)
    except StateError as exc:
        if would_take_over(paths):
            status.replayed = False
            (status.problems if required else status.notes).append(_PENDING_TAKEOVER)
        else:
            status.problems.append(str(exc))
        return status
    if state.instId != inst_id:
        status.problems.append(f"state {paths.state} belongs to {state.instId}")
        return status
    status.counters = {f: getattr(state.assembler.counters, f) for f in state.assembler.counters.__struct_fields__}
    rejects = status.counters.get("rejects", 0)
    if previous_rejects is not None:
        status.rejects_new = max(0, rejects - previous_rejects)
        if status.rejects_new:
            status.problems.append(f"{status.rejects_new} new rejected lines since the last status (see {paths.rejects})")
    last = state.last_run
    if last is not None and last.most_rejected:
        if not last.all_rejected:
            share = f"{last.rejected} of the {last.lines} lines"
        else:
            share = "the 1 line" if last.lines == 1 else f"all {last.lines} lines"
        status.problems.append(
            f"the last run rejected {share} it read (first: {last.first_error}; see {paths.rejects})"
        )
    if state.took_over is not None:
        moved = " and ".join(str(p) for p in state.took_over.paths(paths))
        status.notes.append(f"taken over from volume_analyzer.py at {state.took_over.at}; its files: {moved}")
    lengths = {"1m": state.output_length, **state.timeframe_lengths}
    _check_outputs(status, paths, lengths, now, max_lag, "replay")
    try:
        if not day_files(paths.raw_dir):
            status.problems.append(f"no trade files in {paths.raw_dir} (replay of it fails)")
        status.backlog_bytes = _backlog(paths, state)
    except OSError as exc:
        status.problems.append(f"cannot list input files: {exc}")
    return status


def _sink_status(paths: VaultPaths, status: InstrumentStatus, now: float, max_lag: float | None) -> bool:
    """Fill ``status`` from a ``sink-jsonl`` state if the instrument has one; whether it had."""
    from .nats.sink import SinkState, sink_state_path

    path = sink_state_path(paths)
    if not path.exists():
        return False
    status.notes.append("written by sink-jsonl from the NATS bars stream")
    try:
        state = msgspec.json.decode(path.read_bytes(), type=SinkState)
    except (OSError, msgspec.DecodeError) as exc:
        status.problems.append(f"sink state {path} is unreadable: {exc}")
        return True
    status.counters = {"bars": state.bars}
    lengths = {tf: n for tf, n in state.lengths.items() if tf in TIMEFRAMES} or {"1m": 0}
    _check_outputs(status, paths, lengths, now, max_lag, "sink-jsonl")
    return True


def _check_outputs(
    status: InstrumentStatus, paths: VaultPaths, lengths: dict[str, int], now: float,
    max_lag: float | None, writer: str,
) -> None:
    for tf in sorted(lengths, key=lambda t: TIMEFRAMES.get(t, 0)):
        recorded = lengths[tf]
        path = paths.output(tf)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if recorded:
                status.problems.append(f"output {path} is missing (state records {recorded} bytes)")
            status.timeframes[tf] = None
            continue
        if size < recorded:
            status.problems.append(
                f"output {path} is shorter ({size} bytes) than the state records ({recorded}); "
                f"{writer} needs --rebuild"
            )
        elif size > recorded:
            status.notes.append(f"{tf}: {size - recorded} bytes past the last checkpoint (a run is going on or was stopped; {writer} cuts them back)")
        line = _last_line(path, min(size, recorded))
        stamp = None
        if line is not None:
            try:
                stamp = _stamp.decode(line).timestamp_utc or None
            except msgspec.DecodeError:
                status.problems.append(f"the last bar of {path} is unreadable")
        status.timeframes[tf] = stamp
    status.last_bar = status.timeframes.get("1m")
    if status.last_bar is not None:
        start = datetime.strptime(status.last_bar, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        status.lag_seconds = max(0.0, now - (start + 60))
        if max_lag is not None and status.lag_seconds > max_lag:
            status.problems.append(f"last bar is {format_duration(status.lag_seconds)} old (more than --max-lag {format_duration(max_lag)})")
    elif max_lag is not None:
        status.problems.append("no bars yet (--max-lag is set)")


def vault_status(
    vault: Path,
    inst_ids: Sequence[str] | None = None,
    *,
    now: float | None = None,
    max_lag: float | None = None,
    remember: bool = True,
) -> list[InstrumentStatus]:
    """Status of ``inst_ids`` (default: every instrument in the vault).

    With ``remember``, the rejects count of each instrument is saved beside the states so that
    the next call can say whether rejects keep coming.
    """
    now = time.time() if now is None else now
    required = inst_ids is not None
    names = list(dict.fromkeys(inst_ids)) if inst_ids else known_instruments(vault)
    for inst in names:
        kind_of(inst)
    memo_file = memo_path(vault)
    try:
        memo = msgspec.json.decode(memo_file.read_bytes(), type=_Memo)
    except (OSError, msgspec.DecodeError):
        memo = _Memo()
    result = [
        instrument_status(
            vault, inst, now=now, max_lag=max_lag, previous_rejects=memo.rejects.get(inst),
            required=required,
        )
        for inst in names
    ]
    if remember and memo_file.parent.is_dir():
        for st in result:
            if "rejects" in st.counters:
                memo.rejects[st.instId] = st.counters["rejects"]
        memo.checked_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.suppress(OSError):  # a read-only vault can still be checked
            write_atomic(memo_file, msgspec.json.encode(memo))
    return result


def format_duration(seconds: float) -> str:
    """``3m12s``, ``2h05m``, ``4d03h``."""
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: int) -> str:
    """``512 B``, ``3.4 MB``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover - the loop returns


STATUS_COLUMNS = ("instId", "last_bar", "lag", "trades", "bars", "rejects", "duplicates", "late", "backlog", "health")


def status_row(st: InstrumentStatus) -> list[str]:
    c = st.counters
    rejects = str(c.get("rejects", "-"))
    if st.rejects_new:
        rejects += f" (+{st.rejects_new})"
    return [
        st.instId,
        st.last_bar or "-",
        format_duration(st.lag_seconds) if st.lag_seconds is not None else "-",
        str(c.get("trades", "-")),
        str(c.get("bars", "-")),
        rejects,
        str(c.get("duplicates", "-")),
        str(c.get("late", "-")),
        format_bytes(st.backlog_bytes),
        "ok" if st.ok else "PROBLEM",
    ]
