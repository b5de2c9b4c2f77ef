"""Order flow inside a bar: footprint levels, POC, value area, imbalances and stacks, the
running delta's extremes and the day's CVD, higher timeframes, and bars in progress."""

from __future__ import annotations

import json
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstream import BarAssembler, Instrument, Kind, Settings
from vstream.assembler import MICRO, AssemblerState, footprint_of
from vstream.errors import ConfigError
from vstream.settings import load_config, make_settings, tick_fraction
from vstream.testing import make_trade

SPOT = Instrument("BTC-USDT", Kind.SPOT, inverse=False, ct_val=None)
LINEAR = Instrument("BTC-USDT-SWAP", Kind.SWAP, inverse=False, ct_val=0.01)
M0 = 1_765_747_800_000  # 2025-12-14T21:30:00Z, a minute (and a 5-minute period) start
DAY_END = 1_765_843_200_000  # 2025-12-16T00:00:00Z


def spot(tid: int, px: str, sz: float, side: str, ts: int) -> object:
    return make_trade(tid, px, sz, side, ts, inst_id="BTC-USDT")


def encode(bar: object) -> dict:
    return msgspec.json.decode(msgspec.json.encode(bar))


# -- hand tables ----------------------------------------------------------------------------

#: (tradeId, px, sz, side): spot, so the notional is sz × px.
TABLE = [
    (1, "100.25", 4, "buy"),  # 401    level 100.0
    (2, "100.0", 2, "sell"),  # 200    level 100.0
    (3, "100.5", 10, "buy"),  # 1005   level 100.5
    (4, "100.7", 1, "sell"),  # 100.7  level 100.5
    (5, "99.9", 3, "sell"),  # 299.7  level 99.5
    (6, "101.0", 5, "buy"),  # 505    level 101.0
]


def table_trades(order: list[int] | None = None) -> list:
    trades = [spot(t, px, sz, side, M0 + 10 * t) for t, px, sz, side in TABLE]
    return [trades[i] for i in order] if order is not None else trades


def test_footprint_of_a_bar_against_a_hand_table():
    asm = BarAssembler(SPOT, Settings(footprint_tick=0.5, stacked_levels=2, cvd=True))
    asm.feed(table_trades())
    (bar,) = asm.close()
    line = encode(bar)
    assert line["footprint"] == [
        {"px": "99.5", "buy": "0", "sell": "300", "trades": 1},
        {"px": "100.0", "buy": "401", "sell": "200", "trades": 2},
        {"px": "100.5", "buy": "1005", "sell": "101", "trades": 2},
        {"px": "101.0", "buy": "505", "sell": "0", "trades": 1},
    ]
    # volumes 299.7 / 601 / 1105.7 / 505 of 2511.4: POC 100.5; 70 % = 1757.98 is reached
    # by adding 100.0 (601 > 505), then 101.0 (505 > 299.7)
    assert (line["poc"], line["val"], line["vah"]) == ("100.5", "100.0", "101.0")
    # 1005 >= 3 × 200 and 505 >= 3 × 100.7; 401 < 3 × 299.7; no sell level beats the buy above
    assert line["imbalances"] == [{"px": "100.5", "side": "buy"}, {"px": "101.0", "side": "buy"}]
    assert line["stacked"] == [{"side": "buy", "low": "100.5", "high": "101.0", "levels": 2}]
    # running delta in (ts, tradeId) order: 401, 201, 1206, 1105.3, 805.6, 1310.6
    assert (line["delta_min"], line["delta_max"], line["cvd"]) == ("+201", "+1311", "+1311")
    assert (line["total_volume"], line["buy_volume"], line["sell_volume"]) == ("2511", "1911", "600")
    # the new keys follow every existing key, in this order
    plain = BarAssembler(SPOT)
    plain.feed(table_trades())
    plain_keys = list(encode(plain.close()[0]))
    keys = list(line)
    assert keys[: len(plain_keys)] == plain_keys
    assert keys[len(plain_keys) :] == [
        "footprint", "poc", "vah", "val", "imbalances", "stacked", "delta_min", "delta_max", "cvd",
        "poor_high", "poor_low",
    ]  # fmt: skip


