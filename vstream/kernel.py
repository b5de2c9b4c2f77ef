"""The per-trade loops: the decoder's last text checks, and the assembler's fold of trades
into the running totals of the open minute.

These are the places where every trade passes through Python code, so they are kept
apart, in plain typed Python that ``mypyc`` compiles to a C extension when vstream is built
with a compiler (``setup.py``); without one the same source runs interpreted, with the same
results (tests run both). It holds no I/O and no clock, and knows nothing of bars:
:class:`~vstream.assembler.BarAssembler` closes minutes and turns them into bars.

Money is counted in integer micro-dollars, rounded once per trade, so totals do not depend on
the order trades arrive in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Final, Protocol, cast

from msgspec.structs import astuple

MINUTE_MS: Final = 60_000
#: Distinct price texts remembered before the cache starts over.
PRICE_CACHE: Final = 1 << 16
#: The leading fields of :class:`vstream.trades.Trade` (and of its subclasses), in order.
TRADE_FIELDS: Final = ("instId", "tradeId", "px", "sz", "side", "ts", "count", "ct_val", "ct_inverse")
#: Micro-dollars per dollar, as a float factor (a ctVal times this is a trade's scale).
MICRO_F: Final = 1_000_000.0
#: The earliest accepted trade stamp (2017-01-01T00:00:00Z) in milliseconds (SPEC §3).
MIN_TS_MS: Final = 1_483_228_800_000
#: ``MinuteRun.big_at`` when no trade is watched: $2.3e12 in micro-dollars, above any real
#: trade. Kept inside the compiled code's tagged-int range (below 2**62): a larger constant
#: is a boxed int, and comparing each trade's notional with it would cost a quarter of replay.
BIG_OFF: Final = 1 << 61
#: The proleptic Gregorian ordinal of 1970-01-01 (``date.toordinal``).
_EPOCH_ORDINAL: Final = 719_163
#: Compiled, one ``msgspec.structs.astuple`` call reads a trade's fields faster than six
#: generic attribute lookups; interpreted, attribute loads are specialised and cheaper.
_ROWS: Final = not __file__.endswith(".py")


def row_type(item: object) -> type | None:
    """``type(item)`` if it is a msgspec Struct whose fields start as a Trade's, else None."""
    cls = type(item)
    fields = getattr(cls, "__struct_fields__", None)
    if _ROWS and isinstance(fields, tuple) and fields[: len(TRADE_FIELDS)] == TRADE_FIELDS:
        return cls
    return None


