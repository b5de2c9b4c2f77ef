"""The bar assembler, synchronously, on tables of hand-computed trades (SPEC §5, §6)."""

from __future__ import annotations

import msgspec
import pytest

from vstream import Bar, BarAssembler, Instrument, Kind, Settings
from vstream.testing import make_trade

M0 = 1_765_747_980_000  # 2025-12-14T21:33:00Z, a minute start
MIN = 60_000
SPOT = Instrument("BTC-USDT", Kind.SPOT, inverse=False, ct_val=None)  # notional = sz × px
LINEAR = Instrument("BTC-USDT-SWAP", Kind.SWAP, inverse=False, ct_val=0.01)
INVERSE = Instrument("BTC-USD-SWAP", Kind.SWAP, inverse=True, ct_val=100.0)


def spot(tid: int, px: str, sz: float, side: str = "buy", ts: int = M0, count: int = 1):
    return make_trade(tid, px, sz, side, ts, inst_id="BTC-USDT", count=count)


def one_bar(trades, instrument=SPOT, settings=None) -> Bar:
    asm = BarAssembler(instrument, settings)
    bars = asm.feed(trades) + asm.close()
    assert len(bars) == 1
    return bars[0]


def history(asm: BarAssembler, totals: list[int], start_minute: int = 0) -> int:
    """Feed one bar per total (one buy trade at px 1 of that size); return the next minute."""
    for i, total in enumerate(totals):
        asm.feed([spot(1000 + i, "1", total, "buy", M0 + (start_minute + i) * MIN)])
    return start_minute + len(totals)


def bar_after(totals: list[int], trades_for_next, settings=None) -> Bar:
    asm = BarAssembler(SPOT, settings)
    minute = history(asm, totals)
    bars = asm.feed(trades_for_next(M0 + minute * MIN)) + asm.close()
    return bars[-1]


def test_one_minute_hand_computed():
    # 1000 @ 100 buy ($100,000 -> whale, count 3), 2 @ 101 sell ($202), 4 @ 99.5 sell ($398)
    bar = one_bar(
        [
            spot(11, "100", 1000, "buy", M0 + 1_000, count=3),
            spot(12, "101", 2, "sell", M0 + 2_000),
            spot(13, "99.5", 4, "sell", M0 + 59_999),
        ]
    )
    assert msgspec.json.encode(bar) == (
        b'{"timestamp_utc":"2025-12-14T21:33:00Z","instId":"BTC-USDT","exchange":"okx",'
        b'"market":"spot","open":"100","high":"101","low":"99.5","close":"99.5",'
        b'"price_change_pct":"-0.50","total_volume":"100600","buy_volume":"100000",'
        b'"sell_volume":"600","delta":"+99400","whale_volume":"100000","whale_count":1,'
        b'"trade_count":3,"volume_tier":null,"absorption":false,"divergence":true,'
        b'"divergence_type":"bullish","volume_ratio":null,"fill_count":5}'
    )


def test_whale_threshold_is_inclusive_and_settable():
    exact = one_bar([spot(1, "100", 1000)])  # exactly $100,000
    below = one_bar([spot(1, "100", 999.99)])
    assert (exact.whale_count, exact.whale_volume) == (1, "100000")
    assert (below.whale_count, below.whale_volume) == (0, "0")
    custom = one_bar([spot(1, "100", 600)], settings=Settings(whale_usd=50_000))
    assert custom.whale_count == 1


@pytest.mark.parametrize("first", [True, False], ids=["opens the minute", "later in the minute"])
def test_whale_is_decided_on_the_exact_notional_not_the_rounded_one(first):
    # $99,999.9999996 rounds to exactly 100,000,000,000 micro-dollars but is not $100,000.
    lead = [] if first else [spot(1, "1", 1, ts=M0)]
    near = one_bar([*lead, spot(2, "99999.9999996", 1, ts=M0 + 1)])
    assert (near.whale_count, near.whale_volume) == (0, "0")
    assert near.total_volume == str(100_000 + (0 if first else 1))  # the volume still counts it
    at = one_bar([*lead, spot(2, "100000", 1, ts=M0 + 1)])
    assert (at.whale_count, at.whale_volume) == (1, "100000")
    above = one_bar([*lead, spot(2, "100000.0000004", 1, ts=M0 + 1)])
    assert (above.whale_count, above.whale_volume) == (1, "100000")