@pytest.mark.parametrize("order", [[5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3], [0, 1, 2, 3, 5, 4]])
def test_arrival_order_changes_nothing(order):
    asm = BarAssembler(SPOT, Settings(footprint_tick=0.5, cvd=True))
    asm.feed(table_trades(order))
    reordered = asm.close()
    asm = BarAssembler(SPOT, Settings(footprint_tick=0.5, cvd=True))
    asm.feed(table_trades())
    assert msgspec.json.encode(reordered) == msgspec.json.encode(asm.close())


def book(rows: dict[int, tuple[float, float, int]]) -> dict[int, list[int]]:
    return {k: [round(b * MICRO), round(s * MICRO), n] for k, (b, s, n) in rows.items()}


def test_poc_is_the_lowest_of_equal_levels_and_value_area_ties_take_the_lower_level():
    fp = footprint_of(book({10: (5, 5, 1), 11: (2, 2, 1), 12: (6, 4, 1), 13: (2, 2, 1)}), (1, 1))
    # 10 and 12 both hold 10: the lower is the POC; 70 % of 28 = 19.6: nothing below 10, so
    # 11 (4) joins -> 14, then 12 (10) -> 24
    assert (fp.poc, fp.val, fp.vah) == ("10", "10", "12")
    fp = footprint_of(book({10: (3, 0, 1), 11: (5, 5, 1), 12: (3, 0, 1)}), (1, 1))
    # 10 of 16; 70 % = 11.2: above and below tie at 3, the lower joins first
    assert (fp.poc, fp.val, fp.vah) == ("11", "10", "11")
    fp = footprint_of(book({10: (1, 0, 1), 11: (5, 5, 1), 12: (3, 0, 1)}), (1, 1))
    assert (fp.poc, fp.val, fp.vah) == ("11", "11", "11")  # 10 of 14 is already 70 %
    fp = footprint_of(book({10: (1, 0, 1), 11: (4, 4, 1), 12: (3, 0, 1)}), (1, 1))
    assert (fp.poc, fp.val, fp.vah) == ("11", "11", "12")  # 8 of 12 is not: 12 (3) beats 10 (1)
    # value area 1.0: every level; a single level is its own area
    fp = footprint_of(book({10: (1, 0, 1), 11: (5, 5, 1), 12: (3, 0, 1)}), (1, 1), value_area=(1, 1))
    assert (fp.val, fp.vah) == ("10", "12")
    fp = footprint_of(book({7: (0, 1, 1)}), (10, 1))
    assert (fp.poc, fp.val, fp.vah, fp.imbalances, fp.stacked) == ("70", "70", "70", [], [])


def test_imbalances_at_the_ratio_and_across_untraded_levels():
    b = book({
        10: (0, 4, 1),   # sell 4 vs buy at 11 = 12: no
        11: (12, 1, 1),  # buy 12 = 3 × sell at 10 (4): yes, the ratio is inclusive
        12: (2.9, 0, 1),  # buy 2.9 < 3 × 1: no
        14: (1, 5, 1),   # buy 1 vs untraded 13 (0): yes; top level: no sell test
    })  # fmt: skip
    fp = footprint_of(b, (1, 1))
    assert [(i.px, i.side) for i in fp.imbalances] == [("11", "buy"), ("14", "buy")]
    # level 12 sells nothing, 13 is untraded: no sell imbalance at 12 (sell must be > 0)
    fp = footprint_of(book({10: (0, 3, 1), 11: (1, 0, 1)}), (1, 1))
    assert [(i.px, i.side) for i in fp.imbalances] == [("10", "sell")]  # 3 >= 3 × 1; 1 < 3 × 3
    # an untraded level inside the range counts as nothing traded there
    fp = footprint_of(book({10: (0, 1, 1), 12: (5, 0, 1)}), (1, 1))
    assert [(i.px, i.side) for i in fp.imbalances] == [("10", "sell"), ("12", "buy")]
    # a custom ratio
    fp = footprint_of(b, (1, 1), ratio=(5, 2))
    assert [(i.px, i.side) for i in fp.imbalances] == [("11", "buy"), ("12", "buy"), ("14", "buy")]


