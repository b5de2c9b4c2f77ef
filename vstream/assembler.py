"""The bar assembler: a plain, synchronous, I/O-free class (feed trades, take finished bars).

Nothing here reads a clock, a file or a socket. Time enters only as arguments
(``close_due(now_ms)``), so replay, live and embedded use share it and tests drive it with
tables of trades.

Money is kept exactly: each trade's USD notional is rounded once to a whole micro-dollar and
summed as integers, so a bar does not depend on the order its trades arrived in, and the signal
thresholds (tiers, absorption, divergence) are compared in exact rational arithmetic.
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from .instruments import Instrument
from .kernel import MINUTE_MS, MinuteRun, fold
from .settings import TIMEFRAMES, Settings
from .trades import Trade

MICRO = 1_000_000
_HALF = MICRO // 2


class Bar(msgspec.Struct, gc=False, kw_only=True):
    """One finished bar. Its JSON encoding is exactly one line of the output file (SPEC §5)."""

    timestamp_utc: str
    instId: str
    exchange: str
    market: str
    open: str
    high: str
    low: str
    close: str
    price_change_pct: str
    total_volume: str
    buy_volume: str
    sell_volume: str
    delta: str
    whale_volume: str
    whale_count: int
    trade_count: int
    volume_tier: str | None
    absorption: bool
    divergence: bool
    divergence_type: str | None
    volume_ratio: str | None
    fill_count: int
    #: Present (true) only on a live bar emitted while a trade-id gap could not be filled.
    gap: bool | UnsetType = UNSET
    #: Present only on bars of a timeframe other than 1m ("5m", "15m", "1h").
    timeframe: str | UnsetType = UNSET


class Aggregate(msgspec.Struct, gc=False):
    """The exact running totals of one bar period (also the open bar saved in the state).

    Open/close are the trades first/last by ``(ts, tradeId)``; high/low keep the price text of
    the first trade by that order among equal prices. Volumes are in micro-dollars.
    """

    start: int  # period start, minutes since the epoch
    open_px: str
    open_ts: int
    open_id: int
    close_px: str
    close_ts: int
    close_id: int
    high_px: str
    high: float
    high_ts: int
    high_id: int
    low_px: str
    low: float
    low_ts: int
    low_id: int
    buy: int = 0
    sell: int = 0
    whale: int = 0
    whale_count: int = 0
    trades: int = 0
    fills: int = 0
    gap: bool = False

    def merge(self, other: Aggregate) -> None:
        """Fold a later (or overlapping) aggregate into this one, order-independently."""
        # Open/close: first/last by (ts, tradeId); high/low: the extreme price, ties going to
        # the first trade by that order. Each is one tuple comparison.
        if (other.open_ts, other.open_id) < (self.open_ts, self.open_id):
            self.open_px, self.open_ts, self.open_id = other.open_px, other.open_ts, other.open_id
        if (other.close_ts, other.close_id) > (self.close_ts, self.close_id):
            self.close_px, self.close_ts, self.close_id = other.close_px, other.close_ts, other.close_id
        if (-other.high, other.high_ts, other.high_id) < (-self.high, self.high_ts, self.high_id):
            self.high_px, self.high = other.high_px, other.high
            self.high_ts, self.high_id = other.high_ts, other.high_id
        if (other.low, other.low_ts, other.low_id) < (self.low, self.low_ts, self.low_id):
            self.low_px, self.low = other.low_px, other.low
            self.low_ts, self.low_id = other.low_ts, other.low_id
        self.buy += other.buy
        self.sell += other.sell
        self.whale += other.whale
        self.whale_count += other.whale_count
        self.trades += other.trades
        self.fills += other.fills
        self.gap = self.gap or other.gap


#: A counter as read back from a state: a negative or impossibly large one makes the state
#: unreadable (exit 2, naming --rebuild) rather than carrying on from nonsense.
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Counters(msgspec.Struct):
    """What happened to the input so far (kept in the state, printed by ``status``)."""

    trades: _Count = 0
    bars: _Count = 0
    rejects: _Count = 0
    duplicates: _Count = 0
    late: _Count = 0
    skipped: _Count = 0


class SeriesState(msgspec.Struct):
    """One timeframe's resumable state: its open bar and the totals of its previous bars."""

    open: Aggregate | None = None
    window: list[int] = msgspec.field(default_factory=list)
    next_start: int = 0  # the earliest period start still accepted


class AssemblerState(msgspec.Struct):
    """Everything :class:`BarAssembler` needs to continue exactly where it stopped."""

    series: dict[str, SeriesState] = msgspec.field(default_factory=dict)
    ids: list[str] = msgspec.field(default_factory=list)
    counters: Counters = msgspec.field(default_factory=Counters)