def test_exact_whale_rule_covers_contracts_and_the_setting_as_written():
    # linear: 100 contracts × 0.01 × 99999.9999996 = 99999.9999996
    assert one_bar([make_trade(1, "99999.9999996", 100, ts=M0)], instrument=LINEAR).whale_count == 0
    assert one_bar([make_trade(1, "100000", 100, ts=M0)], instrument=LINEAR).whale_count == 1
    # inverse: sz × ctVal, the price plays no part
    assert one_bar([make_trade(1, "42000.5", 1000, inst_id="BTC-USD-SWAP", ts=M0)], instrument=INVERSE).whale_count == 1
    assert one_bar([make_trade(1, "42000.5", 999, inst_id="BTC-USD-SWAP", ts=M0)], instrument=INVERSE).whale_count == 0
    # a threshold with sub-micro-dollar digits is compared as written
    odd = Settings(whale_usd=50_000.0000002)
    assert one_bar([spot(1, "50000.0000002", 1)], settings=odd).whale_count == 1
    assert one_bar([spot(1, "50000.0000001", 1)], settings=odd).whale_count == 0
    # a large threshold, where a float's rounding is more than a micro-dollar
    big = Settings(whale_usd=1e9)
    assert one_bar([spot(1, "999999999.9999996", 1)], settings=big).whale_count == 0
    assert one_bar([spot(1, "1000000000", 1)], settings=big).whale_count == 1
    assert one_bar([spot(1, "999999999.999", 1)], settings=big).whale_count == 0


@pytest.mark.parametrize(
    ("instrument", "px", "sz", "total"),
    [
        (LINEAR, "42219.9", 12, "5066"),  # 12 × 0.01 × 42219.9 = 5066.388
        (INVERSE, "42219.9", 12, "1200"),  # 12 × $100, price does not matter
        (SPOT, "42219.9", 0.5, "21110"),  # 0.5 × 42219.9 = 21109.95 -> rounds half up
    ],
)
def test_notional_per_instrument_kind(instrument, px, sz, total):
    trade = make_trade(1, px, sz, "buy", M0, inst_id=instrument.inst_id)
    assert one_bar([trade], instrument).total_volume == total


def test_order_inside_minute_is_ts_then_numeric_trade_id():
    # Same ts for ids 9 and 10: numerically 9 < 10 (as strings "10" < "9").
    trades = [
        spot(10, "102", 1, ts=M0 + 500),
        spot(9, "101", 1, ts=M0 + 500),
        spot(20, "103", 1, ts=M0 + 900),
        spot(21, "104", 1, ts=M0 + 900),
        spot(5, "99", 1, ts=M0 + 900),  # latest ts tie: id 21 is the close, not 5
    ]
    forward = one_bar(trades)
    backward = one_bar(list(reversed(trades)))
    assert (forward.open, forward.close) == ("101", "104")
    assert msgspec.json.encode(forward) == msgspec.json.encode(backward)


def test_equal_prices_keep_text_of_first_trade_by_order():
    trades = [spot(2, "100.0", 1, ts=M0 + 2), spot(1, "100", 1, ts=M0 + 2), spot(3, "99.50", 1, ts=M0 + 3)]
    for order in (trades, trades[::-1], [trades[2], trades[0], trades[1]]):
        bar = one_bar(order)
        assert (bar.open, bar.high, bar.low, bar.close) == ("100", "100", "99.50", "99.50")


def test_late_and_duplicate_trades_are_dropped_and_counted():
    asm = BarAssembler(SPOT)
    first = asm.feed([spot(1, "100", 1, ts=M0), spot(2, "100", 1, ts=M0 + 10)])
    assert first == []
    assert asm.feed([spot(2, "100", 5, ts=M0 + 10)]) == []  # duplicate of the open minute
    assert asm.feed([spot(2, "100", 5, ts=M0 + 20)]) == []  # same id, other ts: still a duplicate
    bars = asm.feed([spot(3, "101", 1, ts=M0 + MIN)])
    assert [b.total_volume for b in bars] == ["200"]
    assert asm.feed([spot(4, "90", 1, ts=M0 + 30)]) == []  # minute 0 is out: late
    final = asm.close()
    assert [b.total_volume for b in final] == ["101"]
    assert asm.feed([spot(5, "90", 1, ts=M0 + MIN + 1)]) == []  # after close(): late too
    c = asm.counters
    assert (c.trades, c.duplicates, c.late, c.bars) == (3, 2, 2, 2)