def test_stacked_runs_need_adjacent_levels_of_one_side():
    rows = {k: (9, 1, 1) for k in range(20, 26)}  # every buy ≥ 3 × the sell below it
    rows[23] = (1, 1, 1)  # breaks the run: 21, 22 | 24, 25
    rows[30] = (9, 1, 1)
    rows[31] = (9, 1, 1)
    rows[32] = (9, 1, 1)  # 30 vs untraded 29 (0) -> a run 30..32 across no gap
    fp = footprint_of(book(rows), (1, 1), stacked_levels=2)
    assert [(s.side, s.low, s.high, s.levels) for s in fp.stacked] == [
        ("buy", "21", "22", 2), ("buy", "24", "25", 2), ("buy", "30", "32", 3),
    ]  # fmt: skip
    # 25 sells 1 against nothing bought at the untraded 26: a lone sell imbalance
    assert [i.px for i in fp.imbalances if i.side == "sell"] == ["25"]
    fp = footprint_of(book(rows), (1, 1))
    assert [(s.low, s.high) for s in fp.stacked] == [("30", "32")]
    sells = {k: (1, 9, 1) for k in range(40, 45)}
    fp = footprint_of(book(sells), (1, 1))
    assert [(s.side, s.low, s.high, s.levels) for s in fp.stacked] == [("sell", "40", "43", 4)]


@pytest.mark.parametrize(
    ("tick", "px", "level"),
    [
        (10, "42219.9", "42210"),
        (10, "42210", "42210"),
        (10, "42209.99", "42200"),
        (0.1, "0.3", "0.3"),  # float division would floor 0.3 / 0.1 to 2
        (0.1, "2986.27", "2986.2"),
        (0.5, "99.99", "99.5"),
        (0.25, "1e2", "100.00"),
        (0.01, "0.0001", "0.00"),
        (1, "7", "7"),
        (2.5, "8", "7.5"),
    ],
)
def test_levels_are_prices_floored_exactly_to_the_tick(tick, px, level):
    asm = BarAssembler(SPOT, Settings(footprint_tick=tick))
    asm.feed([spot(1, px, 1, "buy", M0)])
    (bar,) = asm.close()
    assert encode(bar)["footprint"][0]["px"] == level


# -- settings ------------------------------------------------------------------------------


def test_options_off_leave_the_fingerprint_and_the_bar_as_before():
    # The fingerprint of a run without the order-flow options is the one states already hold.
    assert Settings().fingerprint(0.01) == "49e824e7756e2c25"
    assert Settings().fingerprint(0.01, "BTC-USDT-SWAP") == Settings().fingerprint(0.01)
    # a footprint for another instrument does not touch this one's
    other = Settings(footprint={"ETH-USDT-SWAP": 0.5})
    assert other.fingerprint(0.01, "BTC-USDT-SWAP") == Settings().fingerprint(0.01)
    fingerprints = {
        Settings(footprint_tick=10).fingerprint(0.01, "BTC-USDT-SWAP"),
        Settings(footprint_tick=5).fingerprint(0.01, "BTC-USDT-SWAP"),
        Settings(footprint_tick=10, imbalance_ratio=2.5).fingerprint(0.01, "BTC-USDT-SWAP"),
        Settings(cvd=True).fingerprint(0.01, "BTC-USDT-SWAP"),
        Settings().fingerprint(0.01),
    }
    assert len(fingerprints) == 5
    asm = BarAssembler(SPOT)
    asm.feed(table_trades())
    line = encode(asm.close()[0])
    assert list(line)[-1] == "fill_count"


def test_per_instrument_ticks_win_and_bad_ticks_are_configuration_errors(tmp_path):
    cfg = Settings(footprint_tick=10, footprint={"ETH-USDT-SWAP": 0.5})
    assert (cfg.tick_of("BTC-USDT-SWAP"), cfg.tick_of("ETH-USDT-SWAP")) == (10, 0.5)
    assert Settings().tick_of("BTC-USDT-SWAP") is None
    assert tick_fraction(0.1) == (1, 10) and tick_fraction(10) == (10, 1) and tick_fraction(2.5) == (25, 10)
    for bad in (0, -1, float("nan"), float("inf"), 1e-13):
        with pytest.raises(ConfigError, match="tick"):
            Settings(footprint_tick=bad)
    with pytest.raises(ConfigError, match="ETH-USDT-SWAP"):
        Settings(footprint={"ETH-USDT-SWAP": 0})
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        Settings(imbalance_ratio=0.5)
    with pytest.raises(ConfigError, match="stacked_levels"):
        Settings(stacked_levels=1)
    with pytest.raises(ConfigError, match="value_area"):
        Settings(value_area=1.5)
    path = tmp_path / "c.toml"
    path.write_text('footprint_tick = 10\ncvd = true\n[footprint]\n"ETH-USDT-SWAP" = 0.05\n')
    merged = make_settings(load_config(path), footprint={"SOL-USDT-SWAP": 0.01})
    assert merged.footprint == {"ETH-USDT-SWAP": 0.05, "SOL-USDT-SWAP": 0.01}
    assert merged.footprint_tick == 10 and merged.cvd is True