class TradeLike(Protocol):
    """What the fold reads of a trade (:class:`vstream.trades.Trade` has it).

    A protocol rather than an import: this module stands alone, so it compiles without the
    rest of the package.
    """

    @property
    def tradeId(self) -> str: ...
    @property
    def px(self) -> str: ...
    @property
    def sz(self) -> float: ...
    @property
    def side(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def ct_val(self) -> float: ...
    @property
    def ct_inverse(self) -> bool: ...


def texts_ok(trades: list[Any], known: set[str], accept: Callable[[str], bool]) -> bool:
    """The checks of :class:`TradeLike` items that a typed decoder cannot do: every
    ``tradeId`` one or more ASCII digits, and every ``px`` either in ``known`` or passing ``accept`` (it
    is then added to ``known``). False at the first failure; ``known`` may have grown."""
    ids: list[str] = []
    last_px: str | None = None
    for item in trades:
        t: TradeLike = item
        tid = t.tradeId
        if not tid:
            return False  # joined, an empty id would pass unseen
        ids.append(tid)
        px = t.px
        if px != last_px:
            if px not in known:
                if not accept(px):
                    return False
                if len(known) >= PRICE_CACHE:
                    known.clear()
                known.add(px)
            last_px = px
    # One pass over all ids at C speed: bytes.isdigit is a plain table loop (str.isdigit
    # would take any Unicode digit); isascii first, so only 0-9 count.
    joined = "".join(ids)
    return not ids or (joined.isascii() and joined.encode().isdigit())


def exporter_ready(
    trades: list[Any],
    ts_max: int,
    default_inverse: bool,
    minutes: dict[str, int],
    other_stamp: Callable[[str], int],
) -> bool:
    """Finish trades decoded from exporter lines (SPEC §3 item 4) in place, or say which
    chunk the careful path must judge: False at the first trade the typed decoder could not
    settle, True once every trade is ready for the fold.

    Each item carries ``stamp`` (its ``timestamp_utc`` text), ``ct_val`` (its ``ctVal`` as
    decoded, ``""`` where the line has it empty) and ``ct_type`` (its ``ctType``, ``""`` where
    absent). ``ts`` becomes the stamp in milliseconds, rounded to the nearest one: the
    exporter's own shape, ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z``, read here (``minutes`` caches the
    milliseconds of each ``YYYY-MM-DDTHH:MM`` prefix, -1: not a time), any other text by
    ``other_stamp`` (milliseconds, or -1 for no RFC 3339 time in UTC). A stamp must be from 2017-01-01 to
    ``ts_max``. An empty ``ct_val`` becomes 0.0 (the instrument's), and ``ct_inverse`` the
    contract type (``default_inverse`` where the line has none).
    """
    last_text = ""
    last_ts = 0
    for item in trades:
        # One call reads the fields (the decoder's Struct: the Trade fields, then stamp,
        # ct_type), cheaper than three attribute loads.
        row: tuple[Any, ...] = astuple(cast(Any, item))
        text: str = row[9]
        if text == last_text:
            ts = last_ts  # trades of one taker order share their stamp
        else:
            ts = stamp_ms(text, minutes)
            if ts < 0:
                ts = other_stamp(text)
            if ts < MIN_TS_MS or ts > ts_max:
                return False  # not the exporter's shape, or out of range: the text decides
            last_text = text
            last_ts = ts
        item.ts = ts
        ct: object = row[7]
        if not isinstance(ct, float):
            item.ct_val = 0.0  # an empty ctVal: the instrument's
        kind: str = row[10]
        if kind:
            if kind == "inverse":
                item.ct_inverse = True
            elif kind != "linear":
                return False
        elif default_inverse:
            item.ct_inverse = True
    return True


def stamp_ms(text: str, minutes: dict[str, int]) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`` in milliseconds, rounded to the nearest one (halves
    up); -1 for any other text (the careful path judges those). ``minutes`` caches each
    minute prefix's milliseconds, -1 for one that is no valid time."""
    n = len(text)
    if n < 20 or n > 27 or text[n - 1] != "Z" or text[16] != ":":
        return -1
    key = text[:16]
    base = minutes.get(key)
    if base is None:
        base = minute_ms(key)
        if len(minutes) >= PRICE_CACHE:
            minutes.clear()
        minutes[key] = base
    if base < 0:
        return -1
    tens = ord(text[17]) - 48
    ones = ord(text[18]) - 48
    if tens < 0 or tens > 5 or ones < 0 or ones > 9:
        return -1
    ms = base + (tens * 10 + ones) * 1000
    if n == 20:
        return ms
    if n == 21 or text[19] != ".":
        return -1  # ("SS.Z" has no digits: no RFC 3339 time)
    # 1 to 6 fractional digits: microseconds, exact
    micro = 0
    i = 20
    while i < n - 1:
        digit = ord(text[i]) - 48
        if digit < 0 or digit > 9:
            return -1
        micro = micro * 10 + digit
        i += 1
    width = n - 21
    while width < 6:
        micro *= 10
        width += 1
    return ms + (micro + 500) // 1000


def minute_ms(key: str) -> int:
    """``YYYY-MM-DDTHH:MM`` (ASCII digits, a valid date and time) in milliseconds; else -1."""
    if len(key) != 16 or key[4] != "-" or key[7] != "-" or key[10] != "T" or key[13] != ":":
        return -1
    digits = key[0:4] + key[5:7] + key[8:10] + key[11:13] + key[14:16]
    if not (digits.isascii() and digits.isdigit()):
        return -1
    try:
        when = datetime(int(key[0:4]), int(key[5:7]), int(key[8:10]), int(key[11:13]), int(key[14:16]), tzinfo=UTC)
    except ValueError:
        return -1
    days = when.toordinal() - _EPOCH_ORDINAL
    return ((days * 24 + when.hour) * 60 + when.minute) * 60_000


def all_own_ct(trades: list[Any]) -> bool:
    """Whether every :class:`TradeLike` item carries its own contract value (``ct_val`` > 0):
    what an instrument with no contract value of its own needs of each trade it takes."""
    for item in trades:
        t: TradeLike = item
        if not t.ct_val > 0.0:
            return False
    return True


def stamp_bounds(trades: list[Any], start: int) -> tuple[int, int]:
    """The least and the greatest ``ts`` of ``trades[start:]`` (:class:`TradeLike` items),
    ``(0, -1)`` when there is none. One compiled pass: a distributed worker needs both for
    every trade message (its lag, and whether the message can finish more bars than one
    atomic batch holds), and a Python loop over the stamps cost it a tenth of its time."""
    n = len(trades)
    if start >= n:
        return 0, -1
    t: TradeLike = trades[start]
    low = t.ts
    high = low
    i = start + 1
    while i < n:
        t = trades[i]
        ts = t.ts
        if ts < low:
            low = ts
        elif ts > high:
            high = ts
        i += 1
    return low, high


def minute_cuts(trades: list[Any], start: int, limit: int) -> list[int]:
    """Cut points of ``trades[start:]`` (indexes into ``trades``, ascending, the last one
    ``len(trades)``) so that no piece holds more than ``limit`` runs of one minute: a piece
    then finishes at most ``limit`` 1m bars, since a 1m bar is finished only by a trade of
    another minute than the one before it."""
    cuts: list[int] = []
    n = len(trades)
    changes = 0
    previous = -1
    i = start
    while i < n:
        t: TradeLike = trades[i]
        minute = t.ts // MINUTE_MS
        if minute != previous:
            if changes >= limit:
                cuts.append(i)
                changes = 0
            changes += 1
            previous = minute
        i += 1
    cuts.append(n)
    return cuts


class MinuteRun:
    """The open minute's running totals while trades stream through.

    ``open`` says whether a minute is open; ``floor_ms`` is the earliest stamp still accepted
    (earlier trades are *late*). Open/close are the first/last trade by ``(ts, tradeId as
    integer)``; high/low keep the first trade by that order among equal prices. ``close_id``
    is -1 until it is needed (only ties on ``ts`` need the close's id as an integer).

    Trade ids already taken in the minute are ``seen``; ``ids`` is their set, built only
    once a trade arrives whose id is not above every id so far (``top``): ids mostly rise,
    and a rising id cannot be a duplicate.

    With a footprint tick (``tick_num / tick_den``, a price step > 0), ``book`` maps each
    price level (``floor(px / tick)``, an integer) to ``[buy, sell, trades]`` of the minute
    (micro-dollars).

    With ``flow`` on, ``items`` keeps the minute's accepted trades (the trade objects
    themselves, or ``(ts, tradeId, signed micro-dollars)`` rows after a resume), ``delta``
    their running delta and ``dmin``/``dmax`` its extremes. While every trade is later by
    ``(ts, tradeId)`` than those before it (the usual case; ``last_ts``/``last_tid`` is the
    latest) the extremes follow trade by trade; once one is not, ``disordered`` is set and
    :func:`flow_rows` lets the caller find them in ``(ts, tradeId)`` order.

    Both are folded by :func:`fold_flow`, a pass of their own over the trades :func:`fold`
    took (``dropped`` holds the indexes it did not take), so the fold of a run without them
    is what it was before they existed.

    ``big`` collects the indexes (into the list being folded) of the accepted trades whose
    rounded notional is at least ``big_at`` micro-dollars: the candidates of the alert
    detector, which judges each on its exact notional (so ``big_at`` sits a rounding margin
    below its threshold). Late and duplicate trades are never in it. The caller clears it.
    ``big_at`` is out of reach by default: nothing is collected.
    """

    def __init__(
        self,
        scale: float,
        linear: bool,
        whale_at: int,
        exact_whale: Callable[[float, str, float, bool], bool] | None = None,
        *,
        tick_num: int = 0,
        tick_den: int = 1,
        flow: bool = False,
        ct: float = 0.0,
        own_ct: bool = False,
    ) -> None:
        self.scale = scale
        self.linear = linear
        # The instrument's contract value (0.0: none known) and whether a trade's own
        # contract facts (``ct_val``/``ct_inverse``, from lines that carry them) convert it.
        # A trade whose facts equal the instrument's takes the instrument's path, so it
        # counts exactly as the same trade without them; the others are ``odd``.
        self.ct = ct
        self.own_ct = own_ct
        self.odd: set[tuple[float, bool]] = set()
        self.whale_at = whale_at
        # A rounded notional this close to the threshold may be on either side of it: the
        # exact notional decides (rounding to micro-dollars moves a notional by at most half
        # of one, float arithmetic by a few parts in 1e16). Farther away the rounded one does.
        self.exact_whale = exact_whale
        near = 2 + whale_at // (1 << 40) if exact_whale is not None else 0
        self.whale_lo = whale_at - near
        self.whale_hi = whale_at + near
        self.footprint = tick_num > 0
        self.tick_num = tick_num
        self.tick_den = tick_den
        self.flow = flow
        self.book: dict[int, list[int]] = {}
        self.levels: dict[str, int] = {}
        self.items: list[Any] = []
        self.delta = 0
        self.dmin = 0
        self.dmax = 0
        self.disordered = False
        self.last_ts = -1
        self.last_tid = ""
        self.dropped: list[int] = []
        self.big_at = BIG_OFF
        self.big: list[int] = []
        self.prices: dict[str, float] = {}
        self.open = False
        self.lo_ms = 0
        self.floor_ms = 0
        self.buy = 0
        self.sell = 0
        self.whale = 0
        self.whale_count = 0
        self.trades = 0
        self.fills = 0
        self.open_px = ""
        self.open_ts = 0
        self.open_id = 0
        self.close_px = ""
        self.close_ts = 0
        self.close_id = -1
        self.close_tid = ""
        self.high_px = ""
        self.high = 0.0
        self.high_ts = 0
        self.high_id = 0
        self.low_px = ""
        self.low = 0.0
        self.low_ts = 0
        self.low_id = 0
        self.seen: list[str] = []
        self.ids: set[str] = set()
        self.top = ""
        # What the last fold calls dropped or took (the caller resets them).
        self.late = 0
        self.duplicates = 0
        self.accepted = 0

    def load(self, agg: Any) -> None:
        """Continue the minute ``agg`` (an :class:`~vstream.assembler.Aggregate`)."""
        self.open = True
        self.lo_ms = agg.start * MINUTE_MS
        self.floor_ms = self.lo_ms
        self.buy = agg.buy
        self.sell = agg.sell
        self.whale = agg.whale
        self.whale_count = agg.whale_count
        self.trades = agg.trades
        self.fills = agg.fills
        self.open_px = agg.open_px
        self.open_ts = agg.open_ts
        self.open_id = agg.open_id
        self.close_px = agg.close_px
        self.close_ts = agg.close_ts
        self.close_id = agg.close_id
        self.close_tid = str(agg.close_id)
        self.high_px = agg.high_px
        self.high = agg.high
        self.high_ts = agg.high_ts
        self.high_id = agg.high_id
        self.low_px = agg.low_px
        self.low = agg.low
        self.low_ts = agg.low_ts
        self.low_id = agg.low_id
        self.book = agg.book if agg.book is not None else {}
        self.set_rows(agg.deltas if agg.deltas is not None else [])

    def store(self, agg: Any) -> None:
        """Write the totals into ``agg``, the aggregate of the same minute."""
        agg.buy = self.buy
        agg.sell = self.sell
        agg.whale = self.whale
        agg.whale_count = self.whale_count
        agg.trades = self.trades
        agg.fills = self.fills
        agg.open_px = self.open_px
        agg.open_ts = self.open_ts
        agg.open_id = self.open_id
        agg.close_px = self.close_px
        agg.close_ts = self.close_ts
        if self.close_id < 0:
            self.close_id = int(self.close_tid)
        agg.close_id = self.close_id
        agg.high_px = self.high_px
        agg.high = self.high
        agg.high_ts = self.high_ts
        agg.high_id = self.high_id
        agg.low_px = self.low_px
        agg.low = self.low
        agg.low_ts = self.low_ts
        agg.low_id = self.low_id
        if self.footprint:
            agg.book = self.book

    def shut(self, floor_ms: int) -> None:
        """No minute is open; trades before ``floor_ms`` are late."""
        self.open = False
        self.floor_ms = floor_ms
        self.set_ids([])
        # (the closed minute's aggregate keeps the old book)
        self.book = {}
        self.set_rows([])

    def set_rows(self, rows: list[tuple[int, str, int]]) -> None:
        """Continue the open minute's delta flow from ``rows`` (as :func:`flow_rows` gives)."""
        self.items = list(rows)
        self.delta = 0
        self.dmin = self.dmax = rows[0][2] if rows else 0
        self.disordered = False
        self.last_ts = -1
        self.last_tid = ""
        last_id = -1
        for ts, tid, amount in rows:
            self.delta += amount
            iid = int(tid)
            if ts < self.last_ts or (ts == self.last_ts and iid <= last_id):
                self.disordered = True
            self.last_ts = ts
            self.last_tid = tid
            last_id = iid
            if self.delta < self.dmin:
                self.dmin = self.delta
            if self.delta > self.dmax:
                self.dmax = self.delta

    def set_ids(self, ids: list[str]) -> None:
        """The trade ids already taken in the open minute."""
        self.seen = list(ids)
        self.ids = set()
        top = ""
        for tid in self.seen:
            if len(tid) > len(top) or (len(tid) == len(top) and tid > top):
                top = tid
        self.top = top

    def near_whale(self, amount: int, sz: float, px: str, ct: float, inverse: bool) -> bool:
        """Whether a trade whose rounded notional ``amount`` is near the threshold is a whale
        (``ct`` its own contract value, 0.0 for the instrument's)."""
        exact = self.exact_whale
        return exact(sz, px, ct, inverse) if exact is not None else amount >= self.whale_at

    def own_amount(self, sz: float, p: float, ct: float, inverse: bool) -> int:
        """The micro-dollar notional of a trade converted with its own contract facts, as
        the fold converts the others (``int(x + 0.5)`` rounds halves up for x > 0)."""
        if self.ct > 0.0:
            self.odd.add((ct, inverse))
        return int(sz * (1.0 if inverse else p) * (ct * MICRO_F) + 0.5)

    def price(self, px: str) -> float:
        """``float(px)``, remembered: prices repeat, and a dict hit is cheaper than float()."""
        prices = self.prices
        if len(prices) >= PRICE_CACHE:
            prices.clear()
        p = float(px)
        prices[px] = p
        return p

    def level(self, px: str) -> int:
        """The footprint level of ``px``: ``floor(px / tick)``, exactly, remembered."""
        levels = self.levels
        if len(levels) >= PRICE_CACHE:
            levels.clear()
        # Exact: the price text as a fraction (it passed the decoder's checks), floored in
        # integers, so a level never depends on binary rounding.
        f = Fraction(px)
        k = (f.numerator * self.tick_den) // (f.denominator * self.tick_num)
        levels[px] = k
        return k


def fold(run: MinuteRun, trades: list[Any], start: int) -> int:
    """Fold ``trades[start:]`` (:class:`TradeLike` items) into the open minute, opening one with the first trade that is
    not late if none is open. Stops at the first trade of a later minute and returns its index
    (the open minute is then complete: the caller closes it, shuts the run and folds on), or
    ``len(trades)`` once every trade is taken.
    """
    # The totals live in locals while trades stream through and go back at the end: cheap
    # in C and in the interpreter alike.
    is_open = run.open
    lo_ms = run.lo_ms if is_open else 0
    hi_ms = lo_ms + MINUTE_MS if is_open else 0
    floor_ms = run.floor_ms
    scale = run.scale
    linear = run.linear
    own_ct = run.own_ct
    run_ct = run.ct
    run_inverse = not linear
    whale_lo = run.whale_lo
    whale_hi = run.whale_hi
    big_at = run.big_at
    prices = run.prices
    buy = run.buy
    sell = run.sell
    whale = run.whale
    whales = run.whale_count
    count = run.trades
    fills = run.fills
    o_px = run.open_px
    o_ts = run.open_ts
    o_id = run.open_id
    c_px = run.close_px
    c_ts = run.close_ts
    c_id = run.close_id
    c_tid = run.close_tid
    h_px = run.high_px
    high = run.high
    h_ts = run.high_ts
    h_id = run.high_id
    l_px = run.low_px
    low = run.low
    l_ts = run.low_ts
    l_id = run.low_id
    seen = run.seen
    ids = run.ids
    top = run.top
    # With order flow on, the indexes of trades dropped here, so fold_flow can skip them
    # (only ever touched on the rare late and duplicate paths).
    extra = run.footprint or run.flow
    late = 0
    dup = 0
    taken = 0
    last_px = ""
    last_p = 0.0
    n = len(trades)
    i = start
    rows = row_type(trades[start]) if start < n else None
    ts = 0
    tid = ""
    px = ""
    sz = 0.0
    side = ""
    fill = 0
    ct = 0.0
    inverse = False
    while i < n:
        item = trades[i]
        if type(item) is rows:
            row: tuple[Any, ...] = astuple(cast(Any, item))
            tid = row[1]
            px = row[2]
            sz = row[3]
            side = row[4]
            ts = row[5]
            fill = row[6]
            ct = row[7]
            inverse = row[8]
        else:
            # (a list of Any: a list of Trade is one; the protocol gives the attribute types)
            t: TradeLike = item
            tid = t.tradeId
            px = t.px
            sz = t.sz
            side = t.side
            ts = t.ts
            fill = t.count
            ct = t.ct_val
            inverse = t.ct_inverse
        if ct != 0.0 and (not own_ct or (ct == run_ct and inverse == run_inverse)):
            ct = 0.0  # the instrument's facts (or none that count): the common path
        if ts >= hi_ms or ts < lo_ms:
            if ts < lo_ms or ts < floor_ms:
                late += 1
                if extra:
                    run.dropped.append(i)
                i += 1
                continue
            if is_open:
                break  # a later minute: the open one is complete
            # The first trade of a new minute.
            is_open = True
            lo_ms = ts - ts % MINUTE_MS
            hi_ms = lo_ms + MINUTE_MS
            floor_ms = lo_ms
            q = prices.get(px)
            p = q if q is not None else run.price(px)
            last_px = px
            last_p = p
            if ct == 0.0:
                amount = int(sz * (p if linear else 1.0) * scale + 0.5)
            else:
                amount = run.own_amount(sz, p, ct, inverse)
            buy = sell = whale = whales = 0
            if side == "buy":
                buy = amount
            else:
                sell = amount
            if amount >= whale_lo and (amount > whale_hi or run.near_whale(amount, sz, px, ct, inverse)):
                whale = amount
                whales = 1
            if amount >= big_at:
                run.big.append(i)
            count = 1
            fills = fill
            iid = int(tid)
            o_px = c_px = h_px = l_px = px
            o_ts = c_ts = h_ts = l_ts = ts
            o_id = c_id = h_id = l_id = iid
            c_tid = tid
            high = low = p
            seen = [tid]
            ids = set()
            top = tid
            taken += 1
            i += 1
            continue
        i += 1
        # Duplicates: a rising id is new; only an id at or below the top needs the set.
        if len(tid) > len(top) or (len(tid) == len(top) and tid > top):
            top = tid
            seen.append(tid)
            if ids:
                ids.add(tid)
        else:
            if not ids:
                ids.update(seen)
            if tid in ids:
                dup += 1
                if extra:
                    run.dropped.append(i - 1)
                continue
            ids.add(tid)
            seen.append(tid)
        if px == last_px:
            p = last_p
        else:
            q = prices.get(px)
            p = q if q is not None else run.price(px)
            last_px = px
            last_p = p
        # int(x + 0.5) rounds halves up for x > 0 (sz, price and scale are all > 0)
        if ct == 0.0:
            amount = int(sz * (p if linear else 1.0) * scale + 0.5)
        else:
            amount = run.own_amount(sz, p, ct, inverse)
        if side == "buy":
            buy += amount
        else:
            sell += amount
        if amount >= whale_lo and (amount > whale_hi or run.near_whale(amount, sz, px, ct, inverse)):
            whale += amount
            whales += 1
        if amount >= big_at:
            run.big.append(i - 1)
        count += 1
        fills += fill
        taken += 1
        # Order by (ts, tradeId as integer). Stamps tie often; ids of equal length (digits
        # only) then compare as text, which is cheaper than int() and gives the same order.
        if ts >= c_ts:
            if ts > c_ts:
                c_px = px
                c_ts = ts
                c_tid = tid
                c_id = -1
            elif len(tid) == len(c_tid):
                if tid > c_tid:
                    c_px = px
                    c_tid = tid
                    c_id = -1
            else:
                if c_id < 0:
                    c_id = int(c_tid)
                iid = int(tid)
                if iid > c_id:
                    c_px = px
                    c_tid = tid
                    c_id = iid
        if ts <= o_ts and (ts < o_ts or int(tid) < o_id):
            o_px = px
            o_ts = ts
            o_id = int(tid)
        if p >= high and (p > high or ts < h_ts or (ts == h_ts and int(tid) < h_id)):
            h_px = px
            high = p
            h_ts = ts
            h_id = int(tid)
        if p <= low and (p < low or ts < l_ts or (ts == l_ts and int(tid) < l_id)):
            l_px = px
            low = p
            l_ts = ts
            l_id = int(tid)
    run.open = is_open
    run.lo_ms = lo_ms
    run.floor_ms = floor_ms
    run.buy = buy
    run.sell = sell
    run.whale = whale
    run.whale_count = whales
    run.trades = count
    run.fills = fills
    run.open_px = o_px
    run.open_ts = o_ts
    run.open_id = o_id
    run.close_px = c_px
    run.close_ts = c_ts
    run.close_id = c_id
    run.close_tid = c_tid
    run.high_px = h_px
    run.high = high
    run.high_ts = h_ts
    run.high_id = h_id
    run.low_px = l_px
    run.low = low
    run.low_ts = l_ts
    run.low_id = l_id
    run.seen = seen
    run.ids = ids
    run.top = top
    run.late += late
    run.duplicates += dup
    run.accepted += taken
    return i


def fold_flow(run: MinuteRun, trades: list[Any], start: int, stop: int) -> None:
    """Add ``trades[start:stop]``, less the ``run.dropped`` indexes, to the open minute's
    footprint and delta flow: the trades :func:`fold` just took, all of the open minute.

    A pass of its own, so a run without order flow pays nothing for it; a trade's notional is
    computed exactly as :func:`fold` computes it.
    """
    if start >= stop:
        return
    footprint = run.footprint
    flow = run.flow
    scale = run.scale
    linear = run.linear
    own_ct = run.own_ct
    run_ct = run.ct
    run_inverse = not linear
    prices = run.prices
    levels = run.levels
    book = run.book
    items = run.items
    dmin = run.dmin
    dmax = run.dmax
    disordered = run.disordered
    delta = run.delta
    last_ts = run.last_ts
    last_tid = run.last_tid
    last_id = -1
    dropped = run.dropped
    skip = 0
    next_skip = dropped[0] if dropped else stop
    # Trades of one level come in runs: their sums stay in locals until the level changes.
    level = -1
    level_buy = 0
    level_sell = 0
    level_trades = 0
    k = -1
    last_px = ""
    last_p = 0.0
    rows = row_type(trades[start])
    ts = 0
    tid = ""
    px = ""
    sz = 0.0
    side = ""
    ct = 0.0
    inverse = False
    for i in range(start, stop):
        if i == next_skip:
            skip += 1
            next_skip = dropped[skip] if skip < len(dropped) else stop
            continue
        item = trades[i]
        if type(item) is rows:
            row: tuple[Any, ...] = astuple(cast(Any, item))
            tid = row[1]
            px = row[2]
            sz = row[3]
            side = row[4]
            ts = row[5]
            ct = row[7]
            inverse = row[8]
        else:
            t: TradeLike = item
            tid = t.tradeId
            px = t.px
            sz = t.sz
            side = t.side
            ts = t.ts
            ct = t.ct_val
            inverse = t.ct_inverse
        if px == last_px:
            p = last_p
        else:
            q = prices.get(px)
            p = q if q is not None else run.price(px)
            last_px = px
            last_p = p
            if footprint:
                q_level = levels.get(px)
                k = q_level if q_level is not None else run.level(px)
        # (as in fold: int(x + 0.5) rounds halves up for x > 0)
        if ct == 0.0 or not own_ct or (ct == run_ct and inverse == run_inverse):
            amount = int(sz * (p if linear else 1.0) * scale + 0.5)
        else:
            amount = run.own_amount(sz, p, ct, inverse)
        if footprint:
            if k != level:
                if level_trades:
                    cell = book.get(level)
                    if cell is None:
                        book[level] = [level_buy, level_sell, level_trades]
                    else:
                        cell[0] += level_buy
                        cell[1] += level_sell
                        cell[2] += level_trades
                level = k
                level_buy = level_sell = level_trades = 0
            if side == "buy":
                level_buy += amount
            else:
                level_sell += amount
            level_trades += 1
        if flow:
            delta += amount if side == "buy" else -amount
            if not items:
                dmin = dmax = delta
                last_ts = ts
                last_tid = tid
                last_id = -1
            elif not disordered:
                # Later by (ts, tradeId as integer) than every trade so far: the running
                # delta in that order is, so far, the running delta in arrival order.
                later = ts > last_ts
                if ts == last_ts:
                    if len(tid) == len(last_tid):
                        later = tid > last_tid
                    else:
                        if last_id < 0:
                            last_id = int(last_tid)
                        later = int(tid) > last_id
                if later:
                    if delta < dmin:
                        dmin = delta
                    elif delta > dmax:
                        dmax = delta
                    last_ts = ts
                    last_tid = tid
                    last_id = -1
                else:
                    disordered = True
            items.append(item)
    if footprint and level_trades:
        cell = book.get(level)
        if cell is None:
            book[level] = [level_buy, level_sell, level_trades]
        else:
            cell[0] += level_buy
            cell[1] += level_sell
            cell[2] += level_trades
    run.dmin = dmin
    run.dmax = dmax
    run.disordered = disordered
    run.delta = delta
    run.last_ts = last_ts
    run.last_tid = last_tid


def flow_rows(run: MinuteRun) -> list[tuple[int, str, int]]:
    """The open minute's accepted trades as ``(ts, tradeId, signed micro-dollars)`` rows, in
    arrival order, each amount computed exactly as :func:`fold` counted it."""
    rows: list[tuple[int, str, int]] = []
    scale = run.scale
    linear = run.linear
    for item in run.items:
        if type(item) is tuple:
            row: tuple[int, str, int] = item
            rows.append(row)
            continue
        t: TradeLike = item
        q = run.prices.get(t.px)
        p = q if q is not None else run.price(t.px)
        ct = t.ct_val
        inverse = t.ct_inverse
        if ct == 0.0 or not run.own_ct or (ct == run.ct and inverse != linear):
            amount = int(t.sz * (p if linear else 1.0) * scale + 0.5)
        else:
            amount = run.own_amount(t.sz, p, ct, inverse)
        rows.append((t.ts, t.tradeId, amount if t.side == "buy" else -amount))
    return rows
