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

from .instruments import Instrument, Kind, missing_ct_val
from .kernel import BIG_OFF, MINUTE_MS, MinuteRun, all_own_ct, flow_rows, fold, fold_flow
from .settings import TIMEFRAMES, Settings, tick_fraction
from .trades import Trade

MICRO = 1_000_000
_HALF = MICRO // 2


class FootprintLevel(msgspec.Struct, gc=False):
    """One price level of a bar's footprint: taker volumes (whole USD) and trade records."""

    px: str
    buy: str
    sell: str
    trades: int


class Imbalance(msgspec.Struct, gc=False):
    """A level whose taker volume on ``side`` outweighs the other side one level across."""

    px: str
    side: str


class Stack(msgspec.Struct, gc=False):
    """A run of adjacent levels imbalanced on the same side, ``low``..``high`` inclusive."""

    side: str
    low: str
    high: str
    levels: int


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
    #: With a footprint tick: the levels in ascending price, point of control, value area
    #: high/low, imbalanced levels and stacked runs of them (README "Order flow").
    footprint: list[FootprintLevel] | UnsetType = UNSET
    poc: str | UnsetType = UNSET
    vah: str | UnsetType = UNSET
    val: str | UnsetType = UNSET
    imbalances: list[Imbalance] | UnsetType = UNSET
    stacked: list[Stack] | UnsetType = UNSET
    #: With ``cvd``: the running delta's low and high inside the bar, and the cumulative
    #: delta of the UTC day up to the bar's end (signed whole USD).
    delta_min: str | UnsetType = UNSET
    delta_max: str | UnsetType = UNSET
    cvd: str | UnsetType = UNSET
    #: With a footprint tick: whether the bar's highest (lowest) level traded both buy and
    #: sell, each at least ``poor_min_usd`` (an unfinished auction; docs/levels.md).
    poor_high: bool | UnsetType = UNSET
    poor_low: bool | UnsetType = UNSET
    #: Only on bars of a partial stream: false while the bar is still forming.
    final: bool | UnsetType = UNSET


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
    #: Footprint: level (``floor(px / tick)``) -> [buy, sell, trades], micro-dollars.
    book: dict[int, list[int]] | None = None
    #: In a saved state only: the open minute's accepted trades as (ts, tradeId, signed
    #: micro-dollars) in arrival order, so a resumed run can still order them.
    deltas: list[tuple[int, str, int]] | None = None
    #: The running delta's extremes in micro-dollars.
    delta_min: int = 0
    delta_max: int = 0

    def merge(self, other: Aggregate) -> None:
        """Fold the aggregate of the period that follows this one into it.

        Volumes, counts and footprints are order-independent sums; the running delta's
        extremes continue from this period's delta, so ``other`` must come later in time.
        """
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
        delta = self.buy - self.sell
        self.delta_min = min(self.delta_min, delta + other.delta_min)
        self.delta_max = max(self.delta_max, delta + other.delta_max)
        if other.book is not None:
            book = self.book
            if book is None:
                book = self.book = {}
            for level, (buy, sell, trades) in other.book.items():
                cell = book.get(level)
                if cell is None:
                    book[level] = [buy, sell, trades]
                else:
                    cell[0] += buy
                    cell[1] += sell
                    cell[2] += trades
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
    #: The UTC day (days since the epoch) ``cvd`` belongs to, and that day's delta so far
    #: (micro-dollars, bars finished).
    cvd_day: int = -1
    cvd: int = 0


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


def _exact_whale(instrument: Instrument, whale_usd: float) -> Callable[[float, str, float, bool], bool]:
    """Whether a trade's exact notional (``sz``, ``px`` and ctVal as written) is >= ``whale_usd``.

    The fold asks only about trades whose micro-dollar notional is within rounding distance
    of the threshold, so the rational arithmetic costs nothing on the way.
    """
    threshold = Fraction(repr(whale_usd))

    def exact(sz: float, px: str, own_ct: float, own_inverse: bool) -> bool:
        return exact_notional(instrument, sz, px, own_ct, own_inverse) >= threshold

    return exact


def exact_notional(
    instrument: Instrument, sz: float, px: str, own_ct: float = 0.0, own_inverse: bool = False
) -> Fraction:
    """A trade's USD notional exactly (``sz`` as read, ``px`` and ctVal as written, SPEC §4).

    ``own_ct`` > 0: the trade's own contract facts convert it, not the instrument's (never for
    spot, whose notional is ``sz × px``)."""
    if own_ct > 0.0 and instrument.kind is not Kind.SPOT:
        notional = Fraction(repr(sz)) * Fraction(repr(own_ct))
        if not own_inverse:
            notional *= Fraction(*_ratio(px))
        return notional
    ct = Fraction(repr(instrument.ct_val)) if instrument.ct_val is not None else Fraction(1)
    notional = Fraction(repr(sz)) * ct
    if not instrument.inverse:
        notional *= Fraction(*_ratio(px))
    return notional