def test_command_line_options_reach_the_settings():
    from vstream.cli import build_parser
    from vstream.cli.common import settings_of

    args = build_parser().parse_args(
        ["replay", "--instId", "BTC-USDT-SWAP", "--footprint", "10", "--footprint", "ETH-USDT-SWAP=0.5", "--cvd",
         "--imbalance-ratio", "2.5", "--stacked-levels", "4", "--value-area", "0.68"]
    )  # fmt: skip
    got, given = settings_of(args)
    assert {"footprint_tick", "footprint", "cvd", "imbalance_ratio", "stacked_levels", "value_area"} <= given
    assert (got.footprint_tick, got.footprint, got.cvd) == (10.0, {"ETH-USDT-SWAP": 0.5}, True)
    assert (got.imbalance_ratio, got.stacked_levels, got.value_area) == (2.5, 4, 0.68)
    plain, given = settings_of(build_parser().parse_args(["replay", "--instId", "BTC-USDT-SWAP"]))
    assert plain == Settings() and not given
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--instId", "BTC-USDT-SWAP", "--footprint", "ten"])


# -- CVD over days --------------------------------------------------------------------------


def test_cvd_starts_over_at_each_utc_day_and_survives_a_resume():
    cfg = Settings(cvd=True, timeframes=("1m", "1h"))
    trades = [
        make_trade(1, "100", 100, "buy", DAY_END - 120_000),  # +100
        make_trade(2, "100", 30, "sell", DAY_END - 60_000),  # -30
        make_trade(3, "100", 10, "sell", DAY_END),  # -10, the next day
        make_trade(4, "100", 50, "buy", DAY_END + 60_000),  # +50
    ]
    asm = BarAssembler(LINEAR, cfg)
    bars = asm.feed(trades[:2])
    saved = msgspec.json.encode(asm.snapshot())
    asm = BarAssembler(LINEAR, cfg, state=msgspec.json.decode(saved, type=AssemblerState))
    bars += asm.feed(trades[2:])
    bars += asm.close()
    got = [(b.timestamp_utc, b.timeframe, b.cvd) for b in bars]
    assert got == [
        ("2025-12-15T23:58:00Z", msgspec.UNSET, "+100"),
        ("2025-12-15T23:59:00Z", msgspec.UNSET, "+70"),
        ("2025-12-16T00:00:00Z", msgspec.UNSET, "-10"),
        ("2025-12-15T23:00:00Z", "1h", "+70"),  # finished by the first 1m bar of the next hour
        ("2025-12-16T00:01:00Z", msgspec.UNSET, "+40"),
        ("2025-12-16T00:00:00Z", "1h", "+40"),
    ]


# -- properties ----------------------------------------------------------------------------


