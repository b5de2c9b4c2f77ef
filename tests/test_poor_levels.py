"""Poor highs and lows on footprint bars (issue #19 part 2, docs/levels.md).

A bar's high (low) is *poor* when its highest (lowest) footprint level traded both buy and
sell, each at least ``poor_min_usd``: the auction there did not finish. Hand tables first
(levels small enough to judge by eye), then the setting, then higher timeframes against the
summed exact 1m footprints.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstream import BarAssembler, Instrument, Kind, Settings
from vstream.assembler import MICRO, footprint_of, poor_level
from vstream.errors import ConfigError
from vstream.settings import TIMEFRAMES, load_config, make_settings
from vstream.testing import make_trade

SPOT = Instrument("BTC-USDT", Kind.SPOT, inverse=False, ct_val=None)
LINEAR = Instrument("BTC-USDT-SWAP", Kind.SWAP, inverse=False, ct_val=0.01)
M0 = 1_765_746_000_000  # 2025-12-14T21:00:00Z: a minute, 5-minute and hour start


def book(rows: dict[int, tuple[float, float]]) -> dict[int, list[int]]:
    """Levels in dollars (buy, sell) as exact micro-dollar cells (one trade each)."""
    return {k: [round(b * MICRO), round(s * MICRO), 1] for k, (b, s) in rows.items()}


def poor(rows: dict[int, tuple[float, float]], minimum: tuple[int, int] = (0, 1)) -> tuple[bool, bool]:
    fp = footprint_of(book(rows), (1, 1), poor_min=minimum)
    return fp.poor_high, fp.poor_low


# -- hand tables ----------------------------------------------------------------------------

#: (levels as {level: (buy $, sell $)}, poor_min_usd as an exact fraction, (poor_high, poor_low))
HAND = [
    # both sides at both ends: the auction finished at neither extreme
    ({10: (5, 3), 11: (2, 0), 12: (1, 1)}, (0, 1), (True, True)),
    # the high level only bought, the low level only sold: both extremes finished
    ({10: (0, 4), 11: (9, 9), 12: (3, 0)}, (0, 1), (False, False)),
    # a one-sided high above a two-sided low
    ({10: (2, 2), 12: (7, 0)}, (0, 1), (False, True)),
    # a one-sided low (buy only) below a two-sided high
    ({10: (2, 0), 11: (0, 0.5), 12: (1, 1)}, (0, 1), (True, False)),
    # the default minimum 0 still needs both sides > 0: one micro-dollar is enough, none is not
    ({10: (0.000001, 0.000001), 12: (5, 0)}, (0, 1), (False, True)),
    # a single level is both the highest and the lowest
    ({7: (1, 1)}, (0, 1), (True, True)),
    ({7: (1, 0)}, (0, 1), (False, False)),
    # poor_min_usd 5: each side >= 5, inclusive; 4.999999 is one micro-dollar short
    ({10: (5, 5), 12: (5, 4.999999)}, (5, 1), (False, True)),
    ({10: (5, 5), 12: (5.000001, 5)}, (5, 1), (True, True)),
    ({10: (100, 4.999999), 12: (5, 100)}, (5, 1), (True, False)),
    # 0.1 as written is one tenth (its double is a hair above): 0.1 $ exactly qualifies
    ({10: (0.1, 0.1), 12: (0.1, 0.099999)}, (1, 10), (False, True)),
]


@pytest.mark.parametrize(("rows", "minimum", "expected"), HAND)
def test_poor_highs_and_lows_against_hand_tables(rows, minimum, expected):
    assert poor(rows, minimum) == expected
    high, low = max(rows), min(rows)
    assert poor_level(book(rows)[high], minimum) is expected[0]
    assert poor_level(book(rows)[low], minimum) is expected[1]


def spot(tid: int, px: str, sz: float, side: str, minute: int = 0) -> object:
    return make_trade(tid, px, sz, side, M0 + minute * 60_000 + tid, inst_id="BTC-USDT")


def encode(bar: object) -> dict:
    return msgspec.json.decode(msgspec.json.encode(bar))


def test_bars_carry_the_flags_after_every_other_order_flow_key():
    # tick 1, spot (notional sz × px): level 102 buys 102 and sells 51; level 100 buys 100
    trades = [spot(1, "100.5", 1, "buy"), spot(2, "101", 3, "sell"), spot(3, "102", 1, "buy"),
              spot(4, "102.9", 0.5, "sell")]  # fmt: skip
    asm = BarAssembler(SPOT, Settings(footprint_tick=1, cvd=True))
    asm.feed(trades)
    line = encode(asm.close()[0])
    assert [(lvl["px"], lvl["buy"], lvl["sell"]) for lvl in line["footprint"]] == [
        ("100", "101", "0"), ("101", "0", "303"), ("102", "102", "51"),
    ]  # fmt: skip
    assert (line["poor_high"], line["poor_low"]) == (True, False)
    assert list(line)[-11:] == [
        "footprint", "poc", "vah", "val", "imbalances", "stacked", "delta_min", "delta_max", "cvd",
        "poor_high", "poor_low",
    ]  # fmt: skip
    # without cvd they follow the footprint keys; without a footprint they are not there
    asm = BarAssembler(SPOT, Settings(footprint_tick=1))
    asm.feed(trades)
    assert list(encode(asm.close()[0]))[-3:] == ["stacked", "poor_high", "poor_low"]
    for cfg in (Settings(), Settings(cvd=True), Settings(poor_min_usd=50)):
        asm = BarAssembler(SPOT, cfg)
        asm.feed(trades)
        assert "poor_high" not in encode(asm.close()[0])
    # 51 $ sold at the top: poor with a minimum of 51, not of 51.45 (the sell is 102.9 × 0.5)
    for minimum, expected in ((51, True), (51.45, True), (51.450001, False)):
        asm = BarAssembler(SPOT, Settings(footprint_tick=1, poor_min_usd=minimum))
        asm.feed(trades)
        assert encode(asm.close()[0])["poor_high"] is expected, minimum


def test_partial_bars_carry_the_flags_before_final():
    asm = BarAssembler(SPOT, Settings(footprint_tick=1))
    asm.feed([spot(1, "100", 1, "buy"), spot(2, "100.5", 1, "sell")])
    partial = encode(asm.partial())
    assert list(partial)[-3:] == ["poor_high", "poor_low", "final"]
    assert (partial["poor_high"], partial["poor_low"], partial["final"]) == (True, True, False)


# -- the setting ----------------------------------------------------------------------------


def test_poor_min_usd_is_validated_and_read_from_config_and_command_line(tmp_path):
    for bad in (-1, -0.000001, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="poor_min_usd must be a finite number >= 0"):
            Settings(poor_min_usd=bad)
    assert Settings().poor_min_usd == 0
    path = tmp_path / "c.toml"
    path.write_text("footprint_tick = 10\npoor_min_usd = 2500\n")
    assert make_settings(load_config(path)).poor_min_usd == 2500
    path.write_text("poor_min_usd = -5\n")
    with pytest.raises(ConfigError, match="poor_min_usd"):
        make_settings(load_config(path))

    from vstream.cli import build_parser
    from vstream.cli.common import settings_of

    got, given = settings_of(build_parser().parse_args(["replay", "--instId", "BTC-USDT-SWAP", "--poor-min-usd", "1e4"]))
    assert got.poor_min_usd == 10_000 and "poor_min_usd" in given
    got, given = settings_of(build_parser().parse_args(["replay", "--instId", "BTC-USDT-SWAP"]))
    assert got.poor_min_usd == 0 and "poor_min_usd" not in given


def test_fingerprint_moves_only_with_a_footprint_and_a_minimum_away_from_0():
    # These are the fingerprints main wrote before poor highs/lows existed: states keep them.
    assert Settings(footprint_tick=10).fingerprint(0.01, "BTC-USDT-SWAP") == "7880858a15693f52"
    assert Settings(footprint_tick=0.5, cvd=True, stacked_levels=2).fingerprint(0.01, "BTC-USDT-SWAP") == "5e81bc57f504b388"
    assert Settings(footprint_tick=10, poor_min_usd=0.0).fingerprint(0.01, "BTC-USDT-SWAP") == "7880858a15693f52"
    # without a footprint the minimum shapes nothing
    assert Settings(poor_min_usd=500).fingerprint(0.01, "BTC-USDT-SWAP") == Settings().fingerprint(0.01)
    assert Settings().fingerprint(0.01) == "49e824e7756e2c25"
    marked = {Settings(footprint_tick=10, poor_min_usd=m).fingerprint(0.01, "BTC-USDT-SWAP") for m in (0, 1, 500)}
    assert len(marked) == 3
    shape = Settings(poor_min_usd=500).shape(0.01, "BTC-USDT-SWAP")
    assert "poor_min_usd" not in shape.in_force()
    assert "poor_min_usd" in Settings(footprint_tick=10).shape(0.01, "BTC-USDT-SWAP").in_force()


@pytest.fixture
def poor_vault(tmp_path):
    """Two minutes replayed with a footprint of tick 1: the first one's top level (102)
    trades $102 bought and $51 sold (sz 100 and 50 at ctVal 0.01)."""
    from support import trade_line

    from vstream.instruments import VaultPaths

    rows = [("100", "100", "buy", 0), ("102", "100", "buy", 0), ("102", "50", "sell", 0), ("101", "1", "sell", 1)]
    lines = [trade_line(i + 1, px, sz, side, M0 + 60_000 * minute + i) for i, (px, sz, side, minute) in enumerate(rows)]
    raw = VaultPaths.of(tmp_path, "BTC-USDT-SWAP").raw_dir
    raw.mkdir(parents=True)
    (raw / "2025-12-14.jsonl").write_text("".join(line + "\n" for line in lines))
    return tmp_path


def test_the_minimum_is_stored_with_the_instrument(poor_vault, run_cli):
    from vstream.instruments import VaultPaths
    from vstream.state import read_state

    paths = VaultPaths.of(poor_vault, "BTC-USDT-SWAP")
    base = ["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(poor_vault), "--final"]
    status, _, err = run_cli(*base, "--footprint", "1", "--poor-min-usd", "52")
    assert status == 0, err
    first = msgspec.json.decode(paths.output().read_bytes().splitlines()[0])
    assert (first["poor_high"], first["poor_low"]) == (False, False)  # 51 $ sold < 52
    stored = read_state(paths.state).settings
    assert stored is not None and stored.poor_min_usd == 52
    assert run_cli(*base)[0] == 0  # not given: the stored one goes on
    status, _, err = run_cli(*base, "--poor-min-usd", "51")
    assert status == 2 and "poor_min_usd is 52 in the state, 51 given" in err and "--rebuild" in err
    status, _, err = run_cli(*base, "--rebuild", "--poor-min-usd", "51")
    assert status == 0, err
    first = msgspec.json.decode(paths.output().read_bytes().splitlines()[0])
    assert first["poor_high"] is True
    # back to the default: the fingerprint is the one of a footprint without the setting
    assert run_cli(*base, "--rebuild", "--poor-min-usd", "0")[0] == 0
    state = read_state(paths.state)
    assert state.fingerprint == Settings(footprint_tick=1.0).fingerprint(0.01, "BTC-USDT-SWAP")


def test_without_a_footprint_the_minimum_changes_no_bar(poor_vault, run_cli):
    from vstream.instruments import VaultPaths

    base = ["-q", "replay", "--instId", "BTC-USDT-SWAP", "--vault", str(poor_vault), "--final"]
    assert run_cli(*base)[0] == 0
    plain = VaultPaths.of(poor_vault, "BTC-USDT-SWAP").output().read_bytes()
    assert b"poor" not in plain
    status, _, err = run_cli(*base, "--poor-min-usd", "10")  # shapes nothing: no rebuild asked
    assert status == 0, err
    assert VaultPaths.of(poor_vault, "BTC-USDT-SWAP").output().read_bytes() == plain


# -- higher timeframes ------------------------------------------------------------------------


@st.composite
def hour_of_trades(draw: st.DrawFn) -> list[list]:
    """Trades of up to 70 minutes from M0, grouped by minute (ids rising with time)."""
    minutes: list[list] = []
    tid = 1
    for minute in sorted(draw(st.sets(st.integers(0, 69), min_size=1, max_size=25))):
        group = []
        for _ in range(draw(st.integers(1, 6))):
            px = draw(st.sampled_from(["100", "100.4", "100.5", "101", "101.9", "99.5", "102"]))
            sz = draw(st.sampled_from([1.0, 5.0, 40.0, 250.0]))
            group.append(make_trade(tid, px, sz, draw(st.sampled_from(["buy", "sell"])),
                                    M0 + minute * 60_000 + draw(st.integers(0, 59_999))))  # fmt: skip
            tid += 1
        random.Random(tid).shuffle(group)
        minutes.append(group)
    return minutes


@settings(max_examples=80, deadline=None)
@given(minutes=hour_of_trades(), tick=st.sampled_from([0.5, 1]), minimum=st.sampled_from([0, 0.5, 1, 2.5]))
def test_higher_timeframe_flags_are_those_of_the_summed_1m_footprints(minutes, tick, minimum):
    cfg = Settings(footprint_tick=tick, poor_min_usd=minimum, timeframes=("1m", "5m", "15m", "1h"))
    asm = BarAssembler(LINEAR, cfg)
    books: dict[int, dict[int, list[int]]] = {}  # each minute's exact footprint
    bars = []
    for group in minutes:
        bars += asm.feed(group)
        agg = asm.snapshot().series["1m"].open
        assert agg is not None and agg.book is not None
        books[agg.start] = agg.book
    bars += asm.close()
    tick_ratio = (1, 2) if tick == 0.5 else (1, 1)
    minimum_ratio = {0: (0, 1), 0.5: (1, 2), 1: (1, 1), 2.5: (5, 2)}[minimum]
    checked = set()
    for bar in bars:
        tf = bar.timeframe if isinstance(bar.timeframe, str) else "1m"
        start = int(bar.timestamp_utc[14:16]) + 60 * (int(bar.timestamp_utc[11:13]) - 21) + M0 // 60_000
        summed: dict[int, list[int]] = {}
        for minute, cells in books.items():
            if start <= minute < start + TIMEFRAMES[tf]:
                for level, (buy, sell, n) in cells.items():
                    cell = summed.setdefault(level, [0, 0, 0])
                    cell[0] += buy
                    cell[1] += sell
                    cell[2] += n
        fp = footprint_of(summed, tick_ratio, poor_min=minimum_ratio)
        assert (bar.poor_high, bar.poor_low) == (fp.poor_high, fp.poor_low), (tf, bar.timestamp_utc)
        assert (bar.poor_high, bar.poor_low) == (poor_level(summed[max(summed)], minimum_ratio),
                                                 poor_level(summed[min(summed)], minimum_ratio))  # fmt: skip
        checked.add(tf)
    assert checked == {"1m", "5m", "15m", "1h"}