def _round_usd(micro: int) -> int:
    """Micro-dollars to whole dollars, halves away from zero."""
    if micro >= 0:
        return (micro + MICRO // 2) // MICRO
    return -((-micro + MICRO // 2) // MICRO)


def _fraction(value: float) -> tuple[int, int]:
    # The setting as written (0.1 means one tenth), not its binary approximation; as
    # (numerator, denominator > 0) so the signal tests below are integer cross-multiplications.
    f = Fraction(repr(value))
    return f.numerator, f.denominator


_DAYS: dict[int, str] = {}


def _stamp(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:00Z`` of a minute since the epoch (strftime once per day)."""
    day, rest = divmod(minute, 1440)
    prefix = _DAYS.get(day)
    if prefix is None:
        if len(_DAYS) > 4096:
            _DAYS.clear()
        prefix = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    return "%s%02d:%02d:00Z" % (prefix, rest // 60, rest % 60)


def _ratio(text: str) -> tuple[int, int]:
    """An accepted price text as an exact (numerator, denominator > 0)."""
    whole, _, frac = text.partition(".")
    if whole.isdigit() and (not frac or frac.isdigit()) and whole.isascii() and frac.isascii():
        return int(whole + frac), 10 ** len(frac)
    f = Fraction(text)  # exponent forms: rare enough for the general parser
    return f.numerator, f.denominator


def _exact_whale(instrument: Instrument, whale_usd: float) -> Callable[[float, str], bool]:
    """Whether a trade's exact notional (``sz``, ``px`` and ctVal as written) is >= ``whale_usd``.

    The fold asks only about trades whose micro-dollar notional is within rounding distance
    of the threshold, so the rational arithmetic costs nothing on the way.
    """
    threshold = Fraction(repr(whale_usd))
    ct = Fraction(repr(instrument.ct_val)) if instrument.ct_val is not None else Fraction(1)
    linear = not instrument.inverse

    def exact(sz: float, px: str) -> bool:
        notional = Fraction(repr(sz)) * ct
        if linear:
            notional *= Fraction(*_ratio(px))
        return notional >= threshold

    return exact


class _Series:
    """Turns closed aggregates of one timeframe into bars with that timeframe's signals.

    Signals are decided in exact rational arithmetic, done as integer cross-multiplication
    (same results as with ``Fraction``, a fraction of the cost); a float appears only where a
    value is printed, and ``int / int`` rounds correctly, as ``float(Fraction)`` does.
    """

    __slots__ = (
        "abs_pct",
        "abs_ratio",
        "div_delta",
        "div_pct",
        "instrument",
        "label",
        "min_history",
        "minutes",
        "next_start",
        "open",
        "ordered",
        "ratios",
        "window",
    )

    def __init__(self, label: str, instrument: Instrument, settings: Settings) -> None:
        self.label = label
        self.minutes = TIMEFRAMES[label]
        self.instrument = instrument
        self.window: deque[int] = deque(maxlen=settings.median_window)
        # The same totals kept sorted, so the median needs no sort per bar.
        self.ordered: list[int] = []
        self.min_history = settings.min_history
        self.abs_ratio = _fraction(settings.absorption_volume_ratio)
        self.abs_pct = _fraction(settings.absorption_max_price_pct)
        self.div_pct = _fraction(settings.divergence_min_price_pct)
        self.div_delta = _fraction(settings.divergence_min_delta_ratio)
        self.open: Aggregate | None = None
        self.next_start = 0
        # Price texts as exact fractions: opens and closes repeat from bar to bar.
        self.ratios: dict[str, tuple[int, int]] = {}

    def finish(self, agg: Aggregate) -> Bar:
        total = agg.buy + agg.sell
        ratios = self.ratios
        opened = ratios.get(agg.open_px)
        if opened is None:
            if len(ratios) > 4096:
                ratios.clear()
            opened = ratios[agg.open_px] = _ratio(agg.open_px)
        closed = ratios.get(agg.close_px)
        if closed is None:
            closed = ratios[agg.close_px] = _ratio(agg.close_px)
        on, od = opened
        cn, cd = closed
        # price change in percent = pn / pd exactly (pd > 0: prices are > 0)
        pn = (cn * od - on * cd) * 100
        pd = cd * on
        pct_text = "%+.2f" % (pn / pd)
        if pct_text == "-0.00":
            pct_text = "+0.00"
        abs_pn = abs(pn)
        delta = agg.buy - agg.sell
        tier: str | None = None
        ratio_text: str | None = None
        absorption = False
        ordered = self.ordered
        n = len(ordered)
        if n >= self.min_history:
            twice_median = 2 * ordered[n // 2] if n % 2 else ordered[n // 2 - 1] + ordered[n // 2]
            if twice_median > 0:
                # ratio = total / median = num / twice_median
                num = 2 * total
                ratio_text = "%.2f" % (num / twice_median)
                if 2 * num < twice_median:
                    tier = "T1"
                elif num < twice_median:
                    tier = "T2"
                elif num <= 2 * twice_median:
                    tier = "T3"
                else:
                    tier = "T4"
                ra, rb = self.abs_ratio
                pa, pb = self.abs_pct
                absorption = num * rb > ra * twice_median and abs_pn * pb < pa * pd
        divergence_type: str | None = None
        pa, pb = self.div_pct
        da, db = self.div_delta
        if abs_pn * pb >= pa * pd and abs(delta) * db >= da * total:
            if pn > 0 and delta < 0:
                divergence_type = "bearish"
            elif pn < 0 and delta > 0:
                divergence_type = "bullish"
        history = self.window
        if history.maxlen:
            if len(history) == history.maxlen:
                del ordered[bisect_left(ordered, history[0])]
            insort(ordered, total)
        history.append(total)
        rounded_delta = _round_usd(delta)
        bar = Bar(
            timestamp_utc=_stamp(agg.start),
            instId=self.instrument.inst_id,
            exchange="okx",
            market=self.instrument.market,
            open=agg.open_px,
            high=agg.high_px,
            low=agg.low_px,
            close=agg.close_px,
            price_change_pct=pct_text,
            # (volumes are >= 0: rounding halves away from zero is rounding them up)
            total_volume=str((total + _HALF) // MICRO),
            buy_volume=str((agg.buy + _HALF) // MICRO),
            sell_volume=str((agg.sell + _HALF) // MICRO),
            delta=("+%d" % rounded_delta) if rounded_delta >= 0 else str(rounded_delta),
            whale_volume=str((agg.whale + _HALF) // MICRO),
            whale_count=agg.whale_count,
            trade_count=agg.trades,
            volume_tier=tier,
            absorption=absorption,
            divergence=divergence_type is not None,
            divergence_type=divergence_type,
            volume_ratio=ratio_text,
            fill_count=agg.fills,
        )
        if agg.gap:
            bar.gap = True
        if self.label != "1m":
            bar.timeframe = self.label
        return bar

    def add(self, agg: Aggregate, out: list[Bar]) -> None:
        """Take a closed 1m aggregate; append bars of this timeframe that it completes."""
        start = agg.start - agg.start % self.minutes
        current = self.open
        if current is not None and current.start != start:
            out.append(self.finish(current))
            self.next_start = current.start + self.minutes
            current = None
        if current is None:
            current = msgspec.structs.replace(agg, start=start)
            self.open = current
        else:
            current.merge(agg)

    def flush(self, out: list[Bar], before_minute: int | None = None) -> None:
        """Emit the open bar if its period ends at or before ``before_minute`` (None: always)."""
        current = self.open
        if current is None:
            return
        if before_minute is not None and current.start + self.minutes > before_minute:
            return
        out.append(self.finish(current))
        self.next_start = current.start + self.minutes
        self.open = None

    def snapshot(self) -> SeriesState:
        return SeriesState(
            open=msgspec.structs.replace(self.open) if self.open is not None else None,
            window=list(self.window),
            next_start=self.next_start,
        )

    def restore(self, state: SeriesState) -> None:
        self.open = msgspec.structs.replace(state.open) if state.open is not None else None
        self.window.clear()
        self.window.extend(state.window)
        self.ordered = sorted(self.window)
        self.next_start = state.next_start


class BarAssembler:
    """Feeds accepted trades of one instrument into one-minute bars (and higher timeframes).

    ``feed`` returns the bars its trades finished: a minute's bar is finished by the first
    accepted trade of a later minute. ``close_due(now_ms)`` finishes the open minute once the
    wall clock is ``grace`` past its end (live mode); ``close()`` finishes it unconditionally
    (the input is complete). Trades for a minute before the open one are *late*, trades whose
    ``tradeId`` is already in the open minute are *duplicates*: both are dropped and counted.

    ``snapshot()`` returns an :class:`AssemblerState`; a new assembler built with it continues
    exactly as this one would have.
    """

    def __init__(
        self,
        instrument: Instrument,
        settings: Settings | None = None,
        state: AssemblerState | None = None,
    ) -> None:
        settings = settings if settings is not None else Settings()
        self.instrument = instrument
        self.settings = settings
        self.counters = Counters()
        labels = sorted(settings.timeframes, key=TIMEFRAMES.__getitem__)
        self._series = {label: _Series(label, instrument, settings) for label in labels}
        self._minute = self._series["1m"]
        self._higher = [s for label, s in self._series.items() if label != "1m"]
        self._grace_ms = round(settings.grace * 1000)
        if instrument.inverse:
            assert instrument.ct_val is not None
            scale = instrument.ct_val * MICRO
        else:
            scale = (instrument.ct_val or 1.0) * MICRO
        self._run = MinuteRun(
            scale,
            not instrument.inverse,
            round(settings.whale_usd * MICRO),
            _exact_whale(instrument, settings.whale_usd),
        )
        if state is not None:
            self.restore(state)

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, trades: Iterable[Trade]) -> list[Bar]:
        """Add validated trades of this instrument (any order); return the bars they finished."""
        out: list[Bar] = []
        run = self._run
        batch = trades if type(trades) is list else list(trades)
        run.late = run.duplicates = run.accepted = 0
        done = 0
        while True:
            done = fold(run, batch, done)
            agg = self._sync()
            if done >= len(batch):
                break
            # The fold stopped at a trade of a later minute: the open one is final.
            assert agg is not None
            self._close_minute(agg, out)
        self._minute.next_start = run.floor_ms // MINUTE_MS
        counters = self.counters
        counters.trades += run.accepted
        counters.duplicates += run.duplicates
        counters.late += run.late
        return out

    def _sync(self) -> Aggregate | None:
        """The open minute's aggregate, brought up to date with the run's totals."""
        run = self._run
        if not run.open:
            return None
        series = self._minute
        start = run.lo_ms // MINUTE_MS
        agg = series.open
        if agg is None or agg.start != start:
            agg = series.open = Aggregate(start, "", 0, 0, "", 0, 0, "", 0.0, 0, 0, "", 0.0, 0, 0)
        run.store(agg)
        return agg

    def _close_minute(self, agg: Aggregate, out: list[Bar]) -> None:
        series = self._minute
        out.append(series.finish(agg))
        self.counters.bars += 1
        series.open = None
        series.next_start = agg.start + 1
        self._run.shut(series.next_start * MINUTE_MS)
        for higher in self._higher:
            higher.add(agg, out)

    # -- closing ---------------------------------------------------------------------------

    def close_due(self, now_ms: int) -> list[Bar]:
        """Finish the open minute if ``now_ms`` is at least ``grace`` past its end (live mode).

        Higher-timeframe bars whose period has ended (plus grace) are finished too.
        """
        out: list[Bar] = []
        agg = self._minute.open
        if agg is not None and now_ms >= (agg.start + 1) * MINUTE_MS + self._grace_ms:
            self._close_minute(agg, out)
        done_minute = (now_ms - self._grace_ms) // MINUTE_MS
        if self._minute.open is not None:
            # Trades still to come belong to the open minute or later (earlier ones are late),
            # so a period that ended by its start is complete: do not hold it back.
            done_minute = min(done_minute, self._minute.open.start)
        for higher in self._higher:
            higher.flush(out, before_minute=done_minute)
        return out

    def close(self) -> list[Bar]:
        """Finish every open bar: the input is complete (``--final``)."""
        out: list[Bar] = []
        agg = self._minute.open
        if agg is not None:
            self._close_minute(agg, out)
        for higher in self._higher:
            higher.flush(out)
        return out

    def mark_gap(self) -> None:
        """Flag the open minute as touched by a trade-id gap that could not be filled."""
        if self._minute.open is not None:
            self._minute.open.gap = True

    # -- introspection and resume ------------------------------------------------------------

    @property
    def open_minute(self) -> int | None:
        """Start of the open minute (minutes since the epoch), or None."""
        agg = self._minute.open
        return agg.start if agg is not None else None

    @property
    def next_minute(self) -> int:
        """The earliest minute a trade may still belong to without being late."""
        agg = self._minute.open
        return agg.start if agg is not None else self._minute.next_start

    def snapshot(self) -> AssemblerState:
        """A copy of the state; later feeding does not change it."""
        return AssemblerState(
            series={label: s.snapshot() for label, s in self._series.items()},
            ids=sorted(self._run.seen),
            counters=msgspec.structs.replace(self.counters),
        )

    def restore(self, state: AssemblerState) -> None:
        """Continue from ``state`` (as returned by :meth:`snapshot`)."""
        for label, series in self._series.items():
            saved = state.series.get(label)
            series.restore(saved if saved is not None else SeriesState())
        run = self._run
        agg = self._minute.open
        if agg is not None:
            run.load(agg)
        else:
            run.shut(self._minute.next_start * MINUTE_MS)
        run.set_ids(state.ids)
        self.counters = msgspec.structs.replace(state.counters)