@st.composite
def minute_trades(draw: st.DrawFn, minutes: int = 1) -> list:
    """Trades of ``minutes`` minutes from M0, unique ids rising with ts, arriving shuffled
    inside each minute (none late)."""
    n = draw(st.integers(1, 80))
    stamps = sorted(M0 + draw(st.integers(0, minutes * 60_000 - 1)) for _ in range(n))
    out = []
    for i, ts in enumerate(stamps):
        px = draw(st.sampled_from(["42210", "42219.9", "42220", "42231.5", "42199.1", "42250", "42260.3"]))
        sz = draw(st.sampled_from([1.0, 3.0, 0.5, 250.0, 12.0, 0.01]))
        out.append(make_trade(1000 + i, px, sz, draw(st.sampled_from(["buy", "sell"])), ts))
    seed = draw(st.integers(0, 2**16))
    random.Random(seed).shuffle(out)
    out.sort(key=lambda t: t.ts // 60_000)
    return out


@settings(max_examples=150, deadline=None)
@given(trades=minute_trades(), tick=st.sampled_from([0.1, 1, 10, 25]), cut=st.integers(0, 80))
def test_levels_sum_exactly_to_the_bar(trades, tick, cut):
    cfg = Settings(footprint_tick=tick, cvd=True)
    asm = BarAssembler(LINEAR, cfg)
    asm.feed(trades[:cut])
    asm.feed(trades[cut:])
    agg = asm.snapshot().series["1m"].open
    assert agg is not None and agg.book is not None
    assert sum(c[0] for c in agg.book.values()) == agg.buy
    assert sum(c[1] for c in agg.book.values()) == agg.sell
    assert sum(c[2] for c in agg.book.values()) == agg.trades == len(trades)
    (bar,) = asm.close()
    line = encode(bar)
    levels = line["footprint"]
    assert sum(level["trades"] for level in levels) == line["trade_count"]
    # each level is its exact sum rounded once
    exact = {level: cell for level, cell in agg.book.items()}
    assert [int(x["buy"]) for x in levels] == [(exact[k][0] + MICRO // 2) // MICRO for k in sorted(exact)]
    assert [int(x["sell"]) for x in levels] == [(exact[k][1] + MICRO // 2) // MICRO for k in sorted(exact)]
    prices = [float(x["px"]) for x in levels]
    assert prices == sorted(prices) and len(set(prices)) == len(prices)
    assert float(line["val"]) <= float(line["poc"]) <= float(line["vah"])
    # the running delta's extremes, recomputed the slow way
    rows = sorted(trades, key=lambda t: (t.ts, int(t.tradeId)))
    running, seen = 0, []
    for t in rows:
        amount = int(t.sz * float(t.px) * 0.01 * MICRO + 0.5)
        running += amount if t.side == "buy" else -amount
        seen.append(running)
    assert line["delta_min"] == "%+d" % round_usd(min(seen))
    assert line["delta_max"] == "%+d" % round_usd(max(seen))
    assert int(line["delta_min"]) <= int(line["delta"]) <= int(line["delta_max"])


def round_usd(micro: int) -> int:
    return (micro + MICRO // 2) // MICRO if micro >= 0 else -((-micro + MICRO // 2) // MICRO)


@settings(max_examples=100, deadline=None)
@given(trades=minute_trades(minutes=5), tick=st.sampled_from([0.1, 10]))
def test_a_5m_footprint_is_the_sum_of_its_1m_ones(trades, tick):
    cfg = Settings(footprint_tick=tick, cvd=True, timeframes=("1m", "5m"))
    asm = BarAssembler(LINEAR, cfg)
    bars = asm.feed(trades) + asm.close()
    (five,) = [encode(b) for b in bars if b.timeframe == "5m"]
    # the same trades squeezed into one minute, (ts, tradeId) order kept (ids rise with ts)
    squeezed = [t.__replace__(ts=M0 + (t.ts - M0) // 5) for t in trades]
    one = BarAssembler(LINEAR, Settings(footprint_tick=tick, cvd=True))
    (single,) = [encode(b) for b in one.feed(squeezed) + one.close()]
    for key in ("footprint", "poc", "vah", "val", "imbalances", "stacked", "delta_min", "delta_max", "cvd",
                "total_volume", "buy_volume", "sell_volume", "delta"):  # fmt: skip
        assert five[key] == single[key], key
    # and level by level the 1m bars add up to it (trade counts exactly)
    counts: dict[str, int] = {}
    for b in bars:
        if b.timeframe is msgspec.UNSET:
            for level in encode(b)["footprint"]:
                counts[level["px"]] = counts.get(level["px"], 0) + level["trades"]
    assert counts == {level["px"]: level["trades"] for level in five["footprint"]}


# -- bars in progress ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(trades=minute_trades(minutes=3), cuts=st.lists(st.integers(0, 80), max_size=6).map(sorted))
def test_partial_bars_change_nothing_and_end_equal_to_the_final_bar(trades, cuts):
    cfg = Settings(footprint_tick=10, cvd=True, timeframes=("1m", "5m"), min_history=1)
    plain = BarAssembler(LINEAR, cfg)
    expected = plain.feed(trades) + plain.close()
    asm = BarAssembler(LINEAR, cfg)
    got = []
    last_partial = None
    start = 0
    for cut in [*cuts, len(trades)]:
        finished = asm.feed(trades[start:cut])
        start = max(start, cut)
        for bar in finished:
            # the last look at a minute before it closed, if no trade came after it
            if (
                bar.timeframe is msgspec.UNSET
                and last_partial is not None
                and last_partial.timestamp_utc == bar.timestamp_utc
                and last_partial.trade_count == bar.trade_count
            ):
                assert msgspec.structs.replace(last_partial, final=msgspec.UNSET) == bar
        got += finished
        last_partial = asm.partial()
        if last_partial is not None:
            assert last_partial.final is False
            assert asm.partial() == last_partial  # looking twice changes nothing
    closing = asm.close()
    assert last_partial is not None
    assert msgspec.structs.replace(last_partial, final=msgspec.UNSET) == closing[0]
    assert msgspec.json.encode(got + closing) == msgspec.json.encode(expected)


def test_partial_is_none_without_an_open_minute_or_once_it_is_due():
    asm = BarAssembler(LINEAR, Settings(grace=2.0))
    assert asm.partial() is None
    asm.feed([make_trade(1, "100", 1, "buy", M0 + 5)])
    assert asm.partial(M0 + 61_999) is not None
    assert asm.partial(M0 + 62_000) is None  # close_due finishes it now
    assert asm.close_due(M0 + 62_000)[0].final is msgspec.UNSET
    assert asm.partial() is None


@settings(max_examples=150, deadline=None)
@given(
    trades=minute_trades(minutes=7),
    cuts=st.lists(st.integers(0, 80), max_size=5).map(sorted),
    dupes=st.lists(st.integers(0, 79), max_size=4),
)
def test_resumed_anywhere_equals_one_run(trades, cuts, dupes):
    # Cut the stream anywhere, save the state as JSON and continue in a new assembler: the
    # bars (footprints, delta extremes, CVD, higher timeframes) are those of one run.
    # Duplicates re-sent later exercise the open minute's ids after a resume.
    items = list(trades) + [trades[i] for i in dupes if i < len(trades)]
    cfg = Settings(footprint_tick=10, cvd=True, timeframes=("1m", "5m"), min_history=1)
    one = BarAssembler(LINEAR, cfg)
    expected = one.feed(items) + one.close()
    asm = BarAssembler(LINEAR, cfg)
    got = []
    start = 0
    for cut in [*cuts, len(items)]:
        got += asm.feed(items[start:cut])
        start = max(start, cut)
        saved = msgspec.json.encode(asm.snapshot())
        asm = BarAssembler(LINEAR, cfg, state=msgspec.json.decode(saved, type=AssemblerState))
    got += asm.close()
    assert msgspec.json.encode(got) == msgspec.json.encode(expected)
    assert asm.counters == one.counters


# -- signals -------------------------------------------------------------------------------


@pytest.fixture
def flow_vault(tmp_path):
    """Four minutes replayed with a footprint of tick 1: a stack of buy imbalances in the
    first, then POCs 101 -> 105 -> 103 -> 103."""
    from support import trade_line

    from vstream.cli import main
    from vstream.instruments import VaultPaths

    rows = [
        ("99", "10", "sell", 0), ("100", "300", "buy", 0), ("100", "10", "sell", 0),
        ("101", "300", "buy", 0), ("101", "10", "sell", 0), ("102", "300", "buy", 0),
        ("105", "1", "buy", 1), ("103", "1", "sell", 2), ("103.5", "1", "buy", 3),
    ]  # fmt: skip
    lines = [trade_line(i + 1, px, sz, side, M0 + 60_000 * minute + i) for i, (px, sz, side, minute) in enumerate(rows)]
    raw = VaultPaths.of(tmp_path, "BTC-USDT-SWAP").raw_dir
    raw.mkdir(parents=True)
    (raw / "2025-12-14.jsonl").write_text("".join(line + "\n" for line in lines))
    base = ["replay", "--instId", "BTC-USDT-SWAP", "--vault", str(tmp_path), "--final", "--footprint", "1"]
    assert main(["-q", *base]) == 0
    return tmp_path


def stamps(capsys, vault, *flags: str) -> list[str]:
    from vstream.cli import main

    assert main(["signals", "--instId", "BTC-USDT-SWAP", "--vault", str(vault), "--json", *flags]) == 0
    return [json.loads(line)["timestamp_utc"][11:16] for line in capsys.readouterr().out.splitlines()]


def test_signals_find_stacked_imbalances_and_poc_shifts(flow_vault, capsys):
    assert stamps(capsys, flow_vault, "--stacked-imbalance", "buy") == ["21:30"]
    assert stamps(capsys, flow_vault, "--stacked-imbalance", "sell") == []
    assert stamps(capsys, flow_vault, "--poc-shift") == ["21:31", "21:32"]  # 101 -> 105 -> 103
    assert stamps(capsys, flow_vault, "--poc-shift", "up") == ["21:31"]
    assert stamps(capsys, flow_vault, "--poc-shift", "down") == ["21:32"]
    assert stamps(capsys, flow_vault, "--poc-shift", "--poc-shift-min", "3") == ["21:31"]
    assert stamps(capsys, flow_vault, "--poc-shift", "--poc-shift-min", "4") == ["21:31"]
    assert stamps(capsys, flow_vault, "--poc-shift", "--poc-shift-min", "4.5") == []
    # the previous bar of the first one in range lies before --since
    assert stamps(capsys, flow_vault, "--poc-shift", "--since", "2025-12-14T21:32Z") == ["21:32"]
    # signals are alternatives: either one
    assert stamps(capsys, flow_vault, "--poc-shift", "down", "--stacked-imbalance", "buy") == ["21:30", "21:32"]
    from vstream.cli import main

    assert main(["signals", "--instId", "BTC-USDT-SWAP", "--vault", str(flow_vault), "--stacked-imbalance", "buy"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and table[1].endswith("stacked-buy")


def test_poc_shift_needs_footprints_on_both_bars():
    from vstream.query import poc_shift

    asm = BarAssembler(LINEAR, Settings(footprint_tick=1))
    bars = asm.feed([make_trade(1, "100", 1, "buy", M0), make_trade(2, "102", 1, "buy", M0 + 60_000)]) + asm.close()
    plain = msgspec.structs.replace(bars[0], poc=msgspec.UNSET)
    assert poc_shift(bars[1], bars[0], "up")
    assert not poc_shift(bars[1], plain, "any")
    assert not poc_shift(bars[1], None, "any")
    assert not poc_shift(bars[0], bars[1], "up")


def test_turning_the_footprint_off_or_on_asks_for_rebuild(flow_vault, capsys):
    from vstream.cli import main
    from vstream.instruments import VaultPaths

    base = ["replay", "--instId", "BTC-USDT-SWAP", "--vault", str(flow_vault), "--final"]
    with_fp = VaultPaths.of(flow_vault, "BTC-USDT-SWAP").output().read_bytes()
    assert main([*base, "--footprint", "1"]) == 0  # same settings: nothing to do
    assert main(base) == 0  # not given: the stored footprint goes on
    capsys.readouterr()
    assert main([*base, "--no-footprint"]) == 2
    err = capsys.readouterr().err
    assert "footprint is 1 in the state, off given" in err and "--rebuild" in err
    assert main([*base, "--footprint", "2"]) == 2
    assert "footprint is 1 in the state, 2 given" in capsys.readouterr().err
    assert main([*base, "--cvd"]) == 2
    assert "cvd is off in the state, on given" in capsys.readouterr().err
    assert main([*base, "--footprint", "1", "--no-footprint"]) == 2
    assert VaultPaths.of(flow_vault, "BTC-USDT-SWAP").output().read_bytes() == with_fp
    assert main([*base, "--rebuild"]) == 0  # a rebuild keeps what it is not told to change
    assert VaultPaths.of(flow_vault, "BTC-USDT-SWAP").output().read_bytes() == with_fp
    assert main([*base, "--rebuild", "--no-footprint"]) == 0
    plain = VaultPaths.of(flow_vault, "BTC-USDT-SWAP").output().read_bytes()
    assert b'"footprint"' not in plain and plain.count(b"\n") == with_fp.count(b"\n")
    # the bars without the option are the bars with it, cut after fill_count
    for a, b in zip(plain.splitlines(), with_fp.splitlines(), strict=True):
        assert b.startswith(a[:-1] + b',"footprint":')