def test_minutes_without_trades_make_no_bar_and_do_not_enter_window():
    asm = BarAssembler(SPOT, Settings(min_history=2, median_window=2))
    bars = asm.feed([spot(1, "1", 100, ts=M0), spot(2, "1", 300, ts=M0 + 5 * MIN)])
    bars += asm.feed([spot(3, "1", 200, ts=M0 + 9 * MIN)]) + asm.close()
    assert [b.timestamp_utc[11:16] for b in bars] == ["21:33", "21:38", "21:42"]
    assert bars[2].volume_ratio == "1.00"  # median of (100, 300) = 200: gaps did not count


@pytest.mark.parametrize(
    ("total", "tier", "ratio"),
    [
        (49.99, "T1", "0.50"),
        (50, "T2", "0.50"),
        (99.99, "T2", "1.00"),
        (100, "T3", "1.00"),
        (200, "T3", "2.00"),
        (200.01, "T4", "2.00"),
    ],
)
def test_tier_boundaries_exact(total, tier, ratio):
    bar = bar_after([100] * 20, lambda ts: [spot(1, "1", total, ts=ts)])
    assert (bar.volume_tier, bar.volume_ratio) == (tier, ratio)


def test_warm_up_needs_min_history_previous_bars():
    at19 = bar_after([100] * 19, lambda ts: [spot(1, "1", 500, ts=ts)])
    at20 = bar_after([100] * 20, lambda ts: [spot(1, "1", 500, ts=ts)])
    assert (at19.volume_tier, at19.volume_ratio) == (None, None)
    assert (at20.volume_tier, at20.volume_ratio) == ("T4", "5.00")
    # absorption is false while warming up even for a flat, heavy bar
    flat19 = bar_after([100] * 19, lambda ts: [spot(1, "1", 500, ts=ts), spot(2, "1", 1, ts=ts + 1)])
    assert flat19.absorption is False


def test_even_and_odd_length_median():
    even = bar_after([100] * 10 + [300] * 10, lambda ts: [spot(1, "1", 100, ts=ts)])
    assert (even.volume_ratio, even.volume_tier) == ("0.50", "T2")  # median (100+300)/2 = 200
    odd = bar_after([100] * 10 + [300] * 11, lambda ts: [spot(1, "1", 100, ts=ts)])
    assert (odd.volume_ratio, odd.volume_tier) == ("0.33", "T1")  # median 300


def test_median_window_keeps_only_last_n_bars():
    # 100 bars of 1000 then 100 bars of 10: the first 100 are out of the window.
    bar = bar_after([1000] * 100 + [10] * 100, lambda ts: [spot(1, "1", 10, ts=ts)])
    assert bar.volume_ratio == "1.00"
    small = bar_after([1000] * 5 + [10] * 5, lambda ts: [spot(1, "1", 10, ts=ts)],
                      Settings(median_window=5, min_history=5))  # fmt: skip
    assert small.volume_ratio == "1.00"


def flat_bar(open_px: str, close_px: str, buy: float, sell: float):
    """Trades opening at open_px, closing at close_px, with given buy/sell notionals."""
    def make(ts: int):
        return [
            make_trade(1, open_px, buy / float(open_px), "buy", ts, inst_id="BTC-USDT"),
            make_trade(2, close_px, sell / float(close_px), "sell", ts + 1, inst_id="BTC-USDT"),
        ]
    return make


@pytest.mark.parametrize(
    ("close_px", "expect"),
    [
        ("100.09", True),  # +0.09 % and ratio 5 -> absorption
        ("99.91", True),
        ("100.1", False),  # exactly +0.1 %: not below the limit
        ("99.9", False),  # exactly -0.1 %
    ],
)
def test_absorption_price_boundary(close_px, expect):
    bar = bar_after([100] * 20, flat_bar("100", close_px, 250, 250))  # median 100, total 500
    assert bar.volume_ratio == "5.00"
    assert bar.absorption is expect


def test_absorption_needs_ratio_strictly_above_setting():
    exact = bar_after([100] * 20, flat_bar("100", "100", 100, 100))  # ratio exactly 2.0
    above = bar_after([100] * 20, flat_bar("100", "100", 100.01, 100))
    assert (exact.volume_ratio, exact.absorption) == ("2.00", False)
    assert above.absorption is True
    assert exact.price_change_pct == "+0.00"


@pytest.mark.parametrize(
    ("close_px", "buy", "sell", "kind"),
    [
        ("100.1", 45, 55, "bearish"),  # +0.1 % exactly, delta -10 = 0.1 × 100 exactly
        ("99.9", 55, 45, "bullish"),
        ("100.09", 45, 55, None),  # price move below 0.1 %
        ("100.1", 45.01, 54.99, None),  # |delta| 9.98 < 10
        ("100.1", 55, 45, None),  # same sign: no divergence
        ("100", 10, 90, None),  # flat price
    ],
)
def test_divergence_boundaries(close_px, buy, sell, kind):
    bar = one_bar(flat_bar("100", close_px, buy, sell)(M0))
    assert bar.divergence_type == kind
    assert bar.divergence is (kind is not None)