def _level_text(level: int, tick: tuple[int, int]) -> str:
    """A level's price, ``level × tick``, as decimal text with the tick's decimals."""
    num, den = tick
    value = level * num
    if den == 1:
        return str(value)
    whole, frac = divmod(value, den)
    return "%d.%0*d" % (whole, len(str(den)) - 1, frac)


def _usd(micro: int) -> str:
    return str((micro + _HALF) // MICRO)


def _signed_usd(micro: int) -> str:
    rounded = _round_usd(micro)
    return ("+%d" % rounded) if rounded >= 0 else str(rounded)


def delta_extremes(deltas: list[tuple[int, str, int]]) -> tuple[int, int]:
    """Lowest and highest running delta after each trade, in ``(ts, tradeId)`` order."""
    ordered = sorted(deltas, key=lambda d: (d[0], int(d[1])))
    running = 0
    low = high = ordered[0][2]
    for _, _, amount in ordered:
        running += amount
        if running < low:
            low = running
        elif running > high:
            high = running
    return low, high


class Footprint(msgspec.Struct, gc=False):
    """A bar's footprint keys, computed from its exact level totals."""

    levels: list[FootprintLevel]
    poc: str
    vah: str
    val: str
    imbalances: list[Imbalance]
    stacked: list[Stack]
    poor_high: bool = False
    poor_low: bool = False


def poor_level(cell: list[int], poor_min: tuple[int, int] = (0, 1)) -> bool:
    """Whether a footprint level (``[buy, sell, trades]``, exact micro-dollars) is an
    unfinished auction: buy > 0 and sell > 0, and each ≥ ``poor_min`` dollars (an exact
    (numerator, denominator))."""
    buy, sell = cell[0], cell[1]
    num, den = poor_min
    floor = num * MICRO
    return buy > 0 and sell > 0 and buy * den >= floor and sell * den >= floor


def footprint_of(
    book: dict[int, list[int]],
    tick: tuple[int, int],
    ratio: tuple[int, int] = (3, 1),
    stacked_levels: int = 3,
    value_area: tuple[int, int] = (7, 10),
    poor_min: tuple[int, int] = (0, 1),
) -> Footprint:
    """The footprint keys of a bar from its levels (``level -> [buy, sell, trades]``, exact
    micro-dollars); ``tick``, ``ratio``, ``value_area`` and ``poor_min`` (dollars) as exact
    (numerator, denominator).

    POC: the level with the most volume, the lowest on ties. Value area: from the POC, the
    next traded level above and the next below are compared and the one with more volume
    joins (the lower on ties), until the area holds ``value_area`` of the bar's volume.
    Imbalance: buy at L ≥ ratio × sell at L − tick (buy), sell at L ≥ ratio × buy at L + tick
    (sell), the level across inside the bar's range (untraded counts 0) and the side > 0.
    Poor high (low): the highest (lowest) level is :func:`poor_level`.
    """
    keys = sorted(book)
    text = [_level_text(k, tick) for k in keys]
    cells = [book[k] for k in keys]
    levels = [FootprintLevel(t, _usd(c[0]), _usd(c[1]), c[2]) for t, c in zip(text, cells, strict=True)]
    volumes = [c[0] + c[1] for c in cells]
    poc = 0
    for i, volume in enumerate(volumes):
        if volume > volumes[poc]:
            poc = i
    total = sum(volumes)
    an, ad = value_area
    lo = hi = poc
    inside = volumes[poc]
    n = len(keys)
    while inside * ad < an * total:
        up = volumes[hi + 1] if hi + 1 < n else -1
        down = volumes[lo - 1] if lo > 0 else -1
        if up > down:
            hi += 1
            inside += up
        else:
            lo -= 1
            inside += down
    ra, rb = ratio
    first, last = keys[0], keys[-1]
    imbalances: list[Imbalance] = []
    runs: dict[str, list[int]] = {"buy": [], "sell": []}
    for i, k in enumerate(keys):
        buy, sell, _ = cells[i]
        if buy > 0 and k > first:
            below = book.get(k - 1)
            if buy * rb >= ra * (below[1] if below is not None else 0):
                imbalances.append(Imbalance(text[i], "buy"))
                runs["buy"].append(i)
        if sell > 0 and k < last:
            above = book.get(k + 1)
            if sell * rb >= ra * (above[0] if above is not None else 0):
                imbalances.append(Imbalance(text[i], "sell"))
                runs["sell"].append(i)
    found: list[tuple[int, str, Stack]] = []
    for side, marked in runs.items():
        start = 0
        for j in range(1, len(marked) + 1):
            if j == len(marked) or keys[marked[j]] != keys[marked[j - 1]] + 1:
                if j - start >= stacked_levels:
                    low, high = marked[start], marked[j - 1]
                    found.append((low, side, Stack(side, text[low], text[high], j - start)))
                start = j
    found.sort(key=lambda item: (item[0], item[1]))
    return Footprint(
        levels, text[poc], text[hi], text[lo], imbalances, [f[2] for f in found],
        poor_level(cells[-1], poor_min), poor_level(cells[0], poor_min),
    )  # fmt: skip


def _copy(agg: Aggregate) -> Aggregate:
    """A copy sharing nothing that later folds change."""
    deltas = list(agg.deltas) if agg.deltas is not None else None
    return msgspec.structs.replace(agg, book=copy_book(agg.book), deltas=deltas)


def copy_book(book: dict[int, list[int]] | None) -> dict[int, list[int]] | None:
    """A copy whose cells later folds do not change."""
    return {k: list(v) for k, v in book.items()} if book is not None else None


class _Series:
    """Turns closed aggregates of one timeframe into bars with that timeframe's signals.

    Signals are decided in exact rational arithmetic, done as integer cross-multiplication
    (same results as with ``Fraction``, a fraction of the cost); a float appears only where a
    value is printed, and ``int / int`` rounds correctly, as ``float(Fraction)`` does.
    """

    __slots__ = (
        "abs_pct",
        "abs_ratio",
        "area",
        "cvd",
        "cvd_day",
        "div_delta",
        "div_pct",
        "flow",
        "imbalance",
        "instrument",
        "label",
        "min_history",
        "minutes",
        "next_start",
        "open",
        "ordered",
        "poor_min",
        "ratios",
        "stacked_levels",
        "tick",
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
        tick = settings.tick_of(instrument.inst_id)
        self.tick = tick_fraction(tick) if tick is not None else None
        self.imbalance = _fraction(settings.imbalance_ratio)
        self.stacked_levels = settings.stacked_levels
        self.area = _fraction(settings.value_area)
        self.poor_min = _fraction(settings.poor_min_usd)
        self.flow = settings.cvd
        # The day's delta up to the last finished bar (kept whether or not it is printed).
        self.cvd_day = -1
        self.cvd = 0

    def finish(self, agg: Aggregate, peek: bool = False) -> Bar:
        """The bar of ``agg``. Unless ``peek``, the bar is final: its total enters the window
        of previous totals and its delta the day's (``peek`` changes nothing: a bar still
        forming)."""
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
        day = agg.start // 1440
        cvd = (self.cvd if day == self.cvd_day else 0) + delta
        if not peek:
            history = self.window
            if history.maxlen:
                if len(history) == history.maxlen:
                    del ordered[bisect_left(ordered, history[0])]
                insort(ordered, total)
            history.append(total)
            self.cvd_day = day
            self.cvd = cvd
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
        fp: Footprint | None = None
        if self.tick is not None and agg.book:
            fp = footprint_of(agg.book, self.tick, self.imbalance, self.stacked_levels, self.area, self.poor_min)
            bar.footprint = fp.levels
            bar.poc = fp.poc
            bar.vah = fp.vah
            bar.val = fp.val
            bar.imbalances = fp.imbalances
            bar.stacked = fp.stacked
        if self.flow:
            bar.delta_min = _signed_usd(agg.delta_min)
            bar.delta_max = _signed_usd(agg.delta_max)
            bar.cvd = _signed_usd(cvd)
        if fp is not None:
            # After every order-flow key that existed before them (extra keys only follow).
            bar.poor_high = fp.poor_high
            bar.poor_low = fp.poor_low
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
            current = msgspec.structs.replace(agg, start=start, book=copy_book(agg.book), deltas=None)
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
            open=_copy(self.open) if self.open is not None else None,
            window=list(self.window),
            next_start=self.next_start,
            cvd_day=self.cvd_day,
            cvd=self.cvd,
        )

    def restore(self, state: SeriesState) -> None:
        self.open = _copy(state.open) if state.open is not None else None
        self.window.clear()
        self.window.extend(state.window)
        self.ordered = sorted(self.window)
        self.next_start = state.next_start
        self.cvd_day = state.cvd_day
        self.cvd = state.cvd


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
        # A swap or future may have no contract value of its own here when its trade lines
        # carry theirs (SPEC §4); a trade without one is then refused by ``feed``.
        contracts = instrument.kind is not Kind.SPOT
        self._needs_ct = contracts and instrument.ct_val is None
        scale = 1.0 * MICRO if instrument.kind is Kind.SPOT else (instrument.ct_val or 0.0) * MICRO
        tick = self._minute.tick
        self._run = MinuteRun(
            scale,
            not instrument.inverse,
            round(settings.whale_usd * MICRO),
            _exact_whale(instrument, settings.whale_usd),
            tick_num=tick[0] if tick is not None else 0,
            tick_den=tick[1] if tick is not None else 1,
            flow=settings.cvd,
            ct=(instrument.ct_val or 0.0) if contracts else 0.0,
            own_ct=contracts,
        )
        self._big: list[Trade] = []
        if state is not None:
            self.restore(state)

    def watch(self, usd: float | None) -> None:
        """Keep, from each :meth:`feed`, the accepted trades whose notional may be ``usd`` or
        more (:attr:`big_trades`; None: none). A candidate is within a rounding margin of it:
        the caller judges each on :func:`exact_notional`. Changes no bar."""
        if usd is None:
            self._run.big_at = BIG_OFF
            return
        at = round(usd * MICRO)
        self._run.big_at = max(0, at - (2 + at // (1 << 40)))

    @property
    def big_trades(self) -> list[Trade]:
        """The accepted trades of the last :meth:`feed` that may reach the :meth:`watch`
        threshold, in the order they were fed (late and duplicate trades are never here)."""
        return self._big

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, trades: Iterable[Trade]) -> list[Bar]:
        """Add validated trades of this instrument (any order); return the bars they finished."""
        out: list[Bar] = []
        run = self._run
        batch = trades if type(trades) is list else list(trades)
        if self._needs_ct and not all_own_ct(batch):
            raise missing_ct_val(self.instrument.inst_id)
        run.late = run.duplicates = run.accepted = 0
        run.big.clear()
        done = 0
        extra = run.footprint or run.flow
        while True:
            if extra:
                run.dropped.clear()
                begin = done
                done = fold(run, batch, done)
                fold_flow(run, batch, begin, done)
            else:
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
        self._big = [batch[i] for i in run.big] if run.big else []
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
        if run.flow:
            if run.disordered:
                # Some trade came before a later one: find the extremes in (ts, tradeId)
                # order (rare; only when the bar is wanted, not after every batch).
                agg.deltas = None
            else:
                agg.delta_min = run.dmin
                agg.delta_max = run.dmax
        return agg

    def _order_flow(self, agg: Aggregate) -> None:
        """Bring the open minute's delta extremes up to date before its bar is made."""
        run = self._run
        if run.flow and run.disordered:
            rows = flow_rows(run)
            if rows:
                agg.delta_min, agg.delta_max = delta_extremes(rows)

    def _close_minute(self, agg: Aggregate, out: list[Bar]) -> None:
        series = self._minute
        self._order_flow(agg)
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

    def partial(self, now_ms: int | None = None) -> Bar | None:
        """The open minute's bar as it stands, marked ``final=False``; None if no minute is
        open, or if ``now_ms`` is given and the minute is due to close (``grace`` past its
        end: :meth:`close_due` finishes it). Nothing changes: the final bar is computed
        later from the same totals, plus whatever trades still come."""
        agg = self._sync()
        if agg is None:
            return None
        if now_ms is not None and now_ms >= (agg.start + 1) * MINUTE_MS + self._grace_ms:
            return None
        self._order_flow(agg)
        bar = self._minute.finish(agg, peek=True)
        bar.final = False
        return bar

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

    def odd_contracts(self) -> list[tuple[float, bool]]:
        """The contract facts (``ctVal``, inverse) of trades fed since the last call that
        differ from the instrument's; each such trade was converted with its own (SPEC §4)."""
        odd = sorted(self._run.odd)
        self._run.odd.clear()
        return odd

    @property
    def next_minute(self) -> int:
        """The earliest minute a trade may still belong to without being late."""
        agg = self._minute.open
        return agg.start if agg is not None else self._minute.next_start

    def snapshot(self) -> AssemblerState:
        """A copy of the state; later feeding does not change it."""
        series = {label: s.snapshot() for label, s in self._series.items()}
        saved = series["1m"].open
        if saved is not None and self._run.flow:
            saved.deltas = flow_rows(self._run)
        return AssemblerState(
            series=series,
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
            agg.deltas = None  # the run holds them now
        else:
            run.shut(self._minute.next_start * MINUTE_MS)
        run.set_ids(state.ids)
        self.counters = msgspec.structs.replace(state.counters)