def test_price_change_never_negative_zero_and_rounding():
    tiny_down = one_bar([spot(1, "100000", 1, ts=M0), spot(2, "99999.999", 1, ts=M0 + 1)])
    assert tiny_down.price_change_pct == "+0.00"
    up = one_bar([spot(1, "3", 1, ts=M0), spot(2, "3.0001", 1, ts=M0 + 1)])
    assert up.price_change_pct == "+0.00"
    down = one_bar([spot(1, "200", 1, ts=M0), spot(2, "199.3", 1, ts=M0 + 1)])
    assert down.price_change_pct == "-0.35"


def test_dollar_rounding_and_delta_sign():
    zero = one_bar([spot(1, "1", 10, "buy"), spot(2, "1", 10, "sell", M0 + 1)])
    assert (zero.delta, zero.total_volume) == ("+0", "20")
    half = one_bar([spot(1, "1", 0.5, "buy"), spot(2, "1", 2, "sell", M0 + 1)])
    assert (half.buy_volume, half.sell_volume, half.total_volume, half.delta) == ("1", "2", "3", "-2")


def test_higher_timeframe_bar_aggregates_minutes():
    asm = BarAssembler(SPOT, Settings(timeframes=("1m", "5m")))
    base = M0 - (M0 // MIN) % 5 * MIN  # a 5-minute boundary
    trades = [spot(i, str(100 + i), 1 + i, "buy" if i % 2 else "sell", base + i * MIN) for i in range(1, 5)]
    bars = asm.feed(trades) + asm.feed([spot(9, "50", 1, ts=base + 5 * MIN)]) + asm.close()
    five = [b for b in bars if b.timeframe == "5m"]
    ones = [b for b in bars if not isinstance(b.timeframe, str)]
    assert len(ones) == 5 and len(five) == 2
    first = five[0]
    assert (first.open, first.high, first.low, first.close) == ("101", "104", "101", "104")
    assert first.total_volume == str(sum((100 + i) * (1 + i) for i in range(1, 5)))
    assert first.trade_count == 4 and asm.counters.bars == 5


def test_close_due_waits_for_grace():
    asm = BarAssembler(SPOT, Settings(grace=2.0))
    asm.feed([spot(1, "1", 1, ts=M0 + 100)])
    assert asm.close_due(M0 + MIN + 1_999) == []
    bars = asm.close_due(M0 + MIN + 2_000)
    assert len(bars) == 1 and asm.open_minute is None
    assert asm.feed([spot(2, "1", 1, ts=M0 + 200)]) == [] and asm.counters.late == 1


def test_gap_flag_adds_extra_key_only_when_set():
    asm = BarAssembler(SPOT)
    asm.feed([spot(1, "1", 1)])
    asm.mark_gap()
    bar = asm.close()[0]
    assert msgspec.json.encode(bar).endswith(b'"fill_count":1,"gap":true}')


def test_snapshot_restore_continues_identically():
    trades = [spot(i, str(100 + (i * 7) % 13), 1 + i % 5, "buy" if i % 3 else "sell", M0 + i * 7_001)
              for i in range(1, 400)]  # fmt: skip
    settings = Settings(min_history=3, timeframes=("1m", "5m"))
    whole = BarAssembler(SPOT, settings)
    expected = whole.feed(trades) + whole.close()
    for cut in (1, 57, 200, 398):
        first = BarAssembler(SPOT, settings)
        bars = first.feed(trades[:cut])
        state = msgspec.json.decode(msgspec.json.encode(first.snapshot()), type=type(first.snapshot()))
        second = BarAssembler(SPOT, settings, state)
        bars += second.feed(trades[cut:]) + second.close()
        assert msgspec.json.encode(bars) == msgspec.json.encode(expected)
        assert second.counters == whole.counters


def test_bar_stamps_are_utc_minutes_across_days_years_and_leap_days():
    import time

    from vstream.assembler import _stamp

    start = 1_483_228_800 // 60  # 2017-01-01T00:00Z
    for minute in [*range(start, start + 3000, 7), *range(start, start + 10 * 366 * 1440, 1439)]:
        assert _stamp(minute) == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute * 60))
    assert _stamp(28_499_039) == "2024-03-08T23:59:00Z" and _stamp(28_080_000) == "2023-05-23T00:00:00Z"
